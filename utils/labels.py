"""`label.txt`: the label set and the word each label is verbalised as.

Accepted lines (blank lines are skipped, a UTF-8 BOM and CRLF are fine):

    news_car==汽车        label `news_car`, label word `汽车`
    体育                  label and label word `体育`
    科技##手机            hierarchical label `科技##手机`, label word `手机` (the last segment)

Output order: labels sorted by their names (Unicode code points), which is the order
paddlenlp's verbalizers give logits in. Every output file and the export use that order.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Dict, List

from .errors import UserError
from .files import read_text_lines

logger = logging.getLogger(__name__)

LABEL_FILE = "label.txt"


@dataclass
class LabelSet:
    """Labels in output order with their label words; `path` is where they came from."""

    label_words: Dict[str, str]
    path: str = ""
    lines: Dict[str, int] = field(default_factory=dict)

    @property
    def labels(self) -> List[str]:
        return sorted(self.label_words)

    @property
    def label_to_id(self) -> Dict[str, int]:
        return {label: index for index, label in enumerate(self.labels)}

    def verbalizer_words(self) -> Dict[str, List[str]]:
        """The `label_words` mapping paddlenlp's verbalizers take."""
        return {label: [word] for label, word in self.label_words.items()}

    def words_in_order(self) -> List[str]:
        return [self.label_words[label] for label in self.labels]


def parse_label_line(line: str, path: str, number: int):
    """Return `(label, word)` for one line of label.txt."""
    text = line.strip()
    parts = text.split("==")
    if len(parts) > 2:
        raise UserError(f"expected `label==word`, found more than one `==` in {text!r}", path, number)
    label = parts[0].strip()
    if not label:
        raise UserError(f"empty label name in {text!r}", path, number)
    if "\t" in label:
        raise UserError(f"a label name cannot contain a tab: {label!r}", path, number)
    if len(parts) == 2:
        word = parts[1].strip()
        if not word:
            raise UserError(f"empty label word for label {label!r} (write `{label}==word` or just `{label}`)", path, number)
    else:
        word = label.split("##")[-1].strip()
        if not word:
            raise UserError(f"label {label!r} ends with `##`: its last segment (the label word) is empty", path, number)
    return label, word


def read_label_file(path: str) -> LabelSet:
    """Parse label.txt strictly: duplicates, empty names/words and a single label are errors."""
    label_words: Dict[str, str] = {}
    lines: Dict[str, int] = {}
    for number, line in read_text_lines(path, what="label file"):
        label, word = parse_label_line(line, path, number)
        if label in label_words:
            raise UserError(f"duplicate label {label!r} (first defined on line {lines[label]})", path, number)
        label_words[label] = word
        lines[label] = number
    if len(label_words) < 2:
        raise UserError(f"needs at least two labels, found {len(label_words)}", path)
    by_word: Dict[str, List[str]] = {}
    for label, word in label_words.items():
        by_word.setdefault(word, []).append(label)
    for word, labels in by_word.items():
        if len(labels) > 1:
            logger.warning("%s: labels %s share the label word %r; their classifier rows start equal", path, labels, word)
    return LabelSet(label_words=label_words, path=path, lines=lines)
