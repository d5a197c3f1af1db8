"""What train.py writes besides the model: prediction files, per-label and calibration reports,
explanations, the training curves, the export."""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, List

import numpy as np

from ..dataset.folder import DatasetDir
from ..dataset.labels import LabelSet
from ..files import write_text_atomic
from ..task.decoding import DEFAULT_OTHER_LABEL
from ..task.metrics import task_metrics
from ..deploy.predictions import write_predictions
from ..reporting.reports import plot_training_curves, write_classification_report, write_multilabel_report
from ..model.spec import ModelSpec
from ..rundir.names import CURVES_FILE, DATA_PREDICTIONS_FILE, EXPORT_DIR, TEST_PREDICTIONS_FILE, TRAINER_STATE_FILE
from ..task.windows import WINDOW_REPORT_KEYS
from .trainer import predict, predict_logits
from .tuning import calibration_metrics, dev_gold

logger = logging.getLogger(__name__)


def plot_curves(training_args) -> None:
    """`training_curves.png`: losses and the metric that picks the best checkpoint, by step."""
    metric = training_args.metric_for_best_model or "accuracy"
    plot_training_curves(os.path.join(training_args.output_dir, TRAINER_STATE_FILE),
                         os.path.join(training_args.output_dir, CURVES_FILE),
                         metric=metric if metric.startswith("eval_") else f"eval_{metric}")


def write_prediction_file(path: str, dataset: DatasetDir, examples: List[dict], logits: np.ndarray,
                          spec: ModelSpec, with_gold: bool) -> None:
    """train.py's prediction files, through infer.py's writer: one vocabulary (text, [gold], label,
    confidence; labels above their thresholds for label sets), one atomic writer."""
    decoder = spec.decoder
    gold = dataset.gold_names(examples) if with_gold else None
    write_predictions(path, examples, decoder.probabilities(logits), spec.labels, gold=gold, decoder=decoder)


def write_report(output_dir: str, prefix: str, dataset: DatasetDir, examples: List[dict], logits: np.ndarray,
                 spec: ModelSpec) -> None:
    """Per-label report files of one split, for the model's task type (utils/reporting/reports.py)."""
    decoder = spec.decoder
    if decoder.multi_label:
        write_multilabel_report(output_dir, prefix, np.array([e["labels"] for e in examples]) > 0.5,
                                decoder.decide(decoder.probabilities(logits)), spec.labels,
                                decoder.levels if decoder.hierarchical else None)
    else:
        write_classification_report(output_dir, prefix, [e["labels"] for e in examples], logits.argmax(-1),
                                    spec.labels)
    write_calibration_report(output_dir, prefix, examples, logits, spec)


def write_calibration_report(output_dir: str, prefix: str, examples: List[dict], logits: np.ndarray,
                             spec: ModelSpec) -> None:
    """`{prefix}_reliability.png` (before/after temperature scaling) and, multi-class,
    `{prefix}_coverage.tsv`: per reject threshold, the share of texts answered and their accuracy,
    so users can choose --reject_threshold."""
    from ..task.calibration import coverage_table, format_coverage_table, plot_reliability

    decoder = spec.decoder
    gold = dev_gold(decoder, examples)
    plot_reliability(os.path.join(output_dir, f"{prefix}_reliability.png"), logits, gold, decoder.temperature,
                     decoder.activation, title=f"{prefix}: reliability diagram")
    if not decoder.multi_label:
        table = format_coverage_table(coverage_table(decoder.probabilities(logits), gold,
                                                     chosen=decoder.reject_threshold))
        write_text_atomic(os.path.join(output_dir, f"{prefix}_coverage.tsv"), table)
        logger.info("%s coverage and accuracy per --reject_threshold (%s_coverage.tsv):\n%s", prefix, prefix,
                    table.rstrip())


