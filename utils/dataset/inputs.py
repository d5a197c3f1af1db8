"""Input files of texts to classify, read in chunks so memory does not grow with the file.

Layouts: `text`, or `text_a<TAB>text_b` for pair models; either may carry a trailing gold label
column (the test.txt layout). The first line decides: a trailing column counts as a gold label
only when it is one of the model's labels. Every later line must have the same layout; a line that
does not is a `file:line` error. For multi-label and hierarchical models the gold column lists
labels separated by commas (`l1,l2`), each one of the model's.
"""
from __future__ import annotations

import itertools
from typing import Iterator, List, Optional, Sequence, Tuple

from .folder import describe_tabs, parse_line
from ..task.decoding import LABEL_SEPARATOR, MULTI_CLASS
from ..errors import UserError
from ..files import iter_text_lines
from .labels import known_labels, parse_label_field


class InputFile:
    """An opened input file whose layout has been read from its first line.

    `chunks(size)` then yields `(examples, gold)` lists of at most `size` lines each, in file
    order; `gold` is the list of gold label names, or None when the file has none.
    """

    def __init__(self, path: str, pair: bool, labels: Sequence[str], task_type: str = MULTI_CLASS):
        self.path = path
        self.pair = pair
        self.labels = list(labels)
        self.task_type = task_type
        self._label_set = set(self.labels)
        self._label_to_id = {label: i for i, label in enumerate(self.labels)}
        self._lines = iter_text_lines(path, what="input file")
        try:
            self._first = next(self._lines, None)
            if self._first is None:
                raise UserError("has no texts", path)
            self.has_gold = self._has_gold(*self._first)
        except BaseException:
            self.close()
            raise
        self.first_line = self._first[0]
        n_texts = 2 if pair else 1
        self.n_fields = n_texts + self.has_gold
        self.layout = "`" + "<TAB>".join((["text_a", "text_b"] if pair else ["text"])
                                         + (["gold label"] if self.has_gold else [])) + "`"

    def _has_gold(self, number: int, line: str) -> bool:
        try:
            parse_line(line, self.path, number, labelled=False, pair=self.pair)
            return False
        except UserError as unlabelled_error:
            try:
                example = parse_line(line, self.path, number, labelled=True, pair=self.pair)
            except UserError:
                raise unlabelled_error from None
            if not self._is_gold(example["label"]):
                what = ("lists only the model's labels, separated by commas" if self.task_type != MULTI_CLASS
                        else "is one of the model's labels")
                raise UserError(f"{unlabelled_error.message} (a last column counts as a gold label only if it "
                                f"{what}: {known_labels(self.labels)})", self.path, number) from None
            return True

    def _is_gold(self, text: str) -> bool:
        if self.task_type == MULTI_CLASS:
            return text in self._label_set
        parts = [part.strip() for part in text.split(LABEL_SEPARATOR)]
        return bool(text) and all(part in self._label_set for part in parts)

    def parse(self, number: int, line: str) -> Tuple[dict, Optional[str]]:
        """One line in the file's layout -> `(example, gold label or None)`."""
        n_fields = line.count("\t") + 1
        if n_fields != self.n_fields:
            raise UserError(f"expected {self.layout} as on line {self.first_line}, found {describe_tabs(n_fields)}",
                            self.path, number)
        example = parse_line(line, self.path, number, labelled=self.has_gold, pair=self.pair)
        if not self.has_gold:
            return example, None
        gold = example.pop("label")
        if self.task_type != MULTI_CLASS:
            # file:line errors; then the labels in output order, ancestors included, as train.py writes them
            vector = parse_label_field(gold, self._label_to_id, self.path, number, self.task_type)
            return example, LABEL_SEPARATOR.join(label for label, on in zip(self.labels, vector) if on)
        if gold not in self._label_set:
            raise UserError(f"gold label {gold!r} is not one of the model's labels ({known_labels(self.labels)}); "
                            f"line {self.first_line} has a gold label column, so every line needs one",
                            self.path, number)
        return example, gold

    def close(self) -> None:
        """Close the file (also done when `chunks` ends, normally or by an error)."""
        self._lines.close()

    def chunks(self, size: int, numbered: bool = False) -> Iterator[tuple]:
        """`(examples, gold)` per chunk; `numbered`: `(examples, gold, line numbers)` (select.py)."""
        examples: List[dict] = []
        gold: List[str] = []
        numbers: List[int] = []
        try:
            for number, line in itertools.chain([self._first], self._lines):
                example, label = self.parse(number, line)
                examples.append(example)
                gold.append(label)
                numbers.append(number)
                if len(examples) == size:
                    yield (examples, (gold if self.has_gold else None)) + ((numbers,) if numbered else ())
                    examples, gold, numbers = [], [], []  # drop this generator's references before reading on
            self._first = None
            if examples:
                yield (examples, (gold if self.has_gold else None)) + ((numbers,) if numbered else ())
        finally:
            self.close()
