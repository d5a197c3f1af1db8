"""`label.txt`: the label set and the word each label is verbalised as.

Accepted lines (blank lines are skipped, a UTF-8 BOM and CRLF are fine):

    news_car==汽车        label `news_car`, label word `汽车`
    体育                  label and label word `体育`
    科技##手机            hierarchical label `科技##手机`, label word `手机` (the last segment)
    news_car==汽车|轿车   label word `汽车`; `轿车` is an alternative the label-word checker ranks
                          (`python -m utils.label_words`)

Output order: labels sorted by their names (Unicode code points), which is the order
paddlenlp's verbalizers give logits in. Every output file and the export use that order.

The task type adds rules: multi-label and hierarchical labels cannot contain `,` (data lines list
labels separated by commas), and a hierarchical label's parent path must be a label too
(`科技##手机` needs a line `科技`). `parse_label_field` reads a data line's label column.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Dict, List, Union

from ..task.decoding import HIERARCHICAL, LABEL_SEPARATOR, LEVEL_SEPARATOR, MULTI_CLASS, ancestors, parent_path
from ..errors import UserError
from ..files import read_text_lines

logger = logging.getLogger(__name__)

LABEL_FILE = "label.txt"


@dataclass
class LabelSet:
    """Labels in output order with their label words; `path` is where they came from."""

    label_words: Dict[str, str]
    path: str = ""
    lines: Dict[str, int] = field(default_factory=dict)
    alternatives: Dict[str, List[str]] = field(default_factory=dict)  # label.txt's `w1|w2|...`, w1 first

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


def empty_level_error(label: str, path: str, number: int) -> UserError:
    return UserError(f"label path {label!r} has an empty level (write `A##B`, each level named)", path, number)


def has_empty_level(label: str) -> bool:
    return any(not part.strip() for part in label.split(LEVEL_SEPARATOR))


def parse_label_line(line: str, path: str, number: int, task_type: str = MULTI_CLASS):
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
    if task_type == HIERARCHICAL and has_empty_level(label):  # (`体育##` too: before its word is looked at)
        raise empty_level_error(label, path, number)
    if len(parts) == 2:
        word = parts[1].strip()
        if not word:
            raise UserError(f"empty label word for label {label!r} (write `{label}==word` or just `{label}`)", path, number)
    else:
        word = label.split("##")[-1].strip()
        if not word:
            raise UserError(f"label {label!r} ends with `##`: its last segment (the label word) is empty", path, number)
    return label, word


def read_label_file(path: str, task_type: str = MULTI_CLASS) -> LabelSet:
    """Parse label.txt strictly: duplicates, empty names/words and a single label are errors, and the
    task type's rules (module docstring)."""
    label_words: Dict[str, str] = {}
    lines: Dict[str, int] = {}
    alternatives: Dict[str, List[str]] = {}
    for number, line in read_text_lines(path, what="label file"):
        label, word = parse_label_line(line, path, number, task_type)
        if "|" in word:  # `w1|w2|...`: the first is the label word, the others candidates for the checker
            words = [w.strip() for w in word.split("|")]
            if not all(words):
                raise UserError(f"empty alternative in {word!r} (write `{label}==w1|w2`)", path, number)
            word, alternatives[label] = words[0], words
        if label in label_words:
            raise UserError(f"duplicate label {label!r} (first defined on line {lines[label]})", path, number)
        if task_type != MULTI_CLASS and LABEL_SEPARATOR in label:
            raise UserError(f"label {label!r} contains `{LABEL_SEPARATOR}`, which separates labels on a "
                            f"--task_type {task_type} data line; rename it", path, number)
        label_words[label] = word
        lines[label] = number
    if len(label_words) < 2:
        raise UserError(f"needs at least two labels, found {len(label_words)}", path)
    if task_type == HIERARCHICAL:
        for label in label_words:
            parent = parent_path(label)
            if parent is not None and parent not in label_words:
                raise UserError(f"the parent path {parent!r} of {label!r} is not in {LABEL_FILE}: hierarchical labels "
                                f"list every node of the tree (add a line `{parent}`)", path, lines[label])
        if not any(parent_path(label) for label in label_words):
            logger.warning("%s: no label path has `##`: a hierarchy of one level is plain multi-label", path)
    by_word: Dict[str, List[str]] = {}
    for label, word in label_words.items():
        by_word.setdefault(word, []).append(label)
    for word, labels in by_word.items():
        if len(labels) > 1:
            logger.warning("%s: labels %s share the label word %r; their classifier rows start equal", path, labels, word)
    return LabelSet(label_words=label_words, path=path, lines=lines, alternatives=alternatives)


def known_labels(labels: List[str], limit: int = 20) -> str:
    return ", ".join(labels[:limit]) + (" ..." if len(labels) > limit else "")


def parse_label_field(text: str, label_to_id: Dict[str, int], path: str, number: int,
                      task_type: str = MULTI_CLASS) -> Union[int, List[float]]:
    """A data line's label column: the label's id (multi-class), or for multi-label and hierarchical
    tasks the multi-hot vector (floats, `label_to_id` order) of its comma-separated labels; a
    hierarchical line's ancestors count as listed (upstream lists them; consistent decoding needs them)."""
    text = text.strip()
    def known() -> str:  # only when reporting an error
        return f"(known: {known_labels(list(label_to_id))})"

    if task_type == MULTI_CLASS:
        if text not in label_to_id:
            hint = ""
            if LABEL_SEPARATOR in text and all(part.strip() in label_to_id for part in text.split(LABEL_SEPARATOR)):
                hint = "; several labels on one line need --task_type multi-label (or hierarchical)"
            raise UserError(f"label {text!r} is not in {LABEL_FILE} {known()}{hint}", path, number)
        return label_to_id[text]
    if not text:
        raise UserError(f"no label after the tab (a --task_type {task_type} line lists one or more labels: "
                        "`text<TAB>label1,label2`)", path, number)
    vector = [0.0] * len(label_to_id)
    seen = set()
    for part in text.split(LABEL_SEPARATOR):
        label = part.strip()
        if not label:
            raise UserError(f"empty label between commas in {text!r}", path, number)
        if label not in label_to_id:
            if task_type == HIERARCHICAL and has_empty_level(label):
                raise empty_level_error(label, path, number)
            hint = "; labels are separated by an ASCII comma `,`, not `，`" if "，" in label else ""
            raise UserError(f"label {label!r} is not in {LABEL_FILE} {known()}{hint}", path, number)
        if label in seen:
            raise UserError(f"label {label!r} appears twice in {text!r}", path, number)
        seen.add(label)
        vector[label_to_id[label]] = 1.0
        if task_type == HIERARCHICAL:
            for ancestor in ancestors(label):
                vector[label_to_id[ancestor]] = 1.0
    return vector
