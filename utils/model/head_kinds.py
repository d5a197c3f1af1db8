"""The kinds of classifier head, described without Paddle.

    soft     SoftVerbalizer: one [MASK]; a label-word-initialised head on the MLM head's states (WARP).
    manual   label words read token by token at as many [MASK]s by ERNIE's MLM head (PET).
    cls      the fine-tuning baseline: the [CLS] sequence classifier, no mask, no verbalizer.
    soft-multi-label, cls-multi-label
             the same scores with one sigmoid per label and BCE loss (upstream's multi_label and
             hierarchical few-shot apps): --task_type multi-label / hierarchical.

What the model spec, its file and the flag checks need to know about a head is here: its name,
the flags that select it, the PLM head it loads, whether it trains prompt parameters, its options
and how many [MASK]s its template must hold. The Paddle implementation of each kind (verbalizer,
loss, forward, exported scores) is utils/model/heads.py, registered against its kind in one line,
as peft's `PromptEncoderConfig` describes what its `PromptEncoder` builds.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Dict, Mapping, Optional, Tuple

from ..dataset.labels import LabelSet
from ..errors import UserError
from ..task.decoding import MULTI_CLASS, is_multi_label


def one_mask(label_set: LabelSet, tokenizer) -> int:
    return 1


def no_mask(label_set: LabelSet, tokenizer) -> int:
    return 0


def label_word_token_count(label_set: LabelSet, tokenizer) -> int:
    """Tokens per label word; a manual verbalizer needs the same count for every label."""
    counts = {label: len(tokenizer(word, add_special_tokens=False)["input_ids"])
              for label, word in label_set.label_words.items()}
    if len(set(counts.values())) > 1:
        detail = ", ".join(f"{label}=={label_set.label_words[label]}: {n} (line {label_set.lines.get(label, '?')})"
                           for label, n in counts.items())
        raise UserError(f"--verbalizer manual predicts one token per [MASK], so every label word needs the same "
                        f"number of tokens; found {detail}", label_set.path or "label.txt")
    count = next(iter(counts.values()))
    if count == 0:
        raise UserError("a label word tokenizes to nothing", label_set.path or "label.txt")
    return count


@dataclass(frozen=True)
class HeadKind:
    """One kind of head: what selects it, what it needs and what it saves."""

    name: str
    method: str = "ptuning"             # the --method this head belongs to
    verbalizer: Optional[str] = None    # the --verbalizer value that selects it (None: --method finetune)
    plm_head: str = "masked_lm"         # what `utils.model.plm.load_plm` loads: masked_lm | sequence_classification
    has_prompt_parameters: bool = True  # False: --freeze_plm would leave nothing to train
    multi_label: bool = False           # scores read as one sigmoid per label (the task type's, utils/task/decoding.py)
    options: Mapping[str, Tuple[str, ...]] = field(default_factory=dict)  # name -> allowed values (first: default)
    # [MASK] tokens the template must hold, from the labels and the tokenizer (checked before any model loads)
    masks: Callable[[LabelSet, object], int] = one_mask


MULTI_LABEL_SUFFIX = "-multi-label"


def multi_label_kind(kind: HeadKind) -> HeadKind:
    """`kind`'s scores read as one sigmoid per label (the implementation changes only the loss)."""
    return dataclasses.replace(kind, name=kind.name + MULTI_LABEL_SUFFIX, multi_label=True)


SOFT = HeadKind("soft", verbalizer="soft")
MANUAL = HeadKind("manual", verbalizer="manual", options={"loss": ("ce", "mlm")}, masks=label_word_token_count)
CLASSIFIER = HeadKind("cls", method="finetune", plm_head="sequence_classification", has_prompt_parameters=False,
                      masks=no_mask)
SOFT_MULTI_LABEL = multi_label_kind(SOFT)
CLASSIFIER_MULTI_LABEL = multi_label_kind(CLASSIFIER)
KINDS: Dict[str, HeadKind] = {kind.name: kind for kind in (SOFT, MANUAL, CLASSIFIER, SOFT_MULTI_LABEL,
                                                             CLASSIFIER_MULTI_LABEL)}


def get_kind(name: Optional[str]) -> HeadKind:
    if name not in KINDS:
        raise UserError(f"unknown head {name!r} (known: {', '.join(KINDS)})", "--verbalizer")
    return KINDS[name]


def head_name(method: str, verbalizer: Optional[str], task_type: str = MULTI_CLASS) -> str:
    """The registry name for the flags `--method`, `--verbalizer` and `--task_type`."""
    base = CLASSIFIER.name if str(method) == CLASSIFIER.method else str(verbalizer)
    return base + MULTI_LABEL_SUFFIX if is_multi_label(str(task_type)) else base
