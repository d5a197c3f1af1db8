"""Classification metrics (sklearn, or from counts) shared by training, evaluation and inference.

Multi-class: accuracy and macro-F1. Multi-label and hierarchical: micro-F1, macro-F1, exact-match
accuracy (`accuracy`: sklearn's subset accuracy), hamming loss, micro precision/recall, and for
hierarchical tasks micro/macro-F1 per level (`level_1_micro_f1`, ...).
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np

from .decoding import Decoder, softmax  # noqa: F401 (softmax: re-exported for its users)


def classification_metrics(predictions: Sequence[int], labels: Sequence[int], num_labels: int) -> Dict[str, float]:
    """Accuracy and macro-F1 over all `num_labels` classes (absent classes count as F1 0)."""
    from sklearn.metrics import accuracy_score, f1_score  # imported here: infer.py only needs softmax

    predictions = np.asarray(predictions)
    labels = np.asarray(labels)
    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        "macro_f1": float(f1_score(labels, predictions, labels=list(range(num_labels)), average="macro",
                                   zero_division=0)),
    }


def multilabel_metrics(gold: np.ndarray, predicted: np.ndarray, levels: Optional[Sequence[int]] = None
                       ) -> Dict[str, float]:
    """Metrics of label sets, bool `[n, labels]` each; `levels` (hierarchical): each label's depth,
    adding micro/macro-F1 over each level's labels. Absent labels count as F1 0 in macro-F1."""
    from sklearn.metrics import accuracy_score, f1_score, hamming_loss, precision_score, recall_score

    gold = np.asarray(gold, dtype=bool)
    predicted = np.asarray(predicted, dtype=bool)
    out = {"micro_f1": float(f1_score(gold, predicted, average="micro", zero_division=0)),
           "macro_f1": float(f1_score(gold, predicted, average="macro", zero_division=0)),
           "accuracy": float(accuracy_score(gold, predicted)),
           "hamming_loss": float(hamming_loss(gold, predicted)),
           "micro_precision": float(precision_score(gold, predicted, average="micro", zero_division=0)),
           "micro_recall": float(recall_score(gold, predicted, average="micro", zero_division=0))}
    if levels is not None:
        # from counts: sklearn reads a one-column indicator matrix as a binary task, not as one label
        tp, fp, fn = ((gold & predicted).sum(0), (~gold & predicted).sum(0), (gold & ~predicted).sum(0))
        levels = np.asarray(levels)
        for level in sorted(set(levels.tolist())):
            columns = levels == level
            out[f"level_{level}_micro_f1"] = float(f1_from_counts(tp[columns].sum(), fp[columns].sum(),
                                                                  fn[columns].sum()))
            out[f"level_{level}_macro_f1"] = float(f1_from_counts(tp[columns], fp[columns], fn[columns]).mean())
    return out


def task_metrics(decoder: Decoder, logits: np.ndarray, gold, search: Optional[str] = None,
                 default: Optional[float] = None) -> Dict[str, float]:
    """The task's metrics for `logits` against gold ids (multi-class) or multi-hot vectors.
    `search` (multi-label: global, per-label): decide with thresholds tuned on these very examples
    (how --threshold_search evaluates on dev during training; `default` as its --threshold)."""
    from .decoding import search_thresholds

    logits = np.asarray(logits)
    if not decoder.multi_label:
        return classification_metrics(np.argmax(logits, axis=-1), np.asarray(gold).reshape(-1), len(decoder.labels))
    probs, gold = decoder.probabilities(logits), np.asarray(gold) > 0.5
    if search not in (None, "none"):
        decoder = decoder.with_thresholds(search_thresholds(decoder, probs, gold, search, default))
    return multilabel_metrics(gold, decoder.decide(probs), decoder.levels if decoder.hierarchical else None)


def metrics_fn(num_labels: int, decoder: Optional[Decoder] = None, search: Optional[str] = None,
               default: Optional[float] = None):
    """A `compute_metrics` for paddlenlp's Trainer (logits in `predictions`); `decoder` for
    multi-label tasks (default: multi-class over `num_labels`), `search` as in `task_metrics`."""

    def compute_metrics(eval_preds) -> Dict[str, float]:
        logits = eval_preds.predictions
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        if decoder is not None and decoder.multi_label:
            return task_metrics(decoder, logits, eval_preds.label_ids, search, default)
        return classification_metrics(np.argmax(logits, axis=-1), eval_preds.label_ids, num_labels)

    return compute_metrics


def f1_from_counts(tp, fp, fn) -> np.ndarray:
    """Per-label F1 = 2TP / (2TP + FP + FN), 0 where the label is neither gold nor predicted."""
    tp, fp, fn = (np.asarray(x, dtype=np.float64) for x in (tp, fp, fn))
    denominator = 2 * tp + fp + fn
    return np.divide(2 * tp, denominator, out=np.zeros_like(denominator), where=denominator > 0)


def macro_f1_from_confusion(confusion: np.ndarray) -> float:
    """Macro-F1 over every class of a `[gold, predicted]` confusion matrix, as sklearn's
    `f1_score(average="macro", labels=all, zero_division=0)`: F1 = 2TP / (2TP + FP + FN), 0 for a
    class neither present nor predicted. For streamed predictions (no sklearn, no per-text arrays)."""
    confusion = np.asarray(confusion, dtype=np.float64)
    true_positives = np.diag(confusion)
    denominator = confusion.sum(axis=0) + confusion.sum(axis=1)  # = 2TP + FP + FN
    f1 = np.divide(2 * true_positives, denominator, out=np.zeros_like(true_positives), where=denominator > 0)
    return float(f1.mean()) if len(f1) else 0.0
