"""What a model is, in one typed object: `ModelSpec`, saved as `ptuning_config.json`.

Training builds it from the flags (`from_flags`: the template, the mask count the head needs and
the length checks live there), every checkpoint and run directory saves it, and a checkpoint,
export.py and a resumed run read it back with `load` (validated key by key); the model is
assembled from it by `utils.model.assembly.build_from_spec` — one assembly path. Like peft's
`PromptEncoderConfig` or SetFit's `config_setfit.json`. The file is format 1: keys
`method`/`verbalizer` name the head as the flags do (`verbalizer` null for `--method finetune`).
Paddle-free: the head is read from its description (utils/model/head_kinds.py).
"""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from ..choices import Method, VerbalizerKind
from ..task.decoding import (DEFAULT_OTHER_LABEL, HIERARCHICAL, MULTI_CLASS, SEARCH_MODES, TASK_TYPES, Decoder,
                             is_multi_label, parent_path)
from ..task.windows import LongText
from ..errors import UserError
from ..files import read_json, write_json_atomic
from ..dataset.labels import LabelSet
from ..rundir.checkpoints import is_pretrained_language_model, not_a_classifier
from ..rundir.names import CHECKPOINT_PREFIX, SPEC_FILE
from .head_kinds import KINDS, HeadKind, get_kind, head_name
from .prompt import (build_template, check_parts, classifier_template, count_masks, fixed_token_count,
                     is_template_string, template_kind, template_string, validate_template, zero_shot_template)

logger = logging.getLogger(__name__)

FORMAT = 1
KEYS = ("format", "method", "verbalizer", "model_name_or_path", "model_class", "plm_config", "template", "labels",
        "label_words", "max_seq_length", "head_options", "task_type", "thresholds", "threshold_search",
        "hierarchical_decoding", "temperature", "reject_threshold", "other_label", "zero_shot", "distillation",
        "long_text")
MODEL_CLASS_SUFFIXES = {"masked_lm": "ForMaskedLM", "sequence_classification": "ForSequenceClassification"}
PLM_CONFIG_INTS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "max_position_embeddings")


