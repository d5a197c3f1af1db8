"""The dataset directory: train/dev/test/data .txt files, read strictly.

    train.txt, dev.txt, test.txt   text<TAB>label              (single sentences)
                                   text_a<TAB>text_b<TAB>label (sentence pairs)
                                   label: `l1,l2,...` for --task_type multi-label / hierarchical
    data.txt                       text  or  text_a<TAB>text_b (no label; optional)
    label.txt                      see utils/dataset/labels.py

Examples are plain dicts in the form paddlenlp templates take: `{"text_a", ["text_b"], "labels"}`
with `labels` the label's index in `LabelSet.labels` (multi-class), or the multi-hot vector of its
labels (floats in that order: multi-label, hierarchical; read by `labels.parse_label_field`). Nothing here imports paddle, so infer.py
can use it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional

from ..errors import UserError
from ..files import read_text_lines
from ..task.decoding import MULTI_CLASS
from .labels import LABEL_FILE, LabelSet, parse_label_field, read_label_file

SPLIT_FILES = {"train": "train.txt", "dev": "dev.txt", "test": "test.txt", "data": "data.txt"}


def _fields_error(n_fields: int, labelled: bool, pair: Optional[bool]) -> str:
    if labelled:
        expected = {None: "`text<TAB>label` or `text_a<TAB>text_b<TAB>label`",
                    False: "`text<TAB>label` (as on the first line of train.txt)",
                    True: "`text_a<TAB>text_b<TAB>label` (as on the first line of train.txt)"}[pair]
    else:
        expected = {None: "`text` or `text_a<TAB>text_b`", False: "one text per line (no tab)",
                    True: "`text_a<TAB>text_b`"}[pair]
    return f"expected {expected}, found {describe_tabs(n_fields)}"


def describe_tabs(n_fields: int) -> str:
    return {1: "no tab", 2: "1 tab"}.get(n_fields, f"{n_fields - 1} tabs")


def parse_line(line: str, path: str, number: int, labelled: bool, pair: Optional[bool],
               label_to_id: Optional[Dict[str, int]] = None, task_type: str = MULTI_CLASS) -> dict:
    """Turn one line into an example dict; `pair=None` accepts either layout. Without `label_to_id`
    a labelled line keeps its label column as text (`label`)."""
    fields = line.split("\t")
    n_text = len(fields) - (1 if labelled else 0)
    allowed = {None: (1, 2), False: (1,), True: (2,)}[pair]
    if n_text not in allowed:
        raise UserError(_fields_error(len(fields), labelled, pair), path, number)
    example = {"text_a": fields[0].strip()}
    if n_text == 2:
        example["text_b"] = fields[1].strip()
    for key in ("text_a", "text_b"):
        if key in example and not example[key]:
            raise UserError(f"empty {'text' if n_text == 1 else key}", path, number)
    if labelled:
        label = fields[-1].strip()
        if label_to_id is not None:
            example["labels"] = parse_label_field(label, label_to_id, path, number, task_type)
        else:
            example["label"] = label
    return example


def read_examples(path: str, labelled: bool, pair: Optional[bool] = None,
                  label_to_id: Optional[Dict[str, int]] = None, what: str = "data file",
                  task_type: str = MULTI_CLASS) -> List[dict]:
    """Read a whole file; every line must have the same layout as the first."""
    examples = []
    for number, line in read_text_lines(path, what=what):
        example = parse_line(line, path, number, labelled, pair, label_to_id, task_type)
        if pair is None:
            pair = "text_b" in example
        examples.append(example)
    return examples


@dataclass
class DatasetDir:
    """The parsed dataset directory. `test`/`data` are None where the file is absent."""

    path: str
    labels: LabelSet
    train: List[dict]
    dev: List[dict]
    test: Optional[List[dict]]
    data: Optional[List[dict]]
    is_pair: bool
    task_type: str = MULTI_CLASS

    def gold_names(self, examples: List[dict]) -> List[str]:
        """The gold label column of `examples` as written in the files (`l1,l2` for label sets)."""
        labels = self.labels.labels
        if self.task_type == MULTI_CLASS:
            return [labels[e["labels"]] for e in examples]
        return [",".join(label for label, on in zip(labels, e["labels"]) if on) for e in examples]


def split_path(data_dir: str, split: str) -> str:
    return os.path.join(data_dir, SPLIT_FILES[split])


def load_dataset_dir(data_dir: str, need_train: bool = True, need_dev: bool = True,
                     need_test: bool = False, task_type: str = MULTI_CLASS) -> DatasetDir:
    """Read label.txt and the split files the run needs (missing optional files are None)."""
    if not data_dir or not os.path.isdir(data_dir):
        raise UserError("data directory not found (set --data_dir to a folder with train.txt, dev.txt, "
                        "label.txt, and optionally test.txt and data.txt)", data_dir or "--data_dir")
    label_set = read_label_file(os.path.join(data_dir, LABEL_FILE), task_type)
    label_to_id = label_set.label_to_id
    loaded: Dict[str, Optional[List[dict]]] = {}
    pair: Optional[bool] = None
    for split, needed in (("train", need_train), ("dev", need_dev), ("test", need_test)):
        path = split_path(data_dir, split)
        if not os.path.exists(path) and not needed:
            loaded[split] = None
            continue
        examples = read_examples(path, labelled=True, pair=pair, label_to_id=label_to_id, what=f"{split} file",
                                 task_type=task_type)
        if not examples:
            if needed:
                raise UserError(f"{split} file has no examples", path)
            examples = None
        elif pair is None:
            pair = "text_b" in examples[0]
        loaded[split] = examples
    data_path = split_path(data_dir, "data")
    loaded["data"] = (read_examples(data_path, labelled=False, pair=pair, what="data file")
                      if os.path.exists(data_path) else None)
    if pair is None and loaded["data"]:
        pair = "text_b" in loaded["data"][0]
    return DatasetDir(path=data_dir, labels=label_set, train=loaded["train"] or [], dev=loaded["dev"] or [],
                      test=loaded["test"], data=loaded["data"], is_pair=bool(pair), task_type=task_type)
