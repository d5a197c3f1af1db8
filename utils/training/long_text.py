"""Long texts in training (--long_text head_tail|window): documents become the inputs the export's
preprocessing makes of them (utils/deploy/preprocess.py `DocumentWindows`, the same word-piece
tokenizer built from this tokenizer's vocabulary), each window an example carrying the document's
label(s); evaluation and prediction aggregate the windows' logits per document
(utils/task/windows.py `aggregate`), so metrics, tuning, calibration and prediction files are the
documents', exactly as infer.py, the API, the service and --ray compute them."""
from __future__ import annotations

import logging
import os
import tempfile
from typing import List, Optional, Sequence

import numpy as np

from ..deploy.preprocess import DocumentWindows, load_wordpiece_tokenizer
from ..model.spec import ModelSpec
from ..task.windows import WindowCounts, aggregate

logger = logging.getLogger(__name__)


def wordpiece_of(tokenizer):
    """The `tokenizers` word-piece tokenizer the export will use, from a paddlenlp tokenizer's files."""
    with tempfile.TemporaryDirectory() as directory:
        tokenizer.save_pretrained(directory)
        return load_wordpiece_tokenizer(os.path.join(directory, "vocab.txt"),
                                        bool(getattr(tokenizer, "do_lower_case", True)), tokenizer.unk_token,
                                        list(tokenizer.all_special_tokens))


class TrainingWindows:
    """A model's long-text reading on train.py's side: split examples, aggregate their logits."""

    def __init__(self, spec: ModelSpec, tokenizer):
        self.spec = spec
        self.windows = DocumentWindows(wordpiece_of(tokenizer), spec.window_tokens(tokenizer), spec.long_text)
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