@dataclass(frozen=True)
class ModelSpec:
    """A classifier: its head (registry name, utils/model/heads.py), template, labels, length and PLM."""

    head: str
    template: List[Dict[str, Any]]
    labels: List[str]                 # in output (logit) order: sorted names
    label_words: List[str]            # one per label, same order
    max_seq_length: int
    model_name_or_path: str
    model_class: Optional[str] = None          # the PLM, known once it is loaded (`with_plm`)
    plm_config: Optional[Dict[str, Any]] = None
    head_options: Dict[str, Any] = field(default_factory=dict)
    task_type: str = MULTI_CLASS
    thresholds: Optional[List[float]] = None   # multi-label/hierarchical: one per label (None: the default 0.5)
    threshold_search: str = "none"             # how `thresholds` were found (none: given or default)
    consistent_decoding: bool = True           # hierarchical: a child only with its parent
    temperature: float = 1.0                   # temperature scaling fitted on dev (--calibrate)
    reject_threshold: Optional[float] = None   # multi-class: below this top probability -> other_label
    other_label: str = DEFAULT_OTHER_LABEL
    zero_shot: bool = False                    # the PLM's own MLM head over the label words, never trained
    # Trained on a teacher's labels (utils/training/distill.py): its provenance, and the soft-target loss
    # (`soft_targets`) a resumed run must keep using. None: trained on gold labels only.
    distillation: Optional[Dict[str, Any]] = None
    # How texts longer than one input are read (utils/task/windows.py): truncated (default), head+tail
    # or windows whose probabilities are aggregated; in preprocess.json too, so inference does the same.
    long_text: LongText = field(default_factory=LongText)

    @property
    def soft_targets(self) -> bool:
        return self.distillation is not None

    @property
    def kind(self) -> HeadKind:
        """The head's description (utils/model/head_kinds.py)."""
        return get_kind(self.head)

    @property
    def method(self) -> Method:
        return Method.parse(self.kind.method)

    @property
    def verbalizer(self) -> Optional[str]:
        return None if self.method == Method.FINETUNE else self.kind.verbalizer

    @property
    def decoder(self) -> Decoder:
        """How this model's logits become labels (utils/task/decoding.py)."""
        return Decoder(self.task_type, tuple(self.labels), tuple(self.thresholds) if self.thresholds else None,
                       self.consistent_decoding, self.temperature, self.reject_threshold, self.other_label)

    @property
    def label_set(self) -> LabelSet:
        return LabelSet(label_words=dict(zip(self.labels, self.label_words)), path=SPEC_FILE)

    # -- construction from the flags -----------------------------------------------------------

    @classmethod
    def from_flags(cls, model_args, data_args, max_seq_length: int, label_set: LabelSet, is_pair: bool, tokenizer,
                   position_limit: Optional[int] = None, task_type: str = MULTI_CLASS) -> "ModelSpec":
        """The model the flags ask for, checked with the tokenizer alone (no weights loaded)."""
        zero_shot = bool(getattr(model_args, "zero_shot", False))
        # zero-shot: the label words read by the PLM's MLM head (the manual head, PET's scores)
        head = get_kind(head_name(model_args.method, "manual" if zero_shot else model_args.verbalizer, task_type))
        if zero_shot:
            try:
                masks = head.masks(label_set, tokenizer)
            except UserError as exc:  # the manual head's rule, said for the flag the user gave
                raise UserError(exc.message.replace("--verbalizer manual", "--zero_shot") +
                                " (python -m utils.label_words lists each word's tokens)", exc.path) from None
            parts = zero_shot_template(data_args.prompt, is_pair, masks)
            validate_template(parts, is_pair, required_masks=masks, verbalizer_name="--zero_shot")
        elif head.method == Method.FINETUNE.value:
            if data_args.prompt or data_args.prompt_flags_given:
                logger.warning("--method finetune classifies [CLS]; --prompt and the prompt encoder flags are not "
                               "used")
            parts = classifier_template(is_pair)
        else:
            if is_template_string(data_args.prompt) and data_args.prompt_flags_given:
                raise UserError(f"{'/'.join('--' + f for f in data_args.prompt_flags_given)} only shape a plain-text "
                                "--prompt; a full template sets its soft tokens itself (e.g. {'soft': None, "
                                "'length': 8, 'encoder': 'lstm', 'hidden_size': 200}): write them into the template "
                                "or drop the flags", "--prompt")
            masks = head.masks(label_set, tokenizer)
            parts = build_template(data_args.prompt, data_args.soft_encoder.value, data_args.encoder_hidden_size,
                                   data_args.num_virtual_tokens, is_pair, mask_length=masks)
            validate_template(parts, is_pair, required_masks=masks, verbalizer_name=(
                "SoftVerbalizer" if head.verbalizer == "soft" else f"--verbalizer {head.name}"))
            if template_kind(parts) != "soft":
                logger.warning("the template has no soft tokens: this is a hard (PET-style) prompt, not P-tuning")
        options = {"loss": model_args.manual_loss.value} if "loss" in head.options else {}
        if zero_shot:
            options = {"loss": "ce"}
        threshold = getattr(model_args, "threshold", None)
        decoding = getattr(model_args, "hierarchical_decoding", None)
        spec = cls(head=head.name, template=parts, labels=label_set.labels, label_words=label_set.words_in_order(),
                   max_seq_length=max_seq_length, model_name_or_path=model_args.model_name_or_path,
                   head_options=options, task_type=task_type,
                   thresholds=None if not is_multi_label(task_type) or threshold is None
                   else [float(threshold)] * len(label_set.labels),
                   consistent_decoding=decoding is None or str(decoding) == "consistent", zero_shot=zero_shot,
                   long_text=long_text_of(model_args))
        if spec.long_text.active and is_pair:
            raise UserError(f"{spec.long_text.mode} reads one long text (text_a); this dataset is text pairs: "
                            "drop --long_text (pairs are truncated, the longest part first)", "--long_text")
        spec.check_lengths(tokenizer, position_limit)
        return spec

    def window_tokens(self, tokenizer) -> int:
        """Text tokens one input holds beside the prompt: the length of a window (utils/task/windows.py)."""
        return self.max_seq_length - fixed_token_count(
            self.template, lambda text: tokenizer(text, add_special_tokens=False)["input_ids"])

    def check_lengths(self, tokenizer, position_limit: Optional[int]) -> None:
        """max_seq_length within the PLM's positions, and room for the text beside the prompt."""
        if position_limit is not None and self.max_seq_length > position_limit:
            raise UserError(f"is {self.max_seq_length}, but the model has only {position_limit} positions; use at "
                            f"most {position_limit}", "--max_seq_length")
        fixed = fixed_token_count(self.template, lambda text: tokenizer(text, add_special_tokens=False)["input_ids"])
        n_texts = sum(1 for part in self.template if "text" in part)
        if fixed + n_texts > self.max_seq_length:
            raise UserError(f"is {self.max_seq_length}, but the prompt alone takes {fixed} tokens (with [CLS], [SEP] "
                            "and the mask), leaving no room for the text; raise --max_seq_length or shorten the prompt",
                            "--max_seq_length")
        problem = self.long_text.problem(self.max_seq_length - fixed, self.decoder.multi_label)
        if problem is not None:
            raise UserError(problem[1], problem[0])

    def with_plm(self, plm) -> "ModelSpec":
        return dataclasses.replace(self, model_class=type(plm).__name__, plm_config=plm.config.to_dict())

    def describe(self) -> str:
        return template_string(self.template)

    # -- the file --------------------------------------------------------------------------------

    def to_dict(self) -> Dict[str, Any]:
        method = self.method
        data = {"format": FORMAT, "method": method.value, "verbalizer": self.verbalizer,
                "model_name_or_path": self.model_name_or_path, "model_class": self.model_class,
                "plm_config": self.plm_config, "template": self.template, "labels": list(self.labels),
                "label_words": list(self.label_words), "max_seq_length": self.max_seq_length,
                "head_options": dict(self.head_options), "task_type": self.task_type}
        if self.decoder.multi_label:
            data.update(self.decoder.describe(), threshold_search=self.threshold_search)
        # written only when set, so files of models without them stay as they were
        for key, default in (("temperature", 1.0), ("reject_threshold", None), ("other_label", DEFAULT_OTHER_LABEL),
                             ("zero_shot", False)):
            if getattr(self, key) != default:
                data[key] = getattr(self, key)
            else:
                data.pop(key, None)
        if self.distillation is not None:
            data["distillation"] = dict(self.distillation)
        if self.long_text.active:
            data["long_text"] = self.long_text.describe()
        return data

    def save(self, directory: str) -> str:
        path = os.path.join(directory, SPEC_FILE)
        write_json_atomic(path, self.to_dict())
        return path

    @classmethod
    def load(cls, directory: str) -> "ModelSpec":
        if not os.path.isdir(directory):
            raise UserError("checkpoint directory not found", directory)
        path = os.path.join(directory, SPEC_FILE)
        if not os.path.isfile(path) and is_pretrained_language_model(directory):
            raise not_a_classifier(directory)
        if not os.path.isfile(path):
            raise UserError(f"is not a checkpoint of this tool: {SPEC_FILE} is missing", directory)
        return cls.from_dict(read_json(path, what="checkpoint config"), path)

    @classmethod
    def from_dict(cls, data, path: str = SPEC_FILE) -> "ModelSpec":
        """Validate a loaded file (hand edits included): every key known and well typed."""
        def bad(key: str, message: str) -> UserError:
            return UserError(f"{key}: {message} (edited or damaged? re-run training to recreate it)", path)

        _check_keys(data, path, bad)
        head, task_type = _head_of(data, bad)
        labels, words = data["labels"], data["label_words"]
        _check_labels(labels, words, bad)
        _check_plm(data, head, bad)
        template = data["template"]
        check_parts(template, f"{path}: template")
        if head.verbalizer == "soft" and count_masks(template) != 1:
            raise bad("template", f"the SoftVerbalizer needs exactly one mask, found {count_masks(template)}")
        options = data.get("head_options") or {}
        if not isinstance(options, dict) or any(k not in head.options or v not in head.options[k]
                                                for k, v in options.items()):
            raise bad("head_options", f"{options!r} is not valid for the {head.name} head "
                                      f"(allowed: {head.options or 'none'})")
        decoding = _decoding_of(data, labels, task_type, bad)
        zero_shot = data.get("zero_shot", False)
        if not isinstance(zero_shot, bool):
            raise bad("zero_shot", f"must be true or false, got {zero_shot!r}")
        distillation = data.get("distillation")
        if distillation is not None and not (isinstance(distillation, dict) and all(isinstance(k, str)
                                                                                   for k in distillation)):
            raise bad("distillation", "must be null or an object (the teacher a student was trained from)")
        model_name = data.get("model_name_or_path", "")
        long_text = LongText.from_dict(data.get("long_text"), lambda message: bad("long_text", message))
        return cls(head=head.name, template=template, labels=labels, label_words=words,
                   max_seq_length=data["max_seq_length"],
                   model_name_or_path=model_name if isinstance(model_name, str) else "",
                   model_class=data["model_class"], plm_config=data["plm_config"], head_options=options,
                   task_type=task_type, zero_shot=zero_shot, distillation=distillation, long_text=long_text,
                   **decoding)