def predict_and_write(trainer, dataset: DatasetDir, label_set: LabelSet, output_dir: str) -> Dict[str, Any]:
    """Test metrics + per-example predictions for test.txt, and predictions for data.txt.

    Under data parallelism every process predicts (the Trainer gathers the logits of all of
    them); only the first writes files.
    """
    results: Dict[str, Any] = {}
    spec = trainer.spec
    writer = trainer.is_world_process_zero()
    if dataset.test:
        logits, predicted = predict(trainer, dataset.test)
        gold = [e["labels"] for e in dataset.test]
        metrics = {f"test_{k}": v for k, v in task_metrics(spec.decoder, logits, gold).items()}
        metrics.update({f"test_{k}": predicted[f"test_{k}"] for k in WINDOW_REPORT_KEYS if f"test_{k}" in predicted})
        metrics.update(calibration_metrics(spec, logits, dataset.test, "test"))
        metrics["test_samples"] = len(gold)
        trainer.log_metrics("test", metrics)
        trainer.save_metrics("test", metrics)
        if writer:
            write_prediction_file(os.path.join(output_dir, TEST_PREDICTIONS_FILE), dataset, dataset.test, logits,
                                  spec, True)
            write_report(output_dir, "test", dataset, dataset.test, logits, spec)
        results["test"] = metrics
    else:
        logger.warning("--do_predict: no test.txt in %s, skipping test metrics", dataset.path)
    if dataset.data:
        logits = predict_logits(trainer, dataset.data)
        if writer:
            write_prediction_file(os.path.join(output_dir, DATA_PREDICTIONS_FILE), dataset, dataset.data, logits,
                                  spec, False)
        results["data_predictions"] = len(dataset.data)
    return results


EXPLAIN_LIMIT = 50      # texts explained per file by --explain (integrated gradients: 32 passes each)
BAD_CASE_LIMIT = 20


def write_explanations_of_predictions(trainer, dataset: DatasetDir, output_dir: str) -> None:
    """--explain: attributions of the first test/data texts and the test bad-case report (utils/reporting/explain.py)."""
    from ..reporting.explain import Explainer, bad_cases, write_explanations

    from .long_text import TrainingWindows

    explainer = Explainer(trainer.model, trainer.tokenizer, trainer.spec,
                          windows=TrainingWindows.of(trainer.spec, trainer.tokenizer))
    if dataset.test:
        examples = dataset.test[:EXPLAIN_LIMIT]
        gold = dataset.gold_names(examples)
        write_explanations(output_dir, "test_explanations", explainer.explain_all(examples, gold),
                           f"Token attributions: test.txt (first {len(examples)})")
        if not trainer.spec.decoder.multi_label:
            split_gold = dataset.gold_names(dataset.test)
            cases = bad_cases(explainer, dataset.test, split_gold, explainer.probabilities(dataset.test),
                              BAD_CASE_LIMIT)
            write_explanations(output_dir, "test_bad_cases", cases,
                               f"Bad cases on test.txt: errors, most confident first ({len(cases)})")
    if dataset.data:
        examples = dataset.data[:EXPLAIN_LIMIT]
        write_explanations(output_dir, "data_explanations", explainer.explain_all(examples),
                           f"Token attributions: data.txt (first {len(examples)})")
    logger.info("--explain: token attributions written to %s (*_explanations.html, test_bad_cases.html)", output_dir)


def export(model_args, training_args, dataset: DatasetDir, checkpoint: str) -> dict:
    """--do_export: the saved model (or --resume_from_checkpoint) -> output_dir/export."""
    from ..export.pipeline import export_checkpoint

    manifest = export_checkpoint(checkpoint, os.path.join(training_args.output_dir, EXPORT_DIR),
                                 examples=dataset.dev or dataset.test or dataset.train or dataset.data,
                                 export_type=model_args.export_type, overwrite=True,
                                 export_fp16=model_args.export_fp16, quantize=model_args.quantize, locked=True,
                                 fuse_attention=model_args.fuse_attention,
                                 reject_option=None if model_args.reject_threshold is None else (
                                     float(model_args.reject_threshold), model_args.other_label or DEFAULT_OTHER_LABEL))
    return manifest["parity"]
