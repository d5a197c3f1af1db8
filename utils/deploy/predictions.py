"""Prediction files and their summary: one vocabulary and one writer for train.py and infer.py.

    TSV (default)  header, then per text: text (text_a, text_b for pairs), [gold], label, confidence,
                   and for top_k > 1: label_2, confidence_2, ...
    JSONL          (`.jsonl` / `.json`) one object per text: text (text_a, text_b), [gold], label,
                   confidence, and for top_k > 1 `top_k`: [{label, confidence}, ...]

Multi-label and hierarchical models (a `Decoder` that is multi-label) write every label above its
threshold, most probable first, with its sigmoid probability:

    TSV            text, [gold], labels (`l1,l2`, empty when none), confidences (`0.93,0.71`), and for
                   top_k > 1: label_1, confidence_1, ... (the k most probable, above threshold or not)
    JSONL          text, [gold: [...]], labels: [{label, confidence}, ...], [top_k: [...]]

`confidence` is the softmax probability (6 decimals). Rows are written chunk by chunk into a
temporary file beside the target, which replaces the target only when every row is written: a
failure (bad input line, Ctrl-C, full disk) leaves no partial file and any earlier file unchanged.
No Paddle here.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..task.decoding import LABEL_SEPARATOR, Decoder
from ..errors import UserError
from ..files import temp_file_beside
from ..dataset.labels import parse_label_field
from ..task.metrics import f1_from_counts, macro_f1_from_confusion


def is_jsonl(path: str) -> bool:
    return path.endswith((".jsonl", ".json"))


def ranked_labels(probs: np.ndarray, k: int) -> np.ndarray:
    """Per row, the indices of the `k` most probable labels, best first; ties go to the earlier label."""
    return np.argsort(-probs, axis=1, kind="stable")[:, :k]


class PredictionWriter:
    """`with PredictionWriter(path, labels, ...) as writer: writer.write(examples, probs, gold)`, once per chunk.

    Any OSError while writing or publishing (disk full, permissions) becomes a `UserError` naming
    `path`; the temporary file is removed on every failure, and `path` is untouched until success.
    """

    def __init__(self, path: str, labels: Sequence[str], top_k: int = 1, pair: bool = False,
                 with_gold: bool = False, decoder: Optional[Decoder] = None):
        self.path = path
        self.target = os.path.realpath(path)  # replace a symlink's target, not the link
        self.labels = list(labels)
        self.decoder = decoder if decoder is not None and decoder.multi_label else None
        # multi-class: the decoder's reject option (a rejected text's label is its other_label)
        self.rejecter = decoder if decoder is not None and not decoder.multi_label else None
        self.top_k = max(1, min(int(top_k), len(self.labels)))
        self.pair = pair
        self.with_gold = with_gold
        self.jsonl = is_jsonl(path)
        self.tmp: Optional[str] = None
        self.fp = None

    def header(self) -> List[str]:
        columns = ["text_a", "text_b"] if self.pair else ["text"]
        columns += ["gold"] if self.with_gold else []
        if self.decoder is not None:
            columns += ["labels", "confidences"]
            if self.top_k > 1:
                for k in range(1, self.top_k + 1):
                    columns += [f"label_{k}", f"confidence_{k}"]
            return columns
        columns += ["label", "confidence"]
        for k in range(2, self.top_k + 1):
            columns += [f"label_{k}", f"confidence_{k}"]
        return columns

    def __enter__(self) -> "PredictionWriter":
        def start():
            self.tmp = temp_file_beside(self.target)
            self.fp = open(self.tmp, "w", encoding="utf-8", buffering=1 << 20)
            if not self.jsonl:
                self.fp.write("\t".join(self.header()) + "\n")
        self._guard(start)
        return self

    def write(self, examples: Sequence[dict], probs: np.ndarray, gold: Optional[Sequence[str]] = None) -> None:
        """Rows for `examples` (dicts with text_a[, text_b]) and their label probabilities."""
        if self.with_gold != (gold is not None):
            raise ValueError("gold labels must be given for every chunk or for none")
        if self.decoder is not None:
            lines = self._label_set_lines(examples, probs, gold)
            self._guard(lambda: self.fp.write("\n".join(lines) + "\n") if lines else None)
            return
        ranked = ranked_labels(probs, self.top_k)
        names = (self.rejecter.names(probs) if self.rejecter is not None
                 else [self.labels[best[0]] for best in ranked])
        lines = []
        for row, (example, best) in enumerate(zip(examples, ranked)):
            record = {"label": names[row], "confidence": round(float(probs[row, best[0]]), 6)}
            cells = []
            for k, j in enumerate(best):
                cells += [names[row] if k == 0 else self.labels[j], f"{probs[row, j]:.6f}"]
            lines.append(self._line(example, None if gold is None else gold[row], record, cells,
                                    probs, row, best))
        self._guard(lambda: self.fp.write("\n".join(lines) + "\n") if lines else None)

    def _line(self, example: dict, gold, record: dict, cells: List[str], probs: np.ndarray, row: int,
              best) -> str:
        """One output line: the text, the gold label(s), then the prediction (`record` as JSON, `cells` as TSV)."""
        if self.jsonl:
            out = self._text_record(example)
            if gold is not None:
                out["gold"] = ([g.strip() for g in gold.split(LABEL_SEPARATOR) if g.strip()]
                               if self.decoder is not None else gold)
            out.update(record)
            if self.top_k > 1:
                out["top_k"] = self._scored(probs, row, best)
            return json.dumps(out, ensure_ascii=False)
        return "\t".join(self._text_cells(example) + ([gold] if gold is not None else []) + cells)

    def _text_record(self, example: dict) -> dict:
        return ({"text_a": example["text_a"], "text_b": example.get("text_b", "")} if self.pair
                else {"text": example["text_a"]})

    def _text_cells(self, example: dict) -> List[str]:
        return [example["text_a"]] + ([example.get("text_b", "")] if self.pair else [])

    def _scored(self, probs: np.ndarray, row: int, columns) -> List[dict]:
        return [{"label": self.labels[j], "confidence": round(float(probs[row, j]), 6)} for j in columns]

    def _label_set_lines(self, examples: Sequence[dict], probs: np.ndarray,
                         gold: Optional[Sequence[str]]) -> List[str]:
        """Rows of a multi-label model: every label its decoder predicts, most probable first."""
        decided = self.decoder.decide(probs)
        order = ranked_labels(probs, len(self.labels))
        lines = []
        for row, example in enumerate(examples):
            chosen = [j for j in order[row] if decided[row, j]]
            best = order[row][:self.top_k] if self.top_k > 1 else []
            cells = [LABEL_SEPARATOR.join(self.labels[j] for j in chosen),
                     LABEL_SEPARATOR.join(f"{probs[row, j]:.6f}" for j in chosen)]
            for j in best:
                cells += [self.labels[j], f"{probs[row, j]:.6f}"]
            lines.append(self._line(example, None if gold is None else gold[row],
                                    {"labels": self._scored(probs, row, chosen)}, cells, probs, row, best))
        return lines

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self._guard(self._publish)
        else:
            self._discard()
        return False

    def _publish(self) -> None:
        self.fp.flush()
        os.fsync(self.fp.fileno())  # the rename must never expose a file the disk does not hold yet
        self.fp.close()
        os.replace(self.tmp, self.target)
        self.tmp = None

    def _discard(self) -> None:
        if self.fp is not None:
            try:
                self.fp.close()
            except OSError:  # flushing the rest fails too when the disk is full; the file goes anyway
                pass
        if self.tmp is not None and os.path.exists(self.tmp):
            os.remove(self.tmp)
        self.tmp = None

    def _guard(self, action):
        try:
            return action()
        except OSError as exc:
            self._discard()
            raise UserError(f"cannot write: {exc.strerror or exc}; nothing was written "
                            "(an existing file is unchanged)", self.path) from None


class PredictionSummary:
    """Counts per predicted label, mean confidence and, with gold labels, accuracy and macro-F1,
    accumulated chunk by chunk in a confusion matrix (no per-text values kept). With a multi-label
    decoder: texts per predicted label, labels per text and, with gold labels, micro/macro-F1,
    exact-match accuracy and hamming loss (per level too for hierarchical), from per-label counts."""

    def __init__(self, labels: Sequence[str], decoder: Optional[Decoder] = None):
        self.labels = list(labels)
        self.decoder = decoder
        self.rejected = 0
        self.answered_correct = 0
        self.label_to_id = {label: i for i, label in enumerate(self.labels)}
        self.predicted = np.zeros(len(self.labels), dtype=np.int64)
        self.confusion = np.zeros((len(self.labels), len(self.labels)), dtype=np.int64)  # [gold, predicted]
        self.confidence_sum = 0.0
        self.texts = 0
        self.gold_texts = 0

    def update(self, probs: np.ndarray, gold: Optional[Sequence[str]] = None) -> None:
        if not len(probs):
            return
        predicted = probs.argmax(axis=1)
        rejected = (self.decoder.rejected(probs) if self.decoder is not None
                    else np.zeros(len(probs), dtype=bool))
        self.rejected += int(rejected.sum())
        self.predicted += np.bincount(predicted[~rejected], minlength=len(self.labels))
        self.confidence_sum += float(probs.max(axis=1).sum())
        self.texts += len(probs)
        if gold is not None:
            gold_ids = np.array([self.label_to_id[g] for g in gold], dtype=np.int64)
            np.add.at(self.confusion, (gold_ids, predicted), 1)
            self.gold_texts += len(gold_ids)
            self.answered_correct += int(((gold_ids == predicted) & ~rejected).sum())

    def as_dict(self, seconds: Optional[float] = None) -> Dict:
        summary = {"texts": self.texts}
        if seconds is not None:
            summary.update(seconds=round(seconds, 3),
                           texts_per_second=round(self.texts / seconds, 1) if seconds > 0 else None)
        summary["predicted_label_counts"] = {label: int(n) for label, n in zip(self.labels, self.predicted)}
        rejecting = self.decoder is not None and self.decoder.reject_threshold is not None
        if rejecting:
            summary["predicted_label_counts"][self.decoder.other_label] = self.rejected
        summary["mean_confidence"] = round(self.confidence_sum / self.texts, 4) if self.texts else None
        if self.gold_texts:
            # accuracy and macro-F1 of the best label (as without a reject option), so they compare
            summary["accuracy"] = round(float(np.trace(self.confusion)) / self.gold_texts, 4)
            summary["macro_f1"] = round(macro_f1_from_confusion(self.confusion), 4)
        if rejecting and self.texts:
            answered = self.texts - self.rejected
            summary["reject_threshold"] = self.decoder.reject_threshold
            summary["coverage"] = round(answered / self.texts, 4)
            if self.gold_texts:
                summary["accuracy_answered"] = round(self.answered_correct / answered, 4) if answered else None
        return summary


class LabelSetSummary(PredictionSummary):
    """PredictionSummary of a multi-label or hierarchical model (see PredictionSummary)."""

    def __init__(self, labels: Sequence[str], decoder: Decoder):
        self.labels = list(labels)
        self.decoder = decoder
        self.label_to_id = {label: i for i, label in enumerate(self.labels)}
        n = len(self.labels)
        self.predicted = np.zeros(n, dtype=np.int64)
        self.tp, self.fp, self.fn = (np.zeros(n, dtype=np.int64) for _ in range(3))
        self.confidence_sum = 0.0
        self.label_count = 0
        self.empty = 0
        self.texts = 0
        self.gold_texts = 0
        self.exact = 0

    def update(self, probs: np.ndarray, gold: Optional[Sequence[str]] = None) -> None:
        if not len(probs):
            return
        decided = self.decoder.decide(probs)
        self.predicted += decided.sum(axis=0)
        self.confidence_sum += float(probs[decided].sum())
        self.label_count += int(decided.sum())
        self.empty += int((~decided.any(axis=1)).sum())
        self.texts += len(probs)
        if gold is not None:
            truth = np.array([parse_label_field(g, self.label_to_id, "gold", 0, self.decoder.task_type) for g in gold],
                             dtype=bool).reshape(decided.shape)
            self.tp += (decided & truth).sum(axis=0)
            self.fp += (decided & ~truth).sum(axis=0)
            self.fn += (~decided & truth).sum(axis=0)
            self.exact += int((decided == truth).all(axis=1).sum())
            self.gold_texts += len(truth)

    def as_dict(self, seconds: Optional[float] = None) -> Dict:
        summary = {"texts": self.texts, "task_type": self.decoder.task_type}
        if seconds is not None:
            summary.update(seconds=round(seconds, 3),
                           texts_per_second=round(self.texts / seconds, 1) if seconds > 0 else None)
        summary["predicted_label_counts"] = {label: int(n) for label, n in zip(self.labels, self.predicted)}
        summary["labels_per_text"] = round(self.label_count / self.texts, 4) if self.texts else None
        summary["texts_without_label"] = self.empty
        summary["mean_confidence"] = round(self.confidence_sum / self.label_count, 4) if self.label_count else None
        if self.gold_texts:
            summary.update({k: round(v, 4) for k, v in self._gold_metrics(np.ones(len(self.labels), bool)).items()})
            summary["accuracy"] = round(self.exact / self.gold_texts, 4)
            summary["hamming_loss"] = round(float((self.fp + self.fn).sum()) / (self.gold_texts * len(self.labels)), 4)
            if self.decoder.hierarchical:
                levels = np.array(self.decoder.levels)
                for level in sorted(set(levels.tolist())):
                    for name, value in self._gold_metrics(levels == level).items():
                        summary[f"level_{level}_{name}"] = round(value, 4)
        return summary

    def _gold_metrics(self, columns: np.ndarray) -> Dict[str, float]:
        tp, fp, fn = self.tp[columns], self.fp[columns], self.fn[columns]
        return {"micro_f1": float(f1_from_counts(tp.sum(), fp.sum(), fn.sum())),
                "macro_f1": float(f1_from_counts(tp, fp, fn).mean()) if len(tp) else 0.0}


def prediction_summary(labels: Sequence[str], decoder: Optional[Decoder] = None) -> PredictionSummary:
    """The summary that fits the model: per label set with a multi-label decoder, else per label."""
    if decoder is not None and decoder.multi_label:
        return LabelSetSummary(labels, decoder)
    return PredictionSummary(labels, decoder)


def write_predictions(path: str, examples: Sequence[dict], probs: np.ndarray, labels: Sequence[str],
                      top_k: int = 1, gold: Optional[Sequence[str]] = None, decoder: Optional[Decoder] = None) -> Dict:
    """Write one prediction file (format above) for in-memory `examples` and their `probs`
    (softmax probabilities, or sigmoid ones with a multi-label `decoder`; `[len(examples),
    len(labels)]`, columns in `labels` order); `gold`: gold label names (`l1,l2` for label sets) or
    None. Returns the summary (counts, mean confidence, accuracy, F1)."""
    probs = np.asarray(probs)
    if len(probs) != len(examples):
        raise ValueError(f"{len(examples)} examples but {len(probs)} rows of probabilities")
    summary = prediction_summary(labels, decoder)
    with PredictionWriter(path, labels, top_k=top_k, pair=any("text_b" in e for e in examples),
                          with_gold=gold is not None, decoder=decoder) as writer:
        writer.write(examples, probs, gold)
        summary.update(probs, gold)
    return summary.as_dict()