# -- the checks of `ModelSpec.from_dict`; `bad(key, message)` makes the error naming the file ----------


def _check_keys(data, path: str, bad) -> None:
    if not isinstance(data, dict):
        raise UserError(f"must be a JSON object, found {type(data).__name__}", path)
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise bad(unknown[0], f"unknown key (known: {', '.join(KEYS)})")
    for key in ("plm_config", "template", "labels", "label_words", "max_seq_length", "model_class"):
        if key not in data:
            raise bad(key, "missing")
    if data.get("format", FORMAT) != FORMAT:
        raise bad("format", f"{data.get('format')!r} is not a format this version reads ({FORMAT})")


def _head_of(data, bad) -> tuple:
    """`(head kind, task type)` named by `method`, `verbalizer` and `task_type`."""
    try:
        method = Method.parse(data.get("method", Method.PTUNING.value))
        verbalizer = None if data.get("verbalizer") is None else VerbalizerKind.parse(data["verbalizer"]).value
    except ValueError as exc:
        raise bad("method/verbalizer", str(exc)) from None
    task_type = data.get("task_type", MULTI_CLASS)
    if task_type not in TASK_TYPES:
        raise bad("task_type", f"{task_type!r} is not one of {', '.join(TASK_TYPES)}")
    name = head_name(method.value, verbalizer, task_type)
    if name not in KINDS or get_kind(name).method != method.value:
        raise bad("verbalizer", f"{verbalizer!r} does not fit method {method.value!r} and task type "
                                f"{task_type!r}")
    return get_kind(name), task_type


