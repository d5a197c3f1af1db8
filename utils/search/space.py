"""The search space: what search.py may change in train.py's command line, read from a YAML or JSON file.

Each top-level key is a train.py flag without its dashes, or `label_words`; its value says how to draw it:

    learning_rate:     {low: 1.0e-5, high: 1.0e-3, log: true}     # a float range (log: sampled on a log scale)
    max_steps:         {low: 100, high: 1000, step: 100}            # an int range (both ends ints)
    soft_encoder:      {choices: [lstm, mlp, none]}                 # a choice list (strings, numbers, booleans)
    freeze_plm:        {choices: [false, true]}
    prompt:            {choices: ["这条新闻的主题是", "{'soft': None, 'length': 8}{'text': 'text_a'}{'mask'}"]}
    label_words:       {choices: [{news_tech: 科技, ...}], ranked: 3}   # label.txt's words per trial

`label_words` choices are whole label sets (a word for every label of label.txt); `ranked: K` adds the
first K sets of the label-word checker's ranking (`python -m utils.label_words`): set k gives each label its
k-th best candidate. The dataset's own label.txt is always the first set. A trial's label words reach
train.py as the trial's own copy of the data folder with that label.txt.

Everything here is checked before any trial runs (`check_space`, and `utils.search.validate` for what needs
train.py's own checks: every candidate value, every prompt's mask count). The space's canonical JSON
(`Space.fingerprint`) is stored in the study: a second search into one study with another space is refused.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from ..errors import UserError

LABEL_WORDS = "label_words"
# Set by search.py for every run, never searched or forwarded (multirun's SET_PER_RUN and the data folder).
SET_BY_SEARCH = ("output_dir", "seed", "data_dir", "overwrite_output_dir", "resume_from_checkpoint")
FLOAT, INT, CHOICE = "float", "int", "choice"
DEFAULT_RANKED = 2
# Without --space: the learning rates, the prompt encoder, freezing the PLM, label words from the ranking.
DEFAULT_SPACE = {
    "learning_rate": {"low": 1e-5, "high": 1e-3, "log": True},
    "ppt_learning_rate": {"low": 1e-4, "high": 3e-2, "log": True},
    "soft_encoder": {"choices": ["lstm", "mlp", "none"]},
    "freeze_plm": {"choices": [False, True]},
    LABEL_WORDS: {"ranked": DEFAULT_RANKED},
}


@dataclass
class Param:
    """One searched flag: a float or int range, or a list of choices."""

    name: str
    kind: str
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    step: Optional[int] = None
    choices: List[Any] = field(default_factory=list)
    ranked: int = 0  # label_words only: how many sets of the checker's ranking to add

    def describe(self) -> Dict[str, Any]:
        if self.kind == CHOICE:
            return {"choices": self.choices, **({"ranked": self.ranked} if self.ranked else {})}
        return {"low": self.low, "high": self.high, "log": self.log, **({"step": self.step} if self.step else {})}

    def candidates(self) -> List[Any]:
        """Values to check up front: every choice, or both ends of a range."""
        return list(self.choices) if self.kind == CHOICE else [self.low, self.high]


@dataclass
class Space:
    params: List[Param]
    source: str  # the file, or "the default space"

    def __getitem__(self, name: str) -> Param:
        return next(p for p in self.params if p.name == name)

    def names(self) -> List[str]:
        return [p.name for p in self.params]

    def fingerprint(self) -> str:
        """The space as canonical JSON: equal for equal spaces, whatever the file's key order."""
        return json.dumps({p.name: p.describe() for p in sorted(self.params, key=lambda p: p.name)},
                          sort_keys=True, ensure_ascii=False)


def read_space_file(path: str) -> Dict[str, Any]:
    """The mapping in a .json, .yaml or .yml file (a UserError naming the file otherwise)."""
    if not os.path.isfile(path):
        raise UserError("search space file not found", path)
    try:
        with open(path, encoding="utf-8-sig") as fp:  # a BOM (Windows editors) is neither JSON's nor YAML's
            text = fp.read()
    except UnicodeDecodeError:
        raise UserError("is not UTF-8 text", path) from None
    if path.endswith(".json"):
        try:
            data = json.loads(text)
        except RecursionError:
            raise UserError("nests too deeply to be a search space", path) from None
        except json.JSONDecodeError as exc:
            raise UserError(f"is not valid JSON: {exc.msg} (column {exc.colno})", path, exc.lineno) from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except RecursionError:
            raise UserError("nests too deeply to be a search space", path) from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            raise UserError(f"is not valid YAML: {getattr(exc, 'problem', None) or exc}", path,
                            mark.line + 1 if mark else None) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError("must be a mapping of train.py flag names to ranges or choices", path)
    return data


