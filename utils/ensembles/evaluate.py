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
    (onnxruntime, length-sorted batches, as infer.py)."""
    from ..deploy.predictor import ExportedClassifier

    model = ExportedClassifier(export_dir)
    features = model.preprocessor.encode(examples)
    order = np.argsort([len(f["input_ids"]) for f in features], kind="stable")
    logits = np.zeros((len(examples), len(model.labels)), dtype=np.float32)
    members = None
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        batch = model.preprocessor.pad([features[i] for i in index])
        combined, per_member = model.session.run([OUTPUT_NAME, MEMBER_OUTPUT],
                                                 {name: batch[name] for name in model.input_names})
        if members is None:
            members = np.zeros((per_member.shape[0], len(examples), per_member.shape[2]), dtype=np.float32)
        logits[index] = combined
        members[:, index] = per_member
    return logits, members


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
    from ..model.assembly import model_logits
    from ..task.decoding import search_thresholds

    probs = np.mean([m.probabilities(model_logits(model, dev)) for m, model in zip(plan.members, models)], axis=0)
    gold = np.array([e["labels"] for e in dev]) > 0.5
    thresholds = search_thresholds(plan.decoder, probs, gold, mode, default=default)
    return dataclasses.replace(plan, decoder=plan.decoder.with_thresholds(thresholds), threshold_search=mode)