def _check_labels(labels, words, bad) -> None:
    if not (isinstance(labels, list) and len(labels) >= 2 and all(isinstance(x, str) and x for x in labels)):
        raise bad("labels", "must be a list of at least two non-empty label names")
    if len(set(labels)) != len(labels):
        raise bad("labels", "has duplicates")
    if labels != sorted(labels):
        raise bad("labels", "must be in output order (sorted by name)")
    if not (isinstance(words, list) and len(words) == len(labels) and all(isinstance(x, str) and x for x in words)):
        raise bad("label_words", "must be a list of non-empty strings, one per label")


def _check_plm(data, head: HeadKind, bad) -> None:
    """`max_seq_length`, `plm_config` and `model_class`: a PLM of the head's kind that fits the length."""
    length = data["max_seq_length"]
    if not (isinstance(length, int) and not isinstance(length, bool) and length >= 4):
        raise bad("max_seq_length", f"must be an integer of at least 4, got {length!r}")
    plm_config = data["plm_config"]
    if not isinstance(plm_config, dict):
        raise bad("plm_config", "must be an object")
    for key in PLM_CONFIG_INTS:
        value = plm_config.get(key)
        if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            raise bad(f"plm_config.{key}", f"must be a positive integer, got {value!r}")
    if plm_config["hidden_size"] % plm_config["num_attention_heads"]:
        raise bad("plm_config.hidden_size", "must be a multiple of num_attention_heads")
    if length > plm_config["max_position_embeddings"]:
        raise bad("max_seq_length", f"{length} exceeds the model's {plm_config['max_position_embeddings']} "
                                    "positions")
    model_class, suffix = data["model_class"], MODEL_CLASS_SUFFIXES[head.plm_head]
    if not (isinstance(model_class, str) and model_class.isidentifier() and model_class.endswith(suffix)):
        raise bad("model_class", f"must name a paddlenlp *{suffix} for method {head.method!r}, got "
                                 f"{model_class!r}")


