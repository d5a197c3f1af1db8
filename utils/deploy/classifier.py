"""The Python API: classify texts with an export directory, in memory. No Paddle.

    from utils import Classifier
    clf = Classifier("checkpoints/export")             # or the upstream-style prefix checkpoints/export/model
    clf.predict(["text", ...])                         # [Prediction(label, confidence, top_k), ...]
    clf.predict([("text_a", "text_b"), ...], top_k=3)  # pair models
    clf.predict_proba(texts)                           # softmax [len(texts), len(clf.labels)], clf.labels order

A multi-label or hierarchical export (`clf.task_type`, read from its manifest) gives
`LabelSetPrediction(labels, top_k)` per text: every label above its threshold (`clf.thresholds`;
hierarchical: decoded consistently unless trained with `--hierarchical_decoding flat`) with its
sigmoid probability, and `predict_proba` gives the sigmoid probabilities.

Results equal infer.py's on the same texts: same preprocessing, length-sorted batches within the
same chunks, same ranking. infer.py is the command line over `Classifier.classify_file`.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Iterable, List, Optional, Tuple, Union

import numpy as np

from ..choices import split_device
from ..task.calibration import check_reject_options, decoder_with_reject
from ..errors import UserError, check_text
from .predictions import ranked_labels
from .predictor import CHUNK_SIZE, ExportedClassifier, classify_file, resolve_export_dir
from ..progress import Progress

__all__ = ["Classifier", "LabelSetPrediction", "Prediction", "decode_predictions", "default_device",
           "default_num_threads"]

logger = logging.getLogger(__name__)

Text = Union[str, Tuple[str, str]]


def default_device() -> str:
    """gpu when onnxruntime-gpu's CUDA provider is available, else cpu."""
    import onnxruntime

    return "gpu" if "CUDAExecutionProvider" in onnxruntime.get_available_providers() else "cpu"


