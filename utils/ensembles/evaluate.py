"""The ensemble beside its members: metrics of the export and of each member from one pass over the
export (onnxruntime), and the threshold search on dev with the ensemble's probabilities."""
from __future__ import annotations

import dataclasses
from typing import List, Optional

import numpy as np

from ..deploy.format import MEMBER_OUTPUT, OUTPUT_NAME
from .plan import EnsemblePlan


def export_outputs(export_dir: str, examples: List[dict], batch_size: int = 32):
    """`(logits [n, labels], member_logits [members, n, labels])` of an ensemble export on `examples`
    (onnxruntime, length-sorted batches, as infer.py; under --long_text each document's windows
    aggregated, the ensemble's and each member's alike)."""
    from ..deploy.predictor import ExportedClassifier

    model = ExportedClassifier(export_dir)
    outputs = model.document_outputs(examples, (OUTPUT_NAME, MEMBER_OUTPUT), batch_size)
    return outputs[OUTPUT_NAME], outputs[MEMBER_OUTPUT].transpose(1, 0, 2)


def evaluate(plan: EnsemblePlan, export_dir: str, examples: List[dict], batch_size: int = 32) -> dict:
    """The ensemble's metrics and each member's on `examples` (gold `labels`), from one pass."""
    from ..task.metrics import task_metrics

    gold = [e["labels"] for e in examples]
    logits, members = export_outputs(export_dir, examples, batch_size)
    member_metrics = [task_metrics(m.spec.decoder, members[i], gold) for i, m in enumerate(plan.members)]
    mean = {key: float(np.mean([m[key] for m in member_metrics])) for key in member_metrics[0]}
    return {"ensemble": task_metrics(plan.decoder, logits, gold), "members": member_metrics, "members_mean": mean,
            "samples": len(examples), "logits": logits}


def search_ensemble_thresholds(plan: EnsemblePlan, models, dev: List[dict], mode: str,
                               default: Optional[float]) -> EnsemblePlan:
    """--threshold_search on dev with the ensemble's (dynamic-graph) probabilities."""
    from ..task.decoding import search_thresholds

    gold = np.array([e["labels"] for e in dev]) > 0.5
    thresholds = search_thresholds(plan.decoder, dev_probabilities(plan, models, dev), gold, mode, default=default)
    return dataclasses.replace(plan, decoder=plan.decoder.with_thresholds(thresholds), threshold_search=mode)


def dev_probabilities(plan: EnsemblePlan, models, documents: List[dict]) -> np.ndarray:
    """The ensemble's label-set probabilities of `documents` as its export computes them: the members'
    mean per input, then (--long_text) each document's windows aggregated."""
    from ..deploy.preprocess import DocumentWindows
    from ..model.assembly import model_logits
    from ..task.windows import EPS, aggregate

    spec, tokenizer = plan.members[0].spec, models[0].template.tokenizer
    inputs, pieces = documents, None
    if spec.long_text.active:  # every member cuts the same windows (plan.py)
        windows = DocumentWindows.of_tokenizer(tokenizer, spec.window_tokens(tokenizer), spec.long_text)
        inputs, pieces = windows.split(documents)
    probs = np.mean([m.probabilities(model_logits(model, inputs)) for m, model in zip(plan.members, models)], axis=0)
    if pieces is None:
        return probs
    probs = np.clip(probs, EPS, 1 - EPS)  # the graph's output is the logit of the mean sigmoid
    logits = aggregate(np.log(probs) - np.log1p(-probs), [len(p.texts) for p in pieces], True,
                       spec.long_text.aggregation)
    return 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
