"""Label Studio's ML backend protocol, the checks and bodies of the service's routes under
`--label_studio_prefix` (default `/label-studio`; the routes themselves are `Service` methods).

Label Studio (label_studio/ml/api_connector.py, models.py) calls, on the URL it was given:

    GET  {prefix}/health    when connecting and before every prediction run; any 2xx JSON: up
    POST {prefix}/setup     {"project", "schema": the labelling config, ...} -> {"model_version"};
                            a 4xx here is what Label Studio shows as "doesn't look like a valid ML backend"
    POST {prefix}/predict   {"tasks": [{"id", "data": {...}}, ...], "label_config", "project", "params"}
                            -> {"results": [one prediction per task, in order], "model_version"}
    POST {prefix}/webhook   every project event (Label Studio registers it when the backend is added)
    POST {prefix}/train     "Start training" (or a webhook with action START_TRAINING)
    GET  {prefix}/versions  the model versions it may choose from

A prediction is `utils.annotation.label_studio.prediction` (result, score, model_version) with
`from_name`/`to_name` and the task's text key read from the project's config, never assumed.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Dict, List

from ..annotation import label_studio as ls
from ..deploy.classifier import decode_predictions
from ..errors import UserError, check_text
from ..task.decoding import HIERARCHICAL, MULTI_CLASS, MULTI_LABEL, ancestors
from .config import ServiceConfig
from .requests import RequestError, clean_text

__all__ = ["START_TRAINING", "check_config", "model_version", "predictions", "task_examples"]

START_TRAINING = "START_TRAINING"  # the webhook action Label Studio sends for "Start training"
CONTROL_KIND = {MULTI_CLASS: ("choices", False), MULTI_LABEL: ("choices", True), HIERARCHICAL: ("taxonomy", True)}
CONTROL_TAG = {MULTI_CLASS: '<Choices choice="single">', MULTI_LABEL: '<Choices choice="multiple">',
               HIERARCHICAL: "<Taxonomy>"}


def model_version(name: str, model) -> str:
    """What Label Studio records as the predictions' model_version: the service's name and the first
    12 hex digits of the sha256 of the export's manifest (every file's sha256, the decoding) and of
    the ONNX file in use, so another export, or its int8 model, is another version."""
    described = json.dumps([model.manifest, getattr(model, "model_file", None)], sort_keys=True, ensure_ascii=False)
    return f"{name}-{hashlib.sha256(described.encode('utf-8')).hexdigest()[:12]}"


def expected_labels(classifier) -> List[str]:
    """The labels a project's control must offer: the export's (for a Taxonomy, each label's path,
    ancestors included), and the reject option's other label when the export has one."""
    decoder = classifier.model.decoder
    labels = set(classifier.labels)
    if classifier.task_type == HIERARCHICAL:
        labels.update(parent for label in classifier.labels for parent in ancestors(label))
    if getattr(decoder, "reject_threshold", None) is not None:
        labels.add(decoder.other_label)
    return sorted(labels)


def _mismatch(control: ls.Control, classifier) -> str:
    """Why `control` cannot hold this model's predictions ('' if it can)."""
    task_type = classifier.task_type
    kind, multiple = CONTROL_KIND.get(task_type, CONTROL_KIND[MULTI_CLASS])
    if (control.kind, control.multiple) != (kind, multiple):
        found = ("<Taxonomy>" if control.kind == "taxonomy"
                 else f'<Choices choice="{"multiple" if control.multiple else "single"}">')
        return f"<{control.name}> is a {found}; this {task_type} model's labels go in a {CONTROL_TAG[task_type]}"
    expected, offered = expected_labels(classifier), set(control.labels)
    missing, extra = [x for x in expected if x not in offered], sorted(offered - set(expected))
    if not missing and not extra:
        return ""
    what = "paths" if control.kind == "taxonomy" else "choices"
    parts = [f"{name}{', '.join(map(repr, labels[:10]))}{' ...' if len(labels) > 10 else ''}"
             for name, labels in (("missing ", missing), ("not the model's: ", extra)) if labels]
    return (f"the {what} of <{control.name}> are not the model's labels ({'; '.join(parts)}); create the project "
            "with the model's labels (GET /labels)")


def check_config(config: Any, field: str, classifier) -> ls.Control:
    """The control of the labelling config `config` (the body's `field`) that takes this model's
    predictions, or a 422 naming `field` that says why none can."""
    if not isinstance(config, str):
        raise RequestError(422, field, "must be the project's labelling config (XML text), got "
                                       f"{type(config).__name__}")
    try:
        check_text(config, field)  # (expat, and the error that quotes it, need valid Unicode)
    except UserError as exc:
        raise RequestError(400, field, exc.message) from None
    try:
        controls = ls.read_labeling_config(config)
    except ls.ConfigError as exc:
        raise RequestError(422, field, str(exc)) from None
    reasons = []
    for control in controls:
        reason = _mismatch(control, classifier)
        if not reason:
            if classifier.pair and len(control.text_keys) < 2:
                raise RequestError(422, field, f"this model classifies text pairs: <{control.name}>'s config needs a "
                                               "second <Text> (the pair's second text)")
            return control
        reasons.append(reason)
    raise RequestError(422, field, "; ".join(reasons))


def task_examples(tasks: Any, control: ls.Control, pair: bool, config: ServiceConfig) -> List[dict]:
    """The tasks' texts as example dicts (each checked as /predict checks texts), or a 4xx naming
    the field, e.g. `tasks[3].data.text`."""
    if not isinstance(tasks, list):
        raise RequestError(422, "tasks", f"must be a list of tasks, got {type(tasks).__name__}")
    if not tasks:
        raise RequestError(422, "tasks", "is empty: give at least one task")
    keys = control.text_keys[:2] if pair else control.text_keys[:1]
    examples = []
    for index, task in enumerate(tasks):
        if not isinstance(task, dict):
            raise RequestError(422, f"tasks[{index}]", f"must be a task object, got {type(task).__name__}")
        data = task.get("data")
        if not isinstance(data, dict):
            raise RequestError(422, f"tasks[{index}].data", "is required: an object holding the task's fields"
                               if data is None else f"must be an object, got {type(data).__name__}")
        example = {}
        for name, key in zip(("text_a", "text_b"), keys):
            where = f"tasks[{index}].data.{key}"
            if key not in data:
                raise RequestError(422, where, f"is missing: the config's <Text> reads ${key}")
            example[name] = clean_text(data[key], where, config)
        examples.append(example)
    return examples


def predictions(probs, classifier, control: ls.Control, version: str) -> List[Dict[str, Any]]:
    """One Label Studio prediction per row of `probs`, decided as `Classifier.predict` decides."""
    decided = decode_predictions(probs, classifier.labels, classifier.model.decoder)
    return [ls.prediction(item, classifier.task_type, version, control.name, control.to_name) for item in decided]
