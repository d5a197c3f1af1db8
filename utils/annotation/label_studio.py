"""Label Studio's JSON: the labelling config this tool's tasks use, tasks, and model predictions.

One spelling of Label Studio's formats for everything that writes them (annotate.py export,
select.py, audit.py's review tasks, the service's ML backend routes). Label Studio shows a
prediction as a pre-annotation when its `result` names the config's control (`from_name`) and
object (`to_name`) and its `value` has the control's type:

    multi-class    <Choices choice="single">    {"choices": ["体育"]}
    multi-label    <Choices choice="multiple">  {"choices": ["a", "b"]}
    hierarchical   <Taxonomy>                   {"taxonomy": [["科技", "手机"], ["体育"]]}

A hierarchical label `科技##手机` is the taxonomy path `["科技", "手机"]`. A predicted label set holds
every ancestor of its labels (decoding is top-down), so the taxonomy lists only the most specific
paths: `科技` is implied by `科技##手机`. The prediction's `score` (what Label Studio sorts tasks by)
is the best label's probability (multi-class) or the lowest probability among the labels chosen
(label sets: the least sure decision), so the tasks the model is least sure of sort first.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union
from xml.sax.saxutils import quoteattr

from ..task.decoding import HIERARCHICAL, LEVEL_SEPARATOR, MULTI_CLASS, MULTI_LABEL

__all__ = ["CONTROL", "TEXT", "TEXT_B", "labeling_config", "leaf_paths", "prediction", "result", "task"]

CONTROL = "label"     # the labelling config's control tag name (from_name)
TEXT = "text"         # the object tag name (to_name) and the task's data key
TEXT_B = "text_b"     # the second text of sentence pairs

Text = Union[str, Tuple[str, str]]


def _choices_xml(labels: Sequence[str], indent: str) -> List[str]:
    return [f"{indent}<Choice value={quoteattr(label)}/>" for label in labels]


def _taxonomy_xml(labels: Sequence[str], indent: str) -> List[str]:
    """Nested <Choice> elements, each label under its parent path (labels sorted, parents first)."""
    children: Dict[Optional[str], List[str]] = {}
    for label in sorted(labels):
        parent = label.rsplit(LEVEL_SEPARATOR, 1)[0] if LEVEL_SEPARATOR in label else None
        children.setdefault(parent, []).append(label)

    def walk(parent: Optional[str], depth: int) -> List[str]:
        lines = []
        for label in children.get(parent, []):
            name = quoteattr(label.rsplit(LEVEL_SEPARATOR, 1)[-1])
            pad = indent + "  " * depth
            if label in children:
                lines += [f"{pad}<Choice value={name}>", *walk(label, depth + 1), f"{pad}</Choice>"]
            else:
                lines.append(f"{pad}<Choice value={name}/>")
        return lines

    return walk(None, 0)


def labeling_config(labels: Sequence[str], task_type: str = MULTI_CLASS, pair: bool = False) -> str:
    """The Label Studio labelling config (XML) for these labels and task type."""
    lines = ["<View>", f'  <Text name="{TEXT}" value="${TEXT}"/>']
    if pair:
        lines.append(f'  <Text name="{TEXT_B}" value="${TEXT_B}"/>')
    if task_type == HIERARCHICAL:
        lines += [f'  <Taxonomy name="{CONTROL}" toName="{TEXT}" leafsOnly="false">',
                  *_taxonomy_xml(labels, "    "), "  </Taxonomy>"]
    else:
        choice = "multiple" if task_type == MULTI_LABEL else "single"
        lines += [f'  <Choices name="{CONTROL}" toName="{TEXT}" choice="{choice}" showInline="false">',
                  *_choices_xml(labels, "    "), "  </Choices>"]
    lines.append("</View>")
    return "\n".join(lines) + "\n"


def leaf_paths(labels: Sequence[str]) -> List[List[str]]:
    """The taxonomy paths of a hierarchical label set: the labels no other label of the set extends."""
    chosen = set(labels)
    leaves = [label for label in labels
              if not any(other != label and other.startswith(label + LEVEL_SEPARATOR) for other in chosen)]
    return [label.split(LEVEL_SEPARATOR) for label in leaves]


def result(labels: Sequence[str], task_type: str = MULTI_CLASS, from_name: str = CONTROL,
           to_name: str = TEXT) -> List[Dict[str, Any]]:
    """A Label Studio `result` list choosing `labels` (empty labels: an empty result)."""
    if not labels:
        return []
    if task_type == HIERARCHICAL:
        value = {"taxonomy": leaf_paths(labels)}
        kind = "taxonomy"
    else:
        value = {"choices": list(labels)}
        kind = "choices"
    return [{"from_name": from_name, "to_name": to_name, "type": kind, "value": value}]


def prediction(prediction_of_text, task_type: str = MULTI_CLASS, model_version: str = "",
               from_name: str = CONTROL, to_name: str = TEXT) -> Dict[str, Any]:
    """A Label Studio prediction from a `Prediction` or `LabelSetPrediction` (utils/deploy/classifier.py)."""
    if task_type == MULTI_CLASS:
        labels = [prediction_of_text.label]
        score = float(prediction_of_text.confidence)
    else:
        labels = prediction_of_text.names
        chosen = [probability for _, probability in prediction_of_text.labels]
        # No label chosen: as unsure as the most probable label was close to being chosen.
        score = float(min(chosen)) if chosen else float(1.0 - prediction_of_text.top_k[0][1])
    return {"model_version": model_version, "score": round(score, 6),
            "result": result(labels, task_type, from_name, to_name)}


def task(text: Text, predictions: Optional[List[Dict[str, Any]]] = None,
         meta: Optional[Dict[str, Any]] = None,
         annotations: Optional[List[Dict[str, Any]]] = None) -> Dict[str, Any]:
    """A Label Studio task for a text (or a pair), with pre-annotations, data fields from `meta`, and
    `annotations` (each `{"result": result(...)}`: labels already given, e.g. audit.py's tasks to review)."""
    data: Dict[str, Any] = {}
    if isinstance(text, tuple):
        data[TEXT], data[TEXT_B] = text
    else:
        data[TEXT] = text
    for key, value in (meta or {}).items():
        data.setdefault(key, value)
    out: Dict[str, Any] = {"data": data}
    if predictions:
        out["predictions"] = predictions
    if annotations:
        out["annotations"] = annotations
    return out