def _number(value: Any, name: str, key: str, source: str) -> float:
    """A number from the file; YAML reads `1e-5` (no dot) as a string, so numeric strings are accepted."""
    if isinstance(value, bool):
        raise UserError(f"{name}: {key} must be a number, got {value!r}", source)
    if isinstance(value, (int, float)):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        raise UserError(f"{name}: {key} must be a number, got {value!r}", source) from None


def parse_param(name: str, spec: Any, source: str) -> Param:
    """One entry of the file as a `Param`, its own values checked (flags are checked by `check_space`)."""
    if not isinstance(spec, dict):
        raise UserError(f"{name}: expected {{low: .., high: ..}} or {{choices: [..]}}, got {spec!r}", source)
    unknown = set(spec) - {"low", "high", "log", "step", "choices", "ranked"}
    if unknown:
        raise UserError(f"{name}: unknown key(s) {sorted(unknown)} (low, high, log, step, choices, ranked)", source)
    if "choices" in spec or "ranked" in spec:
        return _choice_param(name, spec, source)
    if "low" not in spec or "high" not in spec:
        raise UserError(f"{name}: a range needs both low and high (or give choices)", source)
    low, high = _number(spec["low"], name, "low", source), _number(spec["high"], name, "high", source)
    is_int = isinstance(low, int) and isinstance(high, int) and not spec.get("log")
    if not low < high:
        raise UserError(f"{name}: low ({low}) must be below high ({high})", source)
    if spec.get("log") and low <= 0:
        raise UserError(f"{name}: a log range needs low > 0, got {low}", source)
    step = spec.get("step")
    if step is not None and (not is_int or not isinstance(step, int) or step < 1):
        raise UserError(f"{name}: step is for int ranges and must be a positive int, got {step!r}", source)
    if not all(math.isfinite(v) for v in (low, high)):
        raise UserError(f"{name}: low and high must be finite", source)
    return Param(name, INT if is_int else FLOAT, low, high, bool(spec.get("log")), step)


def _choice_param(name: str, spec: Dict[str, Any], source: str) -> Param:
    choices = spec.get("choices", [])
    if not isinstance(choices, list):
        raise UserError(f"{name}: choices must be a list, got {choices!r}", source)
    ranked = spec.get("ranked", 0)
    if ranked and name != LABEL_WORDS:
        raise UserError(f"{name}: ranked is for label_words (sets from the label-word checker's ranking)", source)
    if not isinstance(ranked, int) or isinstance(ranked, bool) or ranked < 0:
        raise UserError(f"{name}: ranked must be a count (0 or more), got {ranked!r}", source)
    if not choices and not ranked:
        raise UserError(f"{name}: an empty choice list", source)
    for value in choices:
        ok = isinstance(value, dict) if name == LABEL_WORDS else isinstance(value, (str, int, float, bool))
        if not ok:
            raise UserError(f"{name}: choice {value!r} must be " + (
                "a mapping label: word" if name == LABEL_WORDS else "a string, number or boolean"), source)
    if len({json.dumps(v, sort_keys=True, ensure_ascii=False) for v in choices}) != len(choices):
        raise UserError(f"{name}: a choice is repeated", source)
    return Param(name, CHOICE, choices=list(choices), ranked=ranked)


def check_space(params: Sequence[Param], train_flags: Sequence[str], known_flags: Sequence[str],
                source: str) -> None:
    """The space as a whole: not empty, train.py flags only, none that search.py sets or that the
    flags after `--` give too (the search would silently lose to them, or they to it)."""
    from ..flags.train import flag_given

    if not params:
        raise UserError("the search space is empty: give at least one flag to search (see "
                        "docs/how-to/search.md)", source)
    for param in params:
        if param.name == LABEL_WORDS:
            continue
        if param.name in SET_BY_SEARCH:
            raise UserError(f"{param.name}: search.py sets --{param.name} for every run; it cannot be searched",
                            source)
        if f"--{param.name}" not in known_flags:
            raise UserError(f"{param.name}: not a train.py flag (`python train.py --help` lists them)", source)
        if flag_given(train_flags, f"--{param.name}"):
            raise UserError(f"--{param.name} is both searched ({source}) and given after `--`; drop one", source)


def load_space(path: Optional[str]) -> Space:
    """The space of `--space FILE`, else the default space (`DEFAULT_SPACE`), each entry parsed."""
    data, source = (read_space_file(path), path) if path else (DEFAULT_SPACE, "the default search space")
    return Space([parse_param(str(name), spec, source) for name, spec in data.items()], source)


def argv_value(value: Any) -> str:
    """A value as train.py reads it: booleans as true/false, floats in full precision."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def apply_params(train_flags: Sequence[str], params: Dict[str, Any]) -> List[str]:
    """train.py's flags with the trial's values (label words aside: they go into the trial's label.txt)."""
    argv = list(train_flags)
    for name, value in params.items():
        if name != LABEL_WORDS:
            argv += [f"--{name}", argv_value(value)]
    return argv
