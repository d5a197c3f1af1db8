"""doccano's JSONL for text classification, read into `Record`s and written line by line.

One JSON object per line: `{"id": 1, "text": "...", "label": ["体育"]}` (doccano 1.x and later;
`labels`, and the older `annotations: [{"label": "体育"}]`, too). Several labels are a multi-label
example; hierarchical labels are written `科技##手机` (their ancestors are implied). An empty
`label` list is a text nobody labelled. A sentence pair has `text_b` beside `text`. Labels given as
ids (numbers) or as spans (`[[0, 2, "PER"]]`, sequence labelling) are refused, naming the line.
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

from ..errors import UserError
from ..files import iter_text_lines
from .records import ReadOptions, Record, Vote, Where, clean_label

LABEL_KEYS = ("label", "labels", "annotations", "cats")


def read_doccano(path: str, options: ReadOptions) -> List[Record]:
    """Every line of a doccano JSONL export, in file order."""
    lines = list(iter_text_lines(path, what="annotation file"))
    if not lines:
        raise UserError("is empty: no lines", path)
    records = []
    for index, (number, line) in enumerate(lines):
        item = _parse(line, path, number, last=index == len(lines) - 1)
        ident = item.get("id")
        where = Where(path, f"id {ident}" if ident is not None else "", number)
        records.append(_record(item, index, where, options))
    return records


def _parse(line: str, path: str, number: int, last: bool) -> Dict[str, Any]:
    try:
        item = json.loads(line)
    except RecursionError:
        raise UserError("nests its JSON too deeply to be a doccano line (brackets opened thousands of times)", path,
                        number) from None
    except json.JSONDecodeError as exc:
        if number == 1 and line.lstrip().startswith("["):
            raise UserError("starts a JSON list: a Label Studio JSON export, not doccano's JSON Lines (one object "
                            "per line): use --format label-studio", path, number) from None
        truncated = " (the file ends mid-object: truncated?)" if last and not line.rstrip().endswith("}") else ""
        raise UserError(f"not a JSON object: {exc.msg} (column {exc.colno}){truncated}", path, number) from None
    if isinstance(item, list):
        raise UserError("a JSON list: a Label Studio JSON export, not doccano's JSON Lines (one object per line): "
                        "use --format label-studio", path, number)
    if not isinstance(item, dict):
        raise UserError(f"a JSON {type(item).__name__}, not an object with `text` and `label`", path, number)
    return item


def _record(item: Dict[str, Any], index: int, where: Where, options: ReadOptions) -> Record:
    if options.text_key not in item:
        keys = ", ".join(sorted(map(str, item))) or "none"
        raise where.error(f"no `{options.text_key}` (its keys: {keys}); --text_key names the text field")
    text = options.text(item[options.text_key], where, options.text_key)
    text_b = None
    if item.get(options.text_b_key) is not None:
        text_b = options.text(item[options.text_b_key], where, options.text_b_key)
    record = Record(where, index, text, text_b)
    labels = _labels(item, where)
    if labels:
        record.votes.append(Vote(frozenset(labels), order=("", index), chosen=len(set(labels))))
    return record


def _labels(item: Dict[str, Any], where: Where) -> List[str]:
    key = next((k for k in LABEL_KEYS if k in item), None)
    value = item.get(key) if key else None
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if key == "cats" and isinstance(value, dict):  # spaCy-style {"label": 1.0}
        value = [label for label, on in value.items() if on]
    if not isinstance(value, list):
        raise where.error(f"`{key}` is a {type(value).__name__}, not a list of labels")
    labels = []
    for entry in value:
        if key == "annotations" and isinstance(entry, dict):
            entry = entry.get("label")
        if isinstance(entry, (list, dict)):
            raise where.error(f"`{key}` holds spans ({json.dumps(entry, ensure_ascii=False)[:40]}): sequence "
                              "labelling (NER), not text classification")
        if isinstance(entry, (int, float)) and not isinstance(entry, bool):
            raise where.error(f"`{key}` holds the label id {entry}, not a label name: export the labels by name")
        labels.append(clean_label(entry, where))
    return labels


def doccano_line(text, labels: List[str], extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """One doccano JSONL object: `text` (and `text_b` for a pair) and `label`."""
    out: Dict[str, Any] = {}
    if isinstance(text, tuple):
        out["text"], out["text_b"] = text
    else:
        out["text"] = text
    out["label"] = list(labels)
    out.update(extra or {})
    return out
