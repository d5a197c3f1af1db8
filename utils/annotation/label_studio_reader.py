"""Label Studio's exports read into `Record`s: the JSON export (a list of tasks, each with `data` and
`annotations`; the pre-1.0 `completions` too) and the JSON-MIN export (one flat object per
annotation, the control's name as a key).

Results of a Choices control (`{"choices": [...]}`: one label, or several for multi-label) and of a
Taxonomy control (`{"taxonomy": [["科技", "手机"], ...]}`: hierarchical paths, ancestors implied)
are labels. A result of any other control (Labels spans for NER, TextArea, Rating, ...) is an
error naming the task unless `--from_name` picks the classification control, and so are results
of two classification controls. Cancelled (skipped) annotations are counted, never used; the
task's `predictions` (a model's) are ignored.
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Tuple

from ..errors import UserError
from ..files import BOM, open_for_reading
from .records import ReadOptions, Record, Vote, Where, clean_label, path_label, with_ancestors

CLASSIFICATION = ("choices", "taxonomy")
SPANS = ("labels", "hypertextlabels", "paragraphlabels", "rectanglelabels", "polygonlabels", "keypointlabels",
         "brushlabels", "ellipselabels", "timeserieslabels")
MIN_META = {"id", "annotator", "annotation_id", "created_at", "updated_at", "lead_time", "agreement",
            "was_cancelled", "predictions", "meta", "project", "file_upload", "inner_id"}


def read_json_text(path: str, fmt_hint: str) -> Any:
    """The file's JSON, or one paragraph saying what it is instead (JSON Lines, truncated, not JSON)."""
    with open_for_reading(path, "annotation file") as fp:
        raw = fp.read()
    if raw.startswith(BOM):
        raw = raw[len(BOM):]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise UserError("not valid UTF-8: export the file again from the annotation tool", path, line) from None
    if not text.strip():
        raise UserError("is empty: no tasks", path)
    try:
        return json.loads(text)
    except RecursionError:
        raise UserError(f"nests its JSON too deeply to be {fmt_hint}'s export (brackets opened thousands of times)",
                        path) from None
    except json.JSONDecodeError as exc:
        first = text.lstrip().split("\n", 1)[0]
        if exc.msg == "Extra data" and _is_json_object(first):
            raise UserError(f"holds one JSON object per line (JSON Lines, as doccano exports), not {fmt_hint}'s "
                            "list of tasks: use --format doccano", path, exc.lineno) from None
        started = text.lstrip()[:1] in ("[", "{") and exc.pos > len(text) - len(text.lstrip())
        if started and (exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated")
                        or not text.rstrip().endswith(("]", "}"))):
            raise UserError(f"ends before its JSON is complete (truncated? {exc.msg}); export it again", path,
                            exc.lineno) from None
        raise UserError(f"is not JSON: {exc.msg} (column {exc.colno}); give the JSON export of {fmt_hint}", path,
                        exc.lineno) from None


def _is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except (ValueError, RecursionError):
        return False


def read_label_studio(path: str, options: ReadOptions) -> List[Record]:
    """Every task of a Label Studio JSON or JSON-MIN export, in file order."""
    tasks = read_json_text(path, "Label Studio")
    if isinstance(tasks, dict):
        if "data" not in tasks:
            raise UserError("holds one JSON object, not Label Studio's list of tasks (a doccano line? use "
                            "--format doccano)", path)
        tasks = [tasks]
    if not isinstance(tasks, list):
        raise UserError(f"holds a JSON {type(tasks).__name__}, not Label Studio's list of tasks", path)
    if not tasks:
        raise UserError("holds no tasks (an empty list)", path)
    for index, task in enumerate(tasks):
        if not isinstance(task, dict):
            raise UserError(f"item {index + 1} is a {type(task).__name__}, not a task object", path)
    reader = _Reader(path, options)
    if any("data" in task or "annotations" in task or "completions" in task for task in tasks):
        return [reader.task(index, task) for index, task in enumerate(tasks)]
    return reader.json_min(tasks)


