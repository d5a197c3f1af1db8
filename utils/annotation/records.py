"""What every reader of an annotation tool's export produces: one `Record` per task (or line), with
its annotations as `Vote`s, and the checks every text and label goes through on the way in.

A text must be valid Unicode (`utils.errors.check_text`), not empty, plain text (HTML markup is
refused unless `strip_html`: the tags are removed and entities decoded), and on one line (a tab or
line break is refused unless `normalize_whitespace`: each becomes a space), because the dataset
files are one tab-separated example per line. Texts are stored stripped, as the folder reader
reads them. A label must be a non-empty string without tabs, line breaks, spaces around it or
`==` (label.txt's separator between a label and its word). Every error names the file and the
task id (Label Studio) or the line (doccano).
"""
from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from typing import FrozenSet, List, Optional, Sequence, Tuple

from ..errors import UserError, check_text
from ..task.decoding import LEVEL_SEPARATOR, ancestors

# What splits a line somewhere: the files are read by lines, and other readers split on all of these.
LINE_BREAKS = re.compile("[\t\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
TAG = re.compile(r"<!--.*?-->|<\s*/?\s*[A-Za-z][A-Za-z0-9:-]*(\s[^<>]*)?/?\s*>", re.S)
BLOCK_TAGS = {"br", "p", "div", "li", "tr", "td", "th", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "table",
              "section", "article", "header", "footer", "blockquote", "pre", "hr"}


@dataclass(frozen=True)
class Where:
    """Where a record came from: the file, its line (doccano) and what the tool calls it (`task 12`)."""

    path: str
    name: str
    line: Optional[int] = None

    def error(self, message: str) -> UserError:
        return UserError(f"{self.name}: {message}" if self.name else message, self.path, self.line)


@dataclass(frozen=True)
class ReadOptions:
    """How a reader takes a task: its text fields, the control whose labels count, text cleaning."""

    text_key: str = "text"
    text_b_key: str = "text_b"
    from_name: Optional[str] = None
    strip_html: bool = False
    normalize_whitespace: bool = False

    def text(self, value, where: Where, field_name: str) -> str:
        return clean_text(value, where, field_name, self.strip_html, self.normalize_whitespace)


@dataclass(frozen=True)
class Vote:
    """One annotation: the labels chosen (hierarchical paths as `A##B`; a taxonomy's ancestors
    included), whether it came from a Taxonomy, and its order for `--conflict latest`."""

    labels: FrozenSet[str]
    taxonomy: bool = False
    order: Tuple = ()
    who: str = ""
    chosen: int = 0  # how many labels the annotator picked (a taxonomy path counts once)


@dataclass
class Record:
    """One task or line: its text(s) and the annotations that count (cancelled ones only counted)."""

    where: Where
    index: int
    text: str
    text_b: Optional[str] = None
    votes: List[Vote] = field(default_factory=list)
    cancelled: int = 0
    empty: int = 0  # annotations submitted with no label chosen

    @property
    def key(self) -> Tuple[str, Optional[str]]:
        return self.text, self.text_b


def _strip_tags(text: str) -> str:
    def replace(match) -> str:
        name = re.match(r"<\s*/?\s*([A-Za-z0-9]+)", match.group(0))
        return " " if name and name.group(1).lower() in BLOCK_TAGS else ""

    text = html.unescape(TAG.sub(replace, text))
    return re.sub(r"\s+", " ", text)  # as a browser shows it


def clean_text(value, where: Where, field_name: str, strip_html: bool = False,
               normalize_whitespace: bool = False) -> str:
    """The text as the dataset files hold it, or an error naming `where` and the field."""
    if not isinstance(value, str):
        raise where.error(f"`{field_name}` is {type(value).__name__ if value is not None else 'null'}, not a text")
    try:
        check_text(value, "")
    except UserError as exc:
        raise where.error(f"`{field_name}` is {exc.message}") from None
    markup = TAG.search(value)
    if markup:
        if not strip_html:
            raise where.error(f"`{field_name}` holds HTML markup ({markup.group(0)[:40]!r}): this tool classifies "
                              "plain text; --strip_html removes the tags and decodes entities (HyperText tasks "
                              "too), or give the plain text")
        value = _strip_tags(value)
    broken = LINE_BREAKS.search(value.strip())
    if broken:
        if not normalize_whitespace:
            raise where.error(f"`{field_name}` holds a {'tab' if broken.group(0) == chr(9) else 'line break'} "
                              f"(character {broken.start() + 1 + len(value) - len(value.lstrip())}): the dataset "
                              "files hold one text per line, tab-separated; --normalize_whitespace turns each tab "
                              "and line break into a space")
        value = LINE_BREAKS.sub(" ", value)
    value = value.strip()
    if not value:
        raise where.error(f"`{field_name}` is empty")
    return value


def clean_label(value, where: Where) -> str:
    """A label as a label.txt line can hold it, or an error naming `where`."""
    if not isinstance(value, str):
        raise where.error(f"label {value!r} is a {type(value).__name__}, not a label name (export label names, "
                          "not ids)")
    try:
        check_text(value, "")
    except UserError as exc:
        raise where.error(f"a label is {exc.message}") from None
    if not value.strip():
        raise where.error("has an empty label")
    if LINE_BREAKS.search(value):
        raise where.error(f"label {value!r} holds a tab or line break")
    if value != value.strip():
        raise where.error(f"label {value!r} has spaces around it; rename it in the annotation tool")
    if "==" in value:
        raise where.error(f"label {value!r} contains `==`, which label.txt uses between a label and its word")
    return value


def path_label(path, where: Where) -> str:
    """A taxonomy path (`["科技", "手机"]`) as the hierarchical label `科技##手机`."""
    if isinstance(path, str):
        path = [path]
    if not isinstance(path, list) or not path:
        raise where.error(f"a taxonomy value {path!r} is not a path (a list of names)")
    parts = [clean_label(part, where) for part in path]
    for part in parts:
        if LEVEL_SEPARATOR in part:
            raise where.error(f"taxonomy level {part!r} contains `{LEVEL_SEPARATOR}`, which separates the levels "
                              "of a hierarchical label")
    return LEVEL_SEPARATOR.join(parts)


def with_ancestors(labels: Sequence[str]) -> FrozenSet[str]:
    return frozenset(name for label in labels for name in (label, *ancestors(label)))
