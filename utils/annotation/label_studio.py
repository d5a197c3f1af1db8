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

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union
from xml.sax.saxutils import quoteattr

from ..task.decoding import HIERARCHICAL, LEVEL_SEPARATOR, MULTI_CLASS, MULTI_LABEL, parent_path

__all__ = ["CONTROL", "TEXT", "TEXT_B", "ConfigError", "Control", "labeling_config", "leaf_paths", "prediction",
           "read_labeling_config", "result", "task"]

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
        children.setdefault(parent_path(label), []).append(label)

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


# -- reading a project's labelling config (the ML backend's /setup and /predict) ------------------

CLASSIFICATION_TAGS = ("choices", "taxonomy")


class ConfigError(ValueError):
    """A labelling config this tool cannot pre-label: the message says what and where."""


@dataclass(frozen=True)
class Control:
    """A classification control of a labelling config, as Label Studio's results must name it:
    `name` (from_name), `to_name` (the Text object it labels), `kind` (`choices` or `taxonomy`),
    `multiple` (Choices' choice="multiple"; a Taxonomy always takes several paths), `labels` (a
    Choice's alias or value; a Taxonomy node's path joined with `##`, ancestors included) and
    `text_keys`: the task data keys of the texts, the control's object first (`$text` -> `text`),
    then the config's other Text objects in document order (a pair's second text)."""

    name: str
    to_name: str
    kind: str
    multiple: bool
    labels: Tuple[str, ...]
    text_keys: Tuple[str, ...]


def _tag(element) -> str:
    return element.tag.lower() if isinstance(element.tag, str) else ""


def _choice_name(choice, where: str) -> str:
    name = choice.get("alias") or choice.get("value")
    if not name:
        raise ConfigError(f"{where}: a <Choice> has no value")
    return name


def _taxonomy_labels(element, parent: Tuple[str, ...] = ()) -> List[str]:
    labels = []
    for child in element:
        if _tag(child) == "choice":
            path = parent + (_choice_name(child, f"<Taxonomy name={element.get('name')!r}>"),)
            if any(LEVEL_SEPARATOR in part for part in path):
                raise ConfigError(f"a <Taxonomy> choice contains {LEVEL_SEPARATOR!r}, this tool's level separator")
            labels.append(LEVEL_SEPARATOR.join(path))
            labels += _taxonomy_labels(child, path)
        else:
            labels += _taxonomy_labels(child, parent)  # (layout tags inside the control)
    return labels


def _text_objects(root) -> Dict[str, str]:
    """`{Text name: task data key}` of every <Text> tag whose value is a task field (`$key`)."""
    texts: Dict[str, str] = {}
    for element in root.iter():
        if _tag(element) != "text":
            continue
        name, value = element.get("name"), element.get("value") or ""
        if not name:
            raise ConfigError("a <Text> tag has no name")
        if not (value.startswith("$") and len(value) > 1):
            raise ConfigError(f"<Text name={name!r}>: its value must be a task field such as \"$text\", got {value!r}")
        if (element.get("valueType") or "text").lower() != "text":
            raise ConfigError(f"<Text name={name!r}>: valueType={element.get('valueType')!r}: the task must hold the "
                              "text itself, not a URL to it")
        texts[name] = value[1:]
    return texts


def _control(element, texts: Dict[str, str]) -> Control:
    name, kind = element.get("name"), _tag(element)
    to_name = (element.get("toName") or "").split(",")[0].strip()
    where = f"<{element.tag} name={name!r}>"
    if not name:
        raise ConfigError(f"a <{element.tag}> control has no name")
    if to_name not in texts:
        raise ConfigError(f"{where}: toName={to_name!r} is not a <Text> of the config (this model classifies texts)")
    if kind == "taxonomy":
        labels, multiple = _taxonomy_labels(element), True
    else:
        if (element.get("value") or "").startswith("$"):
            raise ConfigError(f"{where}: its choices come from the task ({element.get('value')}); list them as "
                              "<Choice> tags")
        labels = [_choice_name(choice, where) for choice in element.iter() if _tag(choice) == "choice"]
        multiple = (element.get("choice") or "single").lower() == "multiple"
    others = [key for text_name, key in texts.items() if text_name != to_name]
    return Control(name, to_name, kind, multiple, tuple(labels), (texts[to_name], *others))


def read_labeling_config(config: str) -> List[Control]:
    """The classification controls (<Choices>, <Taxonomy>) of a labelling config, each on a <Text>;
    `ConfigError` if it is not XML, declares a DTD (never in a Label Studio config; refused so no
    entity can expand) or has none."""
    import xml.etree.ElementTree as ET

    if "<!doctype" in config.lower() or "<!entity" in config.lower():
        raise ConfigError("declares a DTD or entities (<!DOCTYPE, <!ENTITY): a labelling config has none")
    try:
        root = ET.fromstring(config)
    except ET.ParseError as exc:
        raise ConfigError(f"is not well-formed XML: {exc}") from None
    texts = _text_objects(root)
    try:
        controls = [_control(element, texts) for element in root.iter() if _tag(element) in CLASSIFICATION_TAGS]
    except RecursionError:  # (a Taxonomy's paths are read recursively)
        raise ConfigError("is nested too deeply to be a labelling config") from None
    if not controls:
        raise ConfigError("has no <Choices> or <Taxonomy> control: this model chooses labels for a <Text>")
    return controls