class _Reader:
    def __init__(self, path: str, options: ReadOptions):
        self.path, self.options = path, options
        self.control: Optional[Tuple[str, Where]] = None  # the classification control seen first

    def where(self, task: dict, index: int) -> Where:
        ident = task.get("id")
        return Where(self.path, f"task {ident}" if ident is not None else f"task #{index + 1} (no id)")

    def texts(self, data: Any, where: Where) -> Tuple[str, Optional[str]]:
        options = self.options
        if not isinstance(data, dict):
            raise where.error("has no `data` object (is this a Label Studio export?)")
        if options.text_key not in data:
            keys = ", ".join(sorted(map(str, data))) or "none"
            hint = (" (a HyperText task: --text_key html --strip_html takes its text)"
                    if any(k in data for k in ("html", "hypertext")) else "")
            raise where.error(f"its data has no `{options.text_key}` (its keys: {keys}); --text_key names the text "
                              f"field{hint}")
        text = options.text(data[options.text_key], where, options.text_key)
        text_b = None
        if data.get(options.text_b_key) is not None:
            text_b = options.text(data[options.text_b_key], where, options.text_b_key)
        return text, text_b

    def task(self, index: int, task: dict) -> Record:
        where = self.where(task, index)
        text, text_b = self.texts(task.get("data"), where)
        record = Record(where, index, text, text_b)
        annotations = task.get("annotations", task.get("completions")) or []
        if not isinstance(annotations, list):
            raise where.error("`annotations` is not a list")
        for position, annotation in enumerate(annotations):
            if not isinstance(annotation, dict):
                raise where.error(f"annotation {position + 1} is not an object")
            if annotation.get("was_cancelled") or annotation.get("skipped"):
                record.cancelled += 1
                continue
            vote = self.vote(annotation.get("result"), where, annotation, position)
            if vote is None:
                record.empty += 1
            else:
                record.votes.append(vote)
        return record

    def vote(self, results: Any, where: Where, annotation: dict, position: int) -> Optional[Vote]:
        if results is None:
            results = []
        if not isinstance(results, list):
            raise where.error(f"annotation {annotation.get('id', position + 1)}: `result` is not a list")
        labels: List[str] = []
        taxonomy = False
        for item in results:
            kind, value, from_name = self.classification(item, where, annotation.get("id", position + 1))
            if kind is None:
                continue
            if kind == "taxonomy":
                taxonomy = True
                paths = value.get("taxonomy")
                if not isinstance(paths, list):
                    raise where.error(f"control {from_name!r}: `taxonomy` is not a list of paths")
                labels += [path_label(path, where) for path in paths]
            else:
                choices = value.get("choices")
                if isinstance(choices, str):
                    choices = [choices]
                if not isinstance(choices, list):
                    raise where.error(f"control {from_name!r}: `choices` is not a list of labels")
                labels += [clean_label(choice, where) for choice in choices]
        if not labels:
            return None
        order = (str(annotation.get("updated_at") or annotation.get("created_at") or ""), position)
        chosen = len(set(labels))
        return Vote(with_ancestors(labels) if taxonomy else frozenset(labels), taxonomy, order,
                    str(annotation.get("completed_by", "")), chosen)

    def classification(self, item: Any, where: Where, annotation_id) -> Tuple[Optional[str], dict, str]:
        """`(choices|taxonomy, value, from_name)` of a result, `(None, ...)` for another control --from_name skips."""
        if not isinstance(item, dict) or not isinstance(item.get("value"), dict):
            raise where.error(f"annotation {annotation_id}: a result is not an object with a `value`")
        kind = str(item.get("type", "")).lower()
        from_name = str(item.get("from_name", ""))
        wanted = self.options.from_name
        if wanted is not None and from_name != wanted:
            return None, {}, from_name
        if kind not in CLASSIFICATION:
            what = ("span labels (NER), not a text's class" if kind in SPANS
                    else "not a classification (Choices or Taxonomy)")
            skip = "" if wanted is not None else "; --from_name NAME picks the classification control"
            raise where.error(f"annotation {annotation_id} has a `{kind or '?'}` result (from_name {from_name!r}): "
                              f"{what}; this tool imports Choices and Taxonomy{skip}")
        self.check_control(from_name, where)
        return kind, item["value"], from_name

    def check_control(self, from_name: str, where: Where) -> None:
        if self.control is None:
            self.control = (from_name, where)
        elif self.control[0] != from_name:
            raise where.error(f"has results of the control {from_name!r}, and {self.control[1].name} of "
                              f"{self.control[0]!r}: choose the one to import with --from_name")

    def json_min(self, rows: List[dict]) -> List[Record]:
        """JSON-MIN: one row per annotation (rows of one task share its id), the control's name as a key."""
        control = self.options.from_name or self.min_control(rows)
        records: Dict[Any, Record] = {}
        for index, row in enumerate(rows):
            where = self.where(row, index)
            text, text_b = self.texts(row, where)
            key = row.get("id", ("#", index))
            record = records.get(key)
            if record is None:
                record = records[key] = Record(where, index, text, text_b)
            elif record.key != (text, text_b):
                raise where.error(f"has another text than {record.where.name}'s row before it (same id)")
            value = row.get(control) if control else None
            if value is None:
                continue
            if isinstance(value, (str, list)) and not (isinstance(value, list) and value and isinstance(value[0], dict)):
                value = {"choices": [value] if isinstance(value, str) else value}
            if not isinstance(value, dict):
                raise where.error(f"`{control}` is span labels or another control's result, not Choices or "
                                  "Taxonomy: this tool imports text classification")
            kind = "taxonomy" if "taxonomy" in value else "choices"
            vote = self.vote([{"type": kind, "value": value, "from_name": control}], where, row, index)
            if vote is None:
                record.empty += 1
            else:
                record.votes.append(vote)
        return list(records.values())

    def min_control(self, rows: List[dict]) -> Optional[str]:
        texts = {self.options.text_key, self.options.text_b_key}
        keys = sorted({key for row in rows for key in row if key not in MIN_META and key not in texts})
        if len(keys) > 1:
            raise UserError(f"a JSON-MIN export whose rows have the fields {', '.join(keys)} besides the text: name "
                            "the classification control with --from_name", self.path)
        return keys[0] if keys else None
