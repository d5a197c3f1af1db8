"""Long texts in training (--long_text head_tail|window): documents become the inputs the export's
preprocessing makes of them (utils/deploy/preprocess.py `DocumentWindows`, the same word-piece
tokenizer built from this tokenizer's vocabulary); evaluation and prediction aggregate the windows'
logits per document (utils/task/windows.py `aggregate`), so metrics, tuning, calibration and
prediction files are the documents', exactly as infer.py, the API, the service and --ray compute them.

What a training example is (--window_training):

* `window` (default): each window, carrying its document's label(s) (`TrainingWindows.split`).
* `document`: each document, `{"windows": [...]}` (`TrainingWindows.documents`); a batch holds
  whole documents (`DocumentCollator`: their windows as one batch of inputs, `window_counts` saying
  which belong together, one label row per document), the model reads every window and the loss is
  the document's, on its windows' logits aggregated differentiably (`document_logits`) as
  inference aggregates them: the mean of the probabilities exactly (its log is differentiable; vote
  trains on this mean, the vote itself has no gradient), max as the per-label max (of the
  probabilities, renormalised, for multi-class; of the logits for label sets, the same thing
  through a sigmoid). The result is logits whose softmax / sigmoid is the document's probabilities,
  so the head's own loss (cross-entropy, BCE, a teacher's soft targets) applies unchanged.
"""
from __future__ import annotations

import logging
from typing import List, Optional, Sequence

import numpy as np
import paddle
import paddle.nn.functional as F

from ..deploy.preprocess import DocumentWindows
from ..model.spec import ModelSpec
from ..task.windows import MAX, WindowCounts, aggregate

logger = logging.getLogger(__name__)

WINDOWS_KEY = "windows"            # a training document's windows (--window_training document)
WINDOW_COUNTS = "window_counts"    # a document batch: how many consecutive inputs each document has


class TrainingWindows:
    """A model's long-text reading on train.py's side: split examples, aggregate their logits."""

    def __init__(self, spec: ModelSpec, tokenizer):
        self.spec = spec
        self.windows = DocumentWindows.of_tokenizer(tokenizer, spec.window_tokens(tokenizer), spec.long_text)
        self.counts: Optional[List[int]] = None   # the windows per document of the set being evaluated

    @classmethod
    def of(cls, spec: ModelSpec, tokenizer) -> Optional["TrainingWindows"]:
        return cls(spec, tokenizer) if spec.long_text.active else None

    def split(self, examples: Sequence[dict], what: str) -> tuple:
        """`(inputs, counts, report)`: the examples the model reads and how many each document gave."""
        inputs, pieces = self.windows.split(list(examples))
        report = WindowCounts()
        report.add(pieces)
        logger.info("--long_text %s on %s: %d of %d texts longer than one input, %d inputs read%s",
                    self.spec.long_text.mode, what, report.longer, report.texts, report.windows,
                    f", {report.capped} cut by --max_windows" if report.capped else "")
        return inputs, [len(p.texts) for p in pieces], report

    def documents(self, eval_preds):
        """A Trainer's `EvalPrediction` over windows -> over documents (aggregated logits, first labels)."""
        from paddlenlp.trainer import EvalPrediction

        logits = eval_preds.predictions
        logits = logits[0] if isinstance(logits, (tuple, list)) else logits
        if self.counts is None or len(logits) != sum(self.counts):
            return eval_preds
        firsts = np.cumsum([0] + list(self.counts[:-1]))
        return EvalPrediction(predictions=self.aggregate(logits, self.counts),
                              label_ids=np.asarray(eval_preds.label_ids)[firsts])

    def aggregate(self, logits: np.ndarray, counts: Sequence[int]) -> np.ndarray:
        return aggregate(logits, counts, self.spec.decoder.multi_label, self.spec.long_text.aggregation)

    def training_documents(self, examples: Sequence[dict], what: str) -> List[dict]:
        """--window_training document: one training example per document, `{"windows": [its inputs]}`,
        each input carrying the document's label(s)."""
        inputs, counts, _ = self.split(examples, what)
        starts = np.cumsum([0] + counts)
        return [{WINDOWS_KEY: inputs[start:end]} for start, end in zip(starts[:-1], starts[1:])]


class DocumentCollator:
    """--window_training document: a batch of documents as one batch of inputs (every window of
    every document, documents never split), `window_counts` (each document's number of
    consecutive inputs) and one label row per document. Batches of windows (evaluation) pass
    through `collator` unchanged."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, features: List[dict]) -> dict:
        if not features or WINDOWS_KEY not in features[0]:
            return self.collator(features)
        counts = [len(feature[WINDOWS_KEY]) for feature in features]
        batch = self.collator([window for feature in features for window in feature[WINDOWS_KEY]])
        if "labels" in batch:  # every window carries its document's labels: the first window's row
            firsts = paddle.to_tensor(np.cumsum([0] + counts[:-1]), dtype="int64")
            batch["labels"] = paddle.gather(batch["labels"], firsts)
        batch[WINDOW_COUNTS] = paddle.to_tensor(counts, dtype="int64")
        return batch


def document_logits(window_logits: paddle.Tensor, counts: Sequence[int], multi_label: bool,
                    aggregation: str) -> paddle.Tensor:
    """`[documents, labels]` logits from `[inputs, labels]` (`counts[i]` consecutive rows per
    document), differentiable, decoding as utils/task/windows.py `aggregate` does: one window, its
    logits; several, logits whose softmax (multi-class) or sigmoid (label sets) is the aggregated
    probability q. mean: log q = logsumexp of the windows' log-probabilities - log n (label sets:
    logit q from the same for p and 1 - p); max: the per-label max of the log-probabilities,
    renormalised (label sets: the max logit, as sigmoid is monotone); vote: trained as mean."""
    rows, start = [], 0
    for count in counts:
        logits = window_logits[start:start + count]
        start += count
        if count == 1:
            rows.append(logits[0])
        elif multi_label and aggregation == MAX:
            rows.append(logits.max(axis=0))
        elif multi_label:
            rows.append(paddle.logsumexp(F.log_sigmoid(logits), axis=0)
                        - paddle.logsumexp(F.log_sigmoid(-logits), axis=0))
        elif aggregation == MAX:
            best = F.log_softmax(logits, axis=-1).max(axis=0)
            rows.append(best - paddle.logsumexp(best, axis=-1))
        else:
            rows.append(paddle.logsumexp(F.log_softmax(logits, axis=-1), axis=0) - float(np.log(count)))
    if start != window_logits.shape[0]:
        raise ValueError(f"{window_logits.shape[0]} window rows, but the counts add up to {start}")
    return paddle.stack(rows)


class DocumentScores:
    """A model called on a document batch's inputs that answers with the documents' logits
    (`document_logits`), so the trainer's loss (and R-Drop's second pass) is per document."""

    def __init__(self, model, counts: Sequence[int], multi_label: bool, aggregation: str):
        self.model, self.counts = model, list(counts)
        self.multi_label, self.aggregation = multi_label, aggregation

    def __call__(self, **inputs):
        output = self.model(**inputs)
        logits, rest = (output[0], tuple(output[1:])) if isinstance(output, (tuple, list)) else (output, ())
        documents = document_logits(logits, self.counts, self.multi_label, self.aggregation)
        return (documents,) + rest if rest else documents