def _decoding_of(data, labels, task_type: str, bad) -> Dict[str, Any]:
    """The decoding fields (thresholds, hierarchical decoding, temperature, reject option), checked."""
    thresholds = data.get("thresholds")
    if not is_multi_label(task_type) and any(data.get(k) is not None for k in ("thresholds", "hierarchical_decoding")):
        raise bad("thresholds", "a multi-class model has no thresholds or hierarchical decoding")
    if thresholds is not None and not (
            isinstance(thresholds, list) and len(thresholds) == len(labels)
            and all(isinstance(t, (int, float)) and not isinstance(t, bool) and 0 <= t <= 1 for t in thresholds)):
        raise bad("thresholds", f"must be null or a list of {len(labels)} numbers in [0, 1], one per label")
    search = data.get("threshold_search", "none")
    if search not in SEARCH_MODES:
        raise bad("threshold_search", f"{search!r} is not one of {', '.join(SEARCH_MODES)}")
    decoding = data.get("hierarchical_decoding")
    if decoding not in (None, "consistent", "flat"):
        raise bad("hierarchical_decoding", f"{decoding!r} is not consistent or flat")
    if task_type == HIERARCHICAL:  # (consistent decoding reads each label's parent)
        missing = [label for label in labels if parent_path(label) and parent_path(label) not in labels]
        if missing:
            raise bad("labels", f"the parent path of {missing[0]!r} is not a label")
    temperature = data.get("temperature", 1.0)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise bad("temperature", f"must be a positive number, got {temperature!r}")
    reject = data.get("reject_threshold")
    if reject is not None and (is_multi_label(task_type) or isinstance(reject, bool)
                               or not isinstance(reject, (int, float)) or not 0 < reject <= 1):
        raise bad("reject_threshold", f"must be null or, for a multi-class model, a number in (0, 1], got "
                                      f"{reject!r}")
    other = data.get("other_label", DEFAULT_OTHER_LABEL)
    if not isinstance(other, str) or not other.strip() or other in labels:
        raise bad("other_label", f"must be a non-empty name that is not a label, got {other!r}")
    return dict(thresholds=[float(t) for t in thresholds] if thresholds is not None else None,
                threshold_search=search, consistent_decoding=decoding != "flat", temperature=float(temperature),
                reject_threshold=None if reject is None else float(reject), other_label=other)


def long_text_of(flags) -> LongText:
    """The `LongText` the flags ask for (--long_text, --window_stride, --window_aggregation, --max_windows)."""
    mode = getattr(flags, "long_text", None)
    if mode is None:
        return LongText()
    return LongText(mode=str(mode), stride=flags.window_stride, aggregation=str(flags.window_aggregation),
                    max_windows=flags.max_windows)


def peek_task_type(checkpoint: Optional[str]) -> Optional[str]:
    """The task type a checkpoint (or a run directory: its final model, else its newest checkpoint)
    was trained for, read before anything else so its data can be parsed; None when there is no
    readable spec (full validation happens when the model is planned)."""
    import glob
    import re

    if not checkpoint or not os.path.isdir(checkpoint):
        return None
    candidates = [os.path.join(checkpoint, SPEC_FILE)] + sorted(
        glob.glob(os.path.join(checkpoint, CHECKPOINT_PREFIX + "*", SPEC_FILE)),
        key=lambda p: -int(re.sub(r"\D", "", os.path.basename(os.path.dirname(p))) or 0))
    for path in candidates:
        if os.path.isfile(path):
            try:
                data = read_json(path, what="checkpoint config")
            except UserError:
                return None
            task_type = data.get("task_type", MULTI_CLASS) if isinstance(data, dict) else None
            return task_type if task_type in TASK_TYPES else None
    return None
