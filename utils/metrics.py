"""Classification metrics (sklearn, or from a confusion matrix) and softmax, shared by training,
evaluation and inference."""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


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


def metrics_fn(num_labels: int):
    """A `compute_metrics` for paddlenlp's Trainer (logits in `predictions`)."""

    def compute_metrics(eval_preds) -> Dict[str, float]:
        logits = eval_preds.predictions
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        return classification_metrics(np.argmax(logits, axis=-1), eval_preds.label_ids, num_labels)

    return compute_metrics


def macro_f1_from_confusion(confusion: np.ndarray) -> float:
    """Macro-F1 over every class of a `[gold, predicted]` confusion matrix, as sklearn's
    `f1_score(average="macro", labels=all, zero_division=0)`: F1 = 2TP / (2TP + FP + FN), 0 for a
    class neither present nor predicted. For streamed predictions (no sklearn, no per-text arrays)."""
    confusion = np.asarray(confusion, dtype=np.float64)
    true_positives = np.diag(confusion)
    denominator = confusion.sum(axis=0) + confusion.sum(axis=1)  # = 2TP + FP + FN
    f1 = np.divide(2 * true_positives, denominator, out=np.zeros_like(true_positives), where=denominator > 0)
    return float(f1.mean()) if len(f1) else 0.0