def default_num_threads() -> int:
    """Physical cores: a second hyper-thread per core only competes for the same matrix units."""
    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def check_positive(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise UserError(f"must be a positive integer, got {value!r}", name)


def fp16_note(use_fp16: bool, device: str) -> Optional[str]:
    """What infer.py, serve.py and the API say when fp16 is asked for where it does not apply."""
    if use_fp16 and device != "gpu":
        return f"note: use_fp16 (--use_fp16) only applies on a GPU; running the fp32 model on {device.upper()}"
    return None


@dataclass(frozen=True)
class Prediction:
    """One text's prediction: the best label, its softmax probability, and the `top_k` best
    `(label, probability)` pairs, best first (so `top_k[0] == (label, confidence)`)."""

    label: str
    confidence: float
    top_k: List[Tuple[str, float]]


@dataclass(frozen=True)
class LabelSetPrediction:
    """One text's prediction by a multi-label or hierarchical model: every label above its
    threshold with its sigmoid probability, most probable first (`[]` when none is), and the
    `top_k` most probable `(label, probability)` pairs whatever their thresholds."""

    labels: List[Tuple[str, float]]
    top_k: List[Tuple[str, float]]

    @property
    def names(self) -> List[str]:
        return [label for label, _ in self.labels]


def decode_predictions(probs: np.ndarray, labels: List[str], decoder, top_k: int = 1,
                       threshold: Optional[float] = None) -> List[Union[Prediction, LabelSetPrediction]]:
    """`Classifier.predict`'s answers from its probabilities (`decoder`: the model's `Decoder`), so
    that whoever holds probabilities (the service's batcher) decides exactly as `predict` does."""
    ranked = ranked_labels(probs, len(labels) if decoder.multi_label else min(top_k, len(labels)))
    if decoder.multi_label:
        decided = decoder.decide(probs, thresholds=threshold)
        return [LabelSetPrediction([(labels[j], float(row[j])) for j in order if chosen[j]],
                                   [(labels[j], float(row[j])) for j in order[:top_k]])
                for row, order, chosen in zip(probs, ranked, decided)]
    names = decoder.names(probs)  # the best label, or the other label below the reject threshold
    return [Prediction(name, float(row[best[0]]), [(labels[j], float(row[j])) for j in best])
            for name, row, best in zip(names, probs, ranked)]


class Classifier:
    """An export directory (or its `dir/model` prefix) loaded for classification on onnxruntime.

    `device`: "cpu", "gpu" or "gpu:N" (GPU N: `device_id` N; default: `default_device()`);
    `num_threads`: CPU threads (default on CPU: `default_num_threads()`); `use_fp16` (GPU; off a
    GPU, infer.py's note is logged) / `use_int8` pick the export's fp16 / int8 model;
    `max_seq_length` may shorten the exported one; `batch_size`: texts per onnxruntime run;
    `allow_spinning=False` lets onnxruntime's threads sleep between runs instead of spin-waiting
    (for a process that needs the cores for other work too, like serve.py).
    `reject_threshold` / `other_label` (multi-class): replace the export's reject option; a text
    whose top probability is below the threshold is labelled `other_label` (default "other").
    Every file is checked against the export's manifest (size, sha256) first; problems with the
    export or the arguments raise `utils.errors.UserError`.
    """

    def __init__(self, model_path: str, device: Optional[str] = None, device_id: int = 0,
                 num_threads: Optional[int] = None, use_fp16: bool = False, use_int8: bool = False,
                 max_seq_length: Optional[int] = None, batch_size: int = 32,
                 reject_threshold: Optional[float] = None, other_label: Optional[str] = None,
                 allow_spinning: bool = True):
        if isinstance(model_path, os.PathLike):
            model_path = os.fspath(model_path)
        if not isinstance(model_path, str) or not model_path:
            raise UserError(f"must be the path of an export directory (a str), got {model_path!r}", "model_path")
        check_positive(batch_size, "batch_size")
        check_reject_options(reject_threshold, other_label)
        for name, value in (("num_threads", num_threads), ("max_seq_length", max_seq_length)):
            if value is not None:
                check_positive(value, name)
        for name, value in (("use_fp16", use_fp16), ("use_int8", use_int8), ("allow_spinning", allow_spinning)):
            if not isinstance(value, bool):
                raise UserError(f"must be True or False, got {value!r}", name)
        device, device_id = split_device(device, device_id)
        self.export_dir = resolve_export_dir(model_path)
        self.device = device or default_device()
        note = fp16_note(use_fp16, self.device)
        if note:
            logger.warning(note)
        if num_threads is None and self.device == "cpu":
            num_threads = default_num_threads()
        self.num_threads = num_threads
        self.batch_size = batch_size
        self.model = ExportedClassifier(self.export_dir, device=self.device, device_id=device_id,
                                        num_threads=num_threads, use_fp16=use_fp16,
                                        max_seq_length=max_seq_length, use_int8=use_int8,
                                        allow_spinning=allow_spinning)
        self.model.decoder = decoder_with_reject(self.model.decoder, reject_threshold, other_label)

    @property
    def labels(self) -> List[str]:
        """Label names in output order: the columns of `logits` and `predict_proba`."""
        return list(self.model.labels)

    @property
    def task_type(self) -> str:
        """multi-class, multi-label or hierarchical: what the export was trained for (its manifest)."""
        return self.model.decoder.task_type

    @property
    def thresholds(self) -> Optional[List[float]]:
        """Per label, the probability a label must exceed to be predicted (None for multi-class)."""
        thresholds = self.model.decoder.thresholds
        return None if thresholds is None else list(thresholds)

    @property
    def temperature(self) -> float:
        """The temperature logits are divided by before softmax/sigmoid (train.py --calibrate; 1: none)."""
        return self.model.decoder.temperature

    @property
    def reject_threshold(self) -> Optional[float]:
        """Multi-class: below this top probability `predict` labels a text `other_label` (None: never)."""
        return self.model.decoder.reject_threshold

    @property
    def other_label(self) -> str:
        return self.model.decoder.other_label

    @property
    def pair(self) -> bool:
        """True for a model trained on text pairs: `predict` then takes `(text_a, text_b)` tuples."""
        return "text_b" in self.model.text_keys

    @property
    def model_path(self) -> str:
        """The ONNX file in use (model.onnx, or the fp16 / int8 variant)."""
        return os.path.join(self.export_dir, self.model.model_file)

    def __repr__(self) -> str:
        task = "" if self.task_type == "multi-class" else f", {self.task_type}"
        return (f"Classifier({self.export_dir!r}, model={self.model.model_file!r}, device={self.device!r}, "
                f"labels={len(self.model.labels)}{task}{', pair' if self.pair else ''})")

    def logits(self, texts: Iterable[Text], progress: bool = False) -> np.ndarray:
        """Raw model outputs, float32 `[len(texts), len(labels)]`, rows in input order. `progress`:
        show progress on stderr."""
        examples = self._examples(texts)
        out = np.zeros((len(examples), len(self.model.labels)), dtype=np.float32)
        # Chunks as infer.py reads files: the same length-sorted batches, so the same numbers,
        # and tokenized features for at most one chunk at a time.
        with Progress(len(examples), enabled=progress) as bar:
            for start in range(0, len(examples), CHUNK_SIZE):
                out[start:start + CHUNK_SIZE] = self.model.logits(
                    examples[start:start + CHUNK_SIZE], batch_size=self.batch_size, progress=False,
                    on_batch=bar.update)
        return out

    def predict_proba(self, texts: Iterable[Text], progress: bool = False) -> np.ndarray:
        """Probabilities, `[len(texts), len(labels)]`, columns in `labels` order: softmax, or one
        sigmoid per label for multi-label and hierarchical models."""
        return self.model.decoder.probabilities(self.logits(texts, progress=progress))

    def predict(self, texts: Iterable[Text], top_k: int = 1, progress: bool = False,
                threshold: Optional[float] = None) -> List[Union[Prediction, LabelSetPrediction]]:
        """One `Prediction` per text (`LabelSetPrediction` for multi-label and hierarchical models),
        in input order (`[]` for no texts). `texts`: strings, or `(text_a, text_b)` tuples for a pair
        model. `top_k`: how many labels each `top_k` lists (at most all of them). `threshold`
        (multi-label only): one threshold for every label instead of the model's."""
        check_positive(top_k, "top_k")
        decoder = self.model.decoder
        if threshold is not None:
            if not decoder.multi_label:
                raise UserError("is for multi-label and hierarchical models; a multi-class model predicts its best "
                                "label", "threshold")
            if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
                raise UserError(f"must be a number in [0, 1], got {threshold!r}", "threshold")
        return decode_predictions(self.predict_proba(texts, progress=progress), self.model.labels, decoder, top_k,
                                  threshold)

    def classify_file(self, input_path: str, output_path: str, top_k: int = 1, sort_by_length: bool = True,
                      progress: Optional[bool] = None, chunk_size: Optional[int] = None) -> dict:
        """Classify a file of texts into a prediction file, streaming (what infer.py does; formats in
        utils/dataset/inputs.py and utils/deploy/predictions.py). Returns the summary: counts, mean confidence,
        speed, accuracy and macro-F1 when the input has gold labels, model, device, output file.
        `chunk_size`: lines read, length-sorted and classified at a time (default CHUNK_SIZE)."""
        check_positive(top_k, "top_k")
        if chunk_size is not None:
            check_positive(chunk_size, "chunk_size")
        summary = classify_file(self.model, input_path, output_path, batch_size=self.batch_size, top_k=top_k,
                                sort_by_length=sort_by_length, progress=progress, chunk_size=chunk_size)
        summary.update(model=self.model_path, device=self.device, output_file=output_path)
        return summary

    def _examples(self, texts: Iterable[Text]) -> List[dict]:
        """`texts` -> example dicts, each checked for this model's layout; errors name the index."""
        if isinstance(texts, (str, bytes)):
            raise UserError(f"expected a list of texts, got a {type(texts).__name__}; wrap a single text in a "
                            "list: predict([text])", "texts")
        try:
            texts = list(texts)
        except TypeError:
            raise UserError(f"expected a list of texts, got {type(texts).__name__}", "texts") from None
        pair = self.pair
        examples = []
        for index, text in enumerate(texts):
            where = f"texts[{index}]"
            if pair:
                if not (isinstance(text, (tuple, list)) and len(text) == 2):
                    got = (f"a {len(text)}-{type(text).__name__}" if isinstance(text, (tuple, list))
                           else f"a {type(text).__name__}")
                    raise UserError(f"this model classifies text pairs: give a (text_a, text_b) tuple, got {got}",
                                    where)
                fields = {"text_a": text[0], "text_b": text[1]}
            else:
                if isinstance(text, (tuple, list)):
                    raise UserError(f"this model classifies single texts, not pairs: give a str, got a "
                                    f"{type(text).__name__} of {len(text)}", where)
                fields = {"text_a": text}
            example = {}
            for key, value in fields.items():
                name = key if pair else "text"
                if not isinstance(value, str):
                    raise UserError(f"{name} must be a str, got {type(value).__name__}", where)
                check_text(value, where if not pair else f"{where}[{0 if key == 'text_a' else 1}]")
                example[key] = value.strip()  # as infer.py reads lines
                if not example[key]:
                    raise UserError(f"empty {name}", where)
            examples.append(example)
        return examples
