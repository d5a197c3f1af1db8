"""`annotate.py export`: texts (data.txt layout) or labelled splits (train.txt layout) -> tasks for an
annotation tool, streamed: the input is read in chunks (`utils.dataset.inputs.InputFile`, errors
naming file:line), each chunk classified by `predict` when a model is given, and every task written
as soon as it is made (a JSON list opened, items appended, closed: never the whole list in memory),
into a temporary file renamed over the output only when complete.

A labelled line's labels become the task's annotation (Label Studio: `annotations`; doccano:
`label`), so importing the file gives the same examples back. With a model, each task carries its
prediction: Label Studio as a pre-annotation (`predictions`, utils/annotation/label_studio.py),
doccano as `label` when the line has no labels of its own, else as `predicted_label`.
No Paddle and no model here: `predict` (e.g. `utils.Classifier.predict`) is the caller's.
"""
from __future__ import annotations

import json
from typing import Callable, Iterator, List, Optional, Sequence

from ..dataset.inputs import InputFile
from ..errors import UserError
from ..files import atomic_path, iter_text_lines, write_json_atomic, write_text_atomic
from ..task.decoding import LABEL_SEPARATOR, MULTI_CLASS
from . import label_studio as ls
from .doccano import doccano_line

Predict = Callable[[List], List]


def detect_pair(path: str, labels: Sequence[str], task_type: str) -> bool:
    """Whether a file holds pairs, from its first line: no tab -> a text; two -> a pair and labels;
    one -> `text<TAB>labels` when the last column lists known labels, else a pair."""
    first = next(iter_text_lines(path, what="input file"), None)
    if first is None:
        raise UserError("has no texts", path)
    fields = first[1].split("\t")
    if len(fields) != 2:
        return len(fields) > 2
    known = set(labels)
    column = fields[1].strip()
    parts = [column] if task_type == MULTI_CLASS else [p.strip() for p in column.split(LABEL_SEPARATOR)]
    return not (known and all(part in known for part in parts))


def open_inputs(paths: Sequence[str], labels: Sequence[str], task_type: str, pair: Optional[bool]) -> List[InputFile]:
    """Each file opened and its layout read from its first line (all of them pairs or none)."""
    if pair is None:
        pair = detect_pair(paths[0], labels, task_type)
    opened: List[InputFile] = []
    try:
        for path in paths:
            opened.append(InputFile(path, pair, labels, task_type))
    except BaseException:
        for input_file in opened:
            input_file.close()
        raise
    return opened


class TaskWriter:
    """Tasks written one at a time: a JSON list (Label Studio) or JSON lines (doccano)."""

    def __init__(self, fp, fmt: str):
        self.fp, self.json_list, self.count = fp, fmt == "label-studio", 0
        if self.json_list:
            fp.write("[")

    def write(self, item: dict) -> None:
        text = json.dumps(item, ensure_ascii=False)
        if self.json_list:
            self.fp.write(("," if self.count else "") + "\n" + text)
        else:
            self.fp.write(text + "\n")
        self.count += 1

    def close(self) -> None:
        if self.json_list:
            self.fp.write("\n]\n")


def _names(prediction, task_type: str, order: dict) -> List[str]:
    names = [prediction.label] if task_type == MULTI_CLASS else list(prediction.names)
    return sorted(names, key=lambda name: order.get(name, len(order)))


def make_tasks(chunk: List[dict], gold: Optional[List[str]], predictions: Optional[List], fmt: str,
               task_type: str, model_version: str, order: dict) -> Iterator[dict]:
    """The tasks of one chunk, in input order."""
    for i, example in enumerate(chunk):
        text = (example["text_a"], example["text_b"]) if "text_b" in example else example["text_a"]
        labels = gold[i].split(LABEL_SEPARATOR) if gold is not None and task_type != MULTI_CLASS else \
            ([gold[i]] if gold is not None else None)
        prediction = predictions[i] if predictions is not None else None
        if fmt == "doccano":
            predicted = _names(prediction, task_type, order) if prediction is not None else None
            if labels is not None:
                yield doccano_line(text, labels, {"predicted_label": predicted} if predicted is not None else None)
            else:
                yield doccano_line(text, predicted or [])
            continue
        task = ls.task(text, [ls.prediction(prediction, task_type, model_version)] if prediction is not None else None)
        if labels is not None:
            task["annotations"] = [{"result": ls.result(labels, task_type), "was_cancelled": False,
                                    "ground_truth": False}]
        yield task


def export_tasks(inputs: List[InputFile], output: str, fmt: str, task_type: str, labels: Sequence[str],
                 predict: Optional[Predict] = None, model_version: str = "", chunk_size: int = 8192) -> dict:
    """Write every input's tasks into `output` (atomically); return the counts."""
    order = {label: i for i, label in enumerate(labels)}
    counts = {"tasks": 0, "annotated": 0, "pre_annotated": 0}
    try:
        with atomic_path(output) as tmp:
            with open(tmp, "w", encoding="utf-8") as fp:
                writer = TaskWriter(fp, fmt)
                for input_file in inputs:
                    for chunk, gold in input_file.chunks(chunk_size):
                        texts = [(e["text_a"], e["text_b"]) if "text_b" in e else e["text_a"] for e in chunk]
                        predictions = predict(texts) if predict is not None else None
                        for task in make_tasks(chunk, gold, predictions, fmt, task_type, model_version, order):
                            writer.write(task)
                        counts["tasks"] += len(chunk)
                        counts["annotated"] += len(chunk) if gold is not None else 0
                        counts["pre_annotated"] += len(chunk) if predictions is not None else 0
                writer.close()
    finally:
        for input_file in inputs:
            input_file.close()
    return counts


def write_config(path: str, fmt: str, labels: Sequence[str], task_type: str, pair: bool) -> None:
    """Label Studio: the labelling config XML; doccano: its label import file (a list of `{"text"}`)."""
    if fmt == "label-studio":
        write_text_atomic(path, ls.labeling_config(labels, task_type, pair))
    else:
        write_json_atomic(path, [{"text": label} for label in labels])
