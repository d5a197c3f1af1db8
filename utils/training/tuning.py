"""What is fitted on dev.txt after training (--calibrate, --threshold_search), and the calibration
metrics of a split."""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Dict, List

import numpy as np

from ..dataset.folder import DatasetDir
from ..choices import ThresholdSearch
from ..task.decoding import search_thresholds
from ..task.metrics import metrics_fn
from ..model.spec import ModelSpec
from .trainer import predict_logits

logger = logging.getLogger(__name__)


def threshold_search(model_args) -> tuple:
    """`(mode, default)` of --threshold_search: evaluations during training tune their thresholds on
    dev the same way, so the best checkpoint is the best one at tuned thresholds (at 0.5 an early,
    sparse-output model can score 0 at every evaluation, and the first would count as best)."""
    mode = model_args.threshold_search
    return (None if mode is None else mode.value), model_args.threshold


def tune_thresholds(trainer, model_args, dataset: DatasetDir) -> None:
    """--threshold_search global|per-label: thresholds tuned on dev.txt for the final model (the
    best one when it was reloaded), saved in its spec, so evaluation, prediction, the export,
    infer.py and the service use them. Checkpoints keep the thresholds they were trained with."""
    mode = model_args.threshold_search
    if mode is None or mode == ThresholdSearch.NONE or not trainer.spec.decoder.multi_label:
        return
    decoder = trainer.spec.decoder
    logits = predict_logits(trainer, dataset.dev)
    gold = np.array([e["labels"] for e in dataset.dev]) > 0.5
    thresholds = search_thresholds(decoder, decoder.probabilities(logits), gold, mode.value,
                                   default=model_args.threshold)
    trainer.spec = dataclasses.replace(trainer.spec, thresholds=list(thresholds), threshold_search=mode.value)
    trainer.compute_metrics = metrics_fn(len(trainer.spec.labels), trainer.spec.decoder)
    shown = (f"{thresholds[0]:.2f}" if mode == ThresholdSearch.GLOBAL
             else f"{min(thresholds):.2f}..{max(thresholds):.2f} over {len(thresholds)} labels")
    logger.info("--threshold_search %s on dev.txt: threshold %s (saved in %s)", mode.value, shown,
                trainer.args.output_dir)


def calibrate(trainer, model_args, dataset: DatasetDir) -> None:
    """--calibrate: temperature scaling fitted on dev.txt for the final model (the best one when it
    was reloaded), saved in its spec, so evaluation, prediction, the export, infer.py and the
    service report calibrated probabilities. Before the threshold search: thresholds are chosen on
    the probabilities the model will report."""
    from ..task.calibration import calibration_report, fit_temperature

    if not model_args.calibrate:
        return
    decoder = trainer.spec.decoder
    logits = predict_logits(trainer, dataset.dev)
    gold = dev_gold(decoder, dataset.dev)
    temperature = fit_temperature(logits, gold, decoder.activation)
    trainer.spec = dataclasses.replace(trainer.spec, temperature=temperature)
    report = calibration_report(logits, gold, temperature, decoder.activation)
    logger.info("--calibrate on dev.txt: temperature %.4g, expected calibration error %.4f -> %.4f (saved in %s)",
                temperature, report.get("ece_uncalibrated", report["ece"]), report["ece"], trainer.args.output_dir)


def dev_gold(decoder, examples: List[dict]) -> np.ndarray:
    """Gold ids (multi-class) or a bool multi-hot matrix (label sets)."""
    if decoder.multi_label:
        return np.array([e["labels"] for e in examples]) > 0.5
    return np.array([e["labels"] for e in examples]).reshape(-1)


def calibration_metrics(spec: ModelSpec, logits: np.ndarray, examples: List[dict], prefix: str) -> Dict[str, Any]:
    """Expected calibration error (and NLL) at the model's temperature, and before it when it was
    calibrated; with a reject threshold, the coverage and the accuracy of the answered texts."""
    from ..task.calibration import calibration_report

    decoder = spec.decoder
    if not examples:
        return {}
    gold = dev_gold(decoder, examples)
    out = {f"{prefix}_{k}": v for k, v in calibration_report(logits, gold, decoder.temperature,
                                                              decoder.activation).items()}
    if decoder.reject_threshold is not None:
        probs = decoder.probabilities(logits)
        answered = ~decoder.rejected(probs)
        out[f"{prefix}_reject_threshold"] = decoder.reject_threshold
        out[f"{prefix}_coverage"] = float(answered.mean())
        if answered.any():  # (no key when nothing is answered: the Trainer's logger cannot print None)
            out[f"{prefix}_accuracy_answered"] = float((probs.argmax(1) == gold)[answered].mean())
    return out
