"""From scores to labels, for every task type: probabilities, thresholds, the label hierarchy.

    multi-class    softmax over the labels; the best label (today's behaviour)
    multi-label    one sigmoid per label; every label whose probability is above its threshold
                   (default 0.5, upstream's `prob_limit`)
    hierarchical   multi-label over label paths `A##B`; with consistent decoding (the default) a
                   child is predicted only together with its parent (top-down), `flat` decodes every
                   label on its own as upstream does

A `Decoder` is part of the model spec (training) and of the export manifest (inference), so
train.py, infer.py, the Python API and the service turn the same logits into the same labels.
The task type is decided here and nowhere else: `activation` names what turns logits into
probabilities (`softmax` over the labels, or one `sigmoid` per label), numpy code calls
`probabilities`, Paddle code maps the name (utils/model/activations.py).
The threshold search (`--threshold_search`) lives here too. numpy only: no Paddle, no sklearn.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

MULTI_CLASS, MULTI_LABEL, HIERARCHICAL = "multi-class", "multi-label", "hierarchical"
TASK_TYPES = (MULTI_CLASS, MULTI_LABEL, HIERARCHICAL)
DEFAULT_THRESHOLD = 0.5
LEVEL_SEPARATOR = "##"   # hierarchical label paths: 组织关系##辞/离职
LABEL_SEPARATOR = ","    # several labels on one data line: 组织关系,组织关系##辞/离职
SEARCH_MODES = ("none", "global", "per-label")
DEFAULT_OTHER_LABEL = "other"  # what a rejected text is labelled (--other_label)
# Candidate thresholds of the search: 0.01 .. 0.99. Ties go to the candidate nearest the default.
THRESHOLD_GRID = np.round(np.arange(1, 100) / 100.0, 2)


def is_multi_label(task_type: str) -> bool:
    """Multi-label and hierarchical models predict a label set (one sigmoid per label); multi-class one label."""
    return task_type != MULTI_CLASS


SOFTMAX, SIGMOID = "softmax", "sigmoid"


def activation_of(task_type: str) -> str:
    """`sigmoid` (one per label) for label sets, `softmax` (over the labels) for one label."""
    return SIGMOID if is_multi_label(task_type) else SOFTMAX


def softmax(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    # exp of a negative number only: no overflow warnings for large |logits|
    out = np.empty_like(logits)
    positive = logits >= 0
    out[positive] = 1.0 / (1.0 + np.exp(-logits[positive]))
    exp = np.exp(logits[~positive])
    out[~positive] = exp / (1.0 + exp)
    return out


ACTIVATIONS = {SOFTMAX: softmax, SIGMOID: sigmoid}


def probabilities(logits: np.ndarray, temperature: float = 1.0, activation: str = SOFTMAX) -> np.ndarray:
    """`activation` (a name in ACTIVATIONS) of `logits / temperature`."""
    if temperature != 1.0:
        logits = np.asarray(logits, dtype=np.float64) / temperature
    return ACTIVATIONS[activation](logits)


def parent_path(label: str) -> Optional[str]:
    """`A##B##C` -> `A##B`; a top-level label has no parent."""
    return label.rsplit(LEVEL_SEPARATOR, 1)[0] if LEVEL_SEPARATOR in label else None


def ancestors(label: str) -> List[str]:
    """Every proper prefix path of `label`, nearest first."""
    out = []
    parent = parent_path(label)
    while parent is not None:
        out.append(parent)
        parent = parent_path(parent)
    return out


def depth(label: str) -> int:
    """1 for a top-level label, 2 for `A##B`, ..."""
    return label.count(LEVEL_SEPARATOR) + 1


@dataclass(frozen=True)
class Decoder:
    """How one model's logits become probabilities and predicted labels.

    `thresholds`: one per label (multi-label and hierarchical), None for multi-class.
    `consistent`: hierarchical only; False decodes the labels independently (upstream).
    `temperature`: logits are divided by it before softmax/sigmoid (temperature scaling fitted on
    dev, utils/task/calibration.py); 1 leaves them as they are.
    `reject_threshold`: multi-class only; a text whose top probability is below it gets
    `other_label` instead of a label (`names`). None: every text gets its best label.
    """

    task_type: str
    labels: Tuple[str, ...]
    thresholds: Optional[Tuple[float, ...]] = None
    consistent: bool = True
    temperature: float = 1.0
    reject_threshold: Optional[float] = None
    other_label: str = DEFAULT_OTHER_LABEL

    def __post_init__(self):
        if self.task_type not in TASK_TYPES:
            raise ValueError(f"unknown task type {self.task_type!r}")
        object.__setattr__(self, "labels", tuple(self.labels))
        if self.multi_label:
            thresholds = self.thresholds
            if thresholds is None:
                thresholds = (DEFAULT_THRESHOLD,) * len(self.labels)
            elif isinstance(thresholds, (int, float)):
                thresholds = (float(thresholds),) * len(self.labels)
            thresholds = tuple(float(t) for t in thresholds)
            if len(thresholds) != len(self.labels):
                raise ValueError(f"{len(thresholds)} thresholds for {len(self.labels)} labels")
            object.__setattr__(self, "thresholds", thresholds)
        else:
            object.__setattr__(self, "thresholds", None)
        if not (isinstance(self.temperature, (int, float)) and self.temperature > 0):
            raise ValueError(f"temperature must be a positive number, got {self.temperature!r}")
        object.__setattr__(self, "temperature", float(self.temperature))
        if self.reject_threshold is not None and self.multi_label:
            raise ValueError("a reject threshold is for multi-class models (a label set may be empty already)")

    @property
    def multi_label(self) -> bool:
        return is_multi_label(self.task_type)

    @property
    def hierarchical(self) -> bool:
        return self.task_type == HIERARCHICAL

    @property
    def parents(self) -> List[int]:
        """Per label, the index of its parent label, or -1 (top level, or not hierarchical)."""
        index = {label: i for i, label in enumerate(self.labels)}
        if not self.hierarchical:
            return [-1] * len(self.labels)
        return [index.get(parent_path(label), -1) if parent_path(label) else -1 for label in self.labels]

    @property
    def levels(self) -> List[int]:
        return [depth(label) for label in self.labels]

    @property
    def activation(self) -> str:
        """`softmax` (multi-class) or `sigmoid` (multi-label, hierarchical): a name in ACTIVATIONS."""
        return activation_of(self.task_type)

    def probabilities(self, logits: np.ndarray, temperature: Optional[float] = None) -> np.ndarray:
        """Softmax (multi-class) or one sigmoid per label (multi-label, hierarchical) of
        `logits / temperature` (the model's temperature unless another is given)."""
        return probabilities(logits, self.temperature if temperature is None else temperature, self.activation)

    def confidence(self, probs: np.ndarray) -> np.ndarray:
        """`[n]`: how sure each text's decision is: its top probability (multi-class), or for label sets
        that of its least sure label, max(p, 1 - p) (every label's yes or no counts)."""
        probs = np.asarray(probs)
        if self.multi_label:
            return np.maximum(probs, 1 - probs).min(axis=1)
        return probs.max(axis=1)

    def rejected(self, probs: np.ndarray, reject_threshold: Optional[float] = None) -> np.ndarray:
        """Bool `[n]`: texts whose top probability is below the reject threshold (`reject_threshold`
        overrides the model's); all False without one or for label sets."""
        probs = np.asarray(probs)
        limit = self.reject_threshold if reject_threshold is None else reject_threshold
        if limit is None or self.multi_label or not len(probs):
            return np.zeros(len(probs), dtype=bool)
        return probs.max(axis=1) < limit

    def names(self, probs: np.ndarray, reject_threshold: Optional[float] = None) -> List[str]:
        """Multi-class: per text, its best label's name, or `other_label` when it is rejected."""
        rejected = self.rejected(probs, reject_threshold)
        return [self.other_label if no else self.labels[j] for j, no in zip(np.asarray(probs).argmax(axis=1),
                                                                           rejected)]

    def with_reject(self, reject_threshold: Optional[float], other_label: Optional[str] = None) -> "Decoder":
        return replace(self, reject_threshold=reject_threshold,
                       other_label=other_label if other_label is not None else self.other_label)

    def decide(self, probs: np.ndarray, thresholds=None) -> np.ndarray:
        """Bool `[n, labels]`: the predicted labels. Multi-class: the best one. Multi-label: every
        probability above its threshold (`thresholds` overrides the model's: one number or one per
        label); hierarchical and consistent: a child only where its parent is predicted too."""
        probs = np.asarray(probs)
        out = np.zeros(probs.shape, dtype=bool)
        if not len(probs):
            return out
        if not self.multi_label:
            out[np.arange(len(probs)), probs.argmax(axis=1)] = True
            return out
        limit = np.asarray(self.thresholds if thresholds is None else thresholds, dtype=np.float64)
        out = probs > limit
        if self.hierarchical and self.consistent:
            parents = self.parents
            for child in sorted(range(len(self.labels)), key=lambda i: self.levels[i]):  # parents first
                if parents[child] >= 0:
                    out[:, child] &= out[:, parents[child]]
        return out

    def with_thresholds(self, thresholds) -> "Decoder":
        return replace(self, thresholds=tuple(thresholds))

    def describe(self) -> Dict:
        """What the export manifest records (and infer.py reads back with `from_manifest`)."""
        return {"task_type": self.task_type,
                "thresholds": list(self.thresholds) if self.thresholds is not None else None,
                "hierarchical_decoding": ("consistent" if self.consistent else "flat") if self.hierarchical else None,
                "temperature": self.temperature, "reject_threshold": self.reject_threshold,
                "other_label": self.other_label}

    @classmethod
    def from_manifest(cls, manifest: Dict, labels: Sequence[str]) -> "Decoder":
        """The decoder an export describes; exports written before task types are multi-class.
        Raises ValueError naming the field that is wrong."""
        task_type = manifest.get("task_type", MULTI_CLASS)
        if task_type not in TASK_TYPES:
            raise ValueError(f"`task_type` is {task_type!r}, not one of {', '.join(TASK_TYPES)}")
        thresholds = manifest.get("thresholds")
        if task_type != MULTI_CLASS:
            if thresholds is not None and not (
                    isinstance(thresholds, list) and len(thresholds) == len(labels)
                    and all(isinstance(t, (int, float)) and not isinstance(t, bool) and 0 <= t <= 1
                            for t in thresholds)):
                raise ValueError(f"`thresholds` must be a list of {len(labels)} numbers in [0, 1] (one per label)")
        decoding = manifest.get("hierarchical_decoding") or "consistent"
        if decoding not in ("consistent", "flat"):
            raise ValueError(f"`hierarchical_decoding` is {decoding!r}, not consistent or flat")
        temperature = manifest.get("temperature", 1.0)
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ValueError(f"`temperature` must be a positive number, got {temperature!r}")
        reject = manifest.get("reject_threshold")
        if reject is not None and (isinstance(reject, bool) or not isinstance(reject, (int, float))
                                   or not 0 < reject <= 1 or task_type != MULTI_CLASS):
            raise ValueError(f"`reject_threshold` must be null or, for a multi-class model, a number in (0, 1], "
                             f"got {reject!r}")
        other = manifest.get("other_label", DEFAULT_OTHER_LABEL)
        if not isinstance(other, str) or not other.strip() or other in labels:
            raise ValueError(f"`other_label` must be a non-empty name that is not a label, got {other!r}")
        return cls(task_type, tuple(labels), tuple(thresholds) if thresholds else None, decoding == "consistent",
                   float(temperature), None if reject is None else float(reject), other)


# -- the threshold search (--threshold_search) -------------------------------------------------------


def _f1_counts(tp, fp, fn) -> np.ndarray:
    tp, fp, fn = (np.asarray(x, dtype=np.float64) for x in (tp, fp, fn))
    denominator = 2 * tp + fp + fn
    return np.divide(2 * tp, denominator, out=np.zeros_like(denominator), where=denominator > 0)


def _best(scores: np.ndarray, default: float) -> float:
    """The grid value with the best score; among equals the one nearest `default` (then the lower)."""
    best = scores.max()
    candidates = THRESHOLD_GRID[np.isclose(scores, best, rtol=0, atol=1e-12)]
    return float(candidates[np.lexsort((candidates, np.abs(candidates - default)))][0])


def search_thresholds(decoder: Decoder, probs: np.ndarray, gold: np.ndarray, mode: str,
                      default: Optional[float] = None) -> Tuple[float, ...]:
    """Thresholds tuned on dev: `global` one value maximising micro-F1 of the decoded labels,
    `per-label` each label's own value maximising its F1 (independently of the hierarchy; a label
    without dev examples keeps `default`). Candidates 0.01..0.99; ties go to the value nearest
    `default` (0.5 unless --threshold), so a flat score surface leaves the default."""
    default = DEFAULT_THRESHOLD if default is None else float(default)
    probs, gold = np.asarray(probs), np.asarray(gold, dtype=bool)
    n_labels = len(decoder.labels)
    if mode == "global":
        scores = []
        for t in THRESHOLD_GRID:
            predicted = decoder.decide(probs, thresholds=t)
            tp = (predicted & gold).sum()
            scores.append(_f1_counts(tp, (predicted & ~gold).sum(), (~predicted & gold).sum()))
        return (_best(np.array(scores), default),) * n_labels
    if mode == "per-label":
        above = probs[:, :, None] > THRESHOLD_GRID[None, None, :]   # [n, labels, grid]
        positive = gold[:, :, None]
        f1 = _f1_counts((above & positive).sum(0), (above & ~positive).sum(0), (~above & positive).sum(0))
        return tuple(_best(f1[j], default) if gold[:, j].any() else default for j in range(n_labels))
    raise ValueError(f"unknown threshold search {mode!r}")
