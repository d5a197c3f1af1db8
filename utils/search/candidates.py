"""Every candidate of the space checked by train.py's own checks, before any trial runs; label-word sets.

A candidate value is put on the command line of one run (the flags after `--` plus that value) and parsed
by train.py's parser (`utils.flags.train.parse_args`: each flag's `__post_init__` and the checks spanning
groups), then planned as train.py plans its model (`utils.training.plan.plan_model`: the template built and
validated, so a prompt with the wrong mask count, a label-word set the head cannot use, a prompt too long for
`--max_seq_length` are refused here, with the tokenizer alone: no weights load). Combinations of values that
train.py refuses (e.g. `--freeze_plm true` with `--method finetune`) are left to the trial: it is marked
pruned with the reason, the search learns to avoid it.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Dict, List, Optional, Sequence

from ..dataset.folder import load_dataset_dir
from ..dataset.labels import LABEL_FILE, LabelSet, read_label_file
from ..errors import UserError
from ..flags.train import flag_value
from .space import CHOICE, LABEL_WORDS, Param, Space, apply_params

FORBIDDEN_IN_WORD = ("\t", "\n", "\r", "==", "|")


def train_known_flags() -> List[str]:
    """Every option string train.py's parser knows (its three dataclasses)."""
    from ..flags.parser import Parser
    from ..flags.train import DataArguments, ModelArguments
    from ..flags.trainer import TrainingArguments

    parser = Parser((ModelArguments, DataArguments, TrainingArguments), prog="train.py")
    return list(parser._option_string_actions)


def parse_train(argv: Sequence[str], where: str):
    """train.py's flags for `argv`, checked as train.py checks them; a UserError says which candidate."""
    from ..flags.train import parse_args

    try:
        return parse_args(list(argv))
    except UserError as exc:
        raise UserError(f"{where}: {exc}", exc.path if where.startswith("the flags") else None) from None


def check_label_sets(sets: Sequence[Dict[str, str]], labels: LabelSet, source: str) -> None:
    """Each set names every label of label.txt once, with a non-empty word label.txt can hold."""
    for index, words in enumerate(sets, 1):
        if set(words) != set(labels.labels):
            missing, extra = sorted(set(labels.labels) - set(words)), sorted(set(words) - set(labels.labels))
            raise UserError(f"label_words: set {index} must name every label of label.txt: missing {missing}, "
                            f"unknown {extra}", source)
        for label, word in words.items():
            if not isinstance(word, str) or not word.strip() or any(s in word for s in FORBIDDEN_IN_WORD):
                raise UserError(f"label_words: set {index}: {label}'s word {word!r} must be a non-empty text "
                                f"without a tab, newline, `==` or `|`", source)


def ranked_label_sets(model: str, data_dir: str, prompt: str, count: int, labels: LabelSet) -> List[Dict[str, str]]:
    """The first `count` sets of the label-word checker's ranking: set k gives each label its k-th best
    candidate (`utils.model.label_words.rank_candidates`), never a word another label of the set took."""
    from ..model import compat
    from ..model.label_words import DEFAULT_TOP_TOKENS, rank_candidates
    from ..model.plm import load_plm, load_tokenizer

    compat.apply()
    dataset = load_dataset_dir(data_dir, need_train=True, need_dev=False)
    tokenizer = load_tokenizer(model)
    plm, _ = load_plm(model, head="masked_lm")
    plm.eval()
    texts: Dict[str, List[str]] = {label: [] for label in labels.labels}
    for example in dataset.train:
        label = labels.labels[example["labels"]]
        if len(texts[label]) < 32:
            texts[label].append(example["text_a"])
    alternatives = labels.alternatives or {label: [word] for label, word in labels.label_words.items()}
    ranked = rank_candidates(plm, tokenizer, texts, alternatives, prompt or "", max(DEFAULT_TOP_TOKENS, count))
    sets = []
    for k in range(count):
        taken, words = set(), {}
        for label in labels.labels:
            pick = next((c.word for c in ranked[label][k:] + ranked[label][:k] if c.word not in taken),
                        labels.label_words[label])
            words[label] = pick
            taken.add(pick)
        sets.append(words)
    return sets


def resolve_label_words(param: Param, labels: LabelSet, ranked: Optional[List[Dict[str, str]]], source: str) -> Param:
    """label_words as Optuna choices: JSON texts of the sets, label.txt's own first, repeats dropped."""
    sets = [dict(labels.label_words)] + [dict(s) for s in param.choices] + list(ranked or [])
    check_label_sets(sets, labels, source)
    unique: List[str] = []
    for words in sets:
        text = json.dumps({label: words[label] for label in labels.labels}, ensure_ascii=False)
        if text not in unique:
            unique.append(text)
    return Param(LABEL_WORDS, CHOICE, choices=unique, ranked=param.ranked)


def write_label_file(data_dir: str, words: Dict[str, str]) -> None:
    """The trial's label.txt: `label==word` for every label."""
    from ..files import write_text_atomic

    write_text_atomic(os.path.join(data_dir, LABEL_FILE), "".join(f"{label}=={word}\n" for label, word in words.items()))


def check_candidates(space: Space, train_flags: Sequence[str], data_dir: str) -> None:
    """Each value of each parameter on the flags after `--` (the other parameters as train.py's defaults),
    parsed by train.py; each prompt and label-word set planned into a template with the tokenizer."""
    from ..training.plan import plan_model

    with tempfile.TemporaryDirectory(prefix="search-check-") as scratch:
        base = list(train_flags) + ["--data_dir", data_dir, "--output_dir", os.path.join(scratch, "run"),
                                    "--seed", "1"]
        parse_train(base, "the flags after `--`")
        words_data = os.path.join(scratch, "data")
        for param in space.params:
            for value in param.candidates():
                where = f"{space.source}: {param.name}: candidate {_shown(value)}"
                params = {} if param.name == LABEL_WORDS else {param.name: value}
                model_args, data_args, training_args = parse_train(apply_params(base, params), where)
                if param.name not in ("prompt", LABEL_WORDS, "soft_encoder", "method", "num_virtual_tokens",
                                      "max_seq_length", "encoder_hidden_size"):
                    continue  # only these change the template or the head
                if param.name == LABEL_WORDS:
                    _copy_data(data_dir, words_data)
                    write_label_file(words_data, json.loads(value))
                    data_args.data_dir = words_data
                dataset = load_dataset_dir(data_args.data_dir, need_train=False, need_dev=False,
                                           task_type=str(model_args.task_type))
                try:
                    plan_model(model_args, data_args, training_args, dataset, None)
                except UserError as exc:
                    raise UserError(f"{where}: {exc}", space.source) from None


def _copy_data(source: str, target: str) -> None:
    import shutil

    os.makedirs(target, exist_ok=True)
    for name in os.listdir(source):
        if os.path.isfile(os.path.join(source, name)):
            shutil.copyfile(os.path.join(source, name), os.path.join(target, name))


def _shown(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return repr(text if len(text) <= 80 else text[:77] + "...")


def dataset_labels(data_dir: str, train_flags: Sequence[str]) -> LabelSet:
    """label.txt of the data folder the trials train on."""
    from ..choices import TaskType

    given = flag_value(train_flags, "--task_type")
    task_type = TaskType.parse(given) if given else TaskType.MULTI_CLASS
    return read_label_file(os.path.join(data_dir, LABEL_FILE), str(task_type))
