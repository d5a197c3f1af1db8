"""What select.py keeps while texts stream past: memory bounded by K or the pool size, never by the input.

`TopK`: the K texts of highest priority seen so far (a min-heap); `Reservoir`: a seeded uniform sample
of M texts (Algorithm R); both refuse a text already held (duplicates: the first copy kept), and
`peak` records the most entries ever held (the tests' proof that memory is bounded). `text_key` is
a text's identity for duplicates and exclusions; `read_exclusions` reads the already-labelled texts.
"""
from __future__ import annotations

import heapq
from typing import Any, Dict, Iterator, List, Optional, Set, Tuple

import numpy as np

from ..dataset.folder import parse_line
from ..errors import UserError
from ..files import iter_text_lines


def text_key(example: dict) -> int:
    """A text's (or pair's) identity: equal texts, equal keys (64-bit; within one run)."""
    return hash((example.get("text_a", ""), example.get("text_b")))


class TopK:
    """The `k` entries of highest priority offered so far; ties: the earlier offer (lower `order`) wins."""

    def __init__(self, k: int):
        self.k = int(k)
        self._heap: List[Tuple[float, int, int]] = []  # (priority, -order, key): the root is the weakest
        self._items: Dict[int, Any] = {}
        self.peak = 0

    def __len__(self) -> int:
        return len(self._heap)

    def threshold(self) -> float:
        """The priority an offer must beat to enter (-inf while not full)."""
        return self._heap[0][0] if len(self._heap) >= self.k else -np.inf

    def offer(self, priority: float, order: int, key: int, item: Any) -> bool:
        if key in self._items:
            return False
        entry = (float(priority), -int(order), key)
        if len(self._heap) < self.k:
            heapq.heappush(self._heap, entry)
        elif entry > self._heap[0]:
            del self._items[heapq.heapreplace(self._heap, entry)[2]]
        else:
            return False
        self._items[key] = item
        self.peak = max(self.peak, len(self._heap))
        return True

    def ranked(self) -> List[Tuple[float, Any]]:
        """`(priority, item)`, highest priority first (ties: earlier first)."""
        return [(p, self._items[key]) for p, _, key in sorted(self._heap, reverse=True)]


class Reservoir:
    """A uniform sample of at most `size` of the distinct entries offered, seeded (Algorithm R)."""

    def __init__(self, size: int, seed: int = 0):
        self.size = int(size)
        self.rng = np.random.default_rng(seed)
        self.seen = 0
        self._keys: List[int] = []
        self._items: List[Any] = []
        self._held: Set[int] = set()
        self.peak = 0

    def __len__(self) -> int:
        return len(self._items)

    def offer(self, key: int, item: Any) -> bool:
        if key in self._held:
            return False
        self.seen += 1
        if len(self._items) < self.size:
            slot = len(self._items)
            self._keys.append(key)
            self._items.append(item)
        else:
            slot = int(self.rng.integers(0, self.seen))
            if slot >= self.size:
                return False
            self._held.discard(self._keys[slot])
            self._keys[slot], self._items[slot] = key, item
        self._held.add(key)
        self.peak = max(self.peak, len(self._items))
        return True

    def items(self) -> List[Any]:
        return list(self._items)


def read_exclusions(path: Optional[str], pair: bool) -> Set[int]:
    """The keys of the texts in `path` (a labelled split: `text<TAB>label`, or data.txt-like lines of
    text alone; pairs: `text_a<TAB>text_b[<TAB>label]`). Errors name file:line."""
    if not path:
        return set()
    keys = set()
    for number, line in _lines(path):
        fields = line.split("\t")
        need = 2 if pair else 1
        if len(fields) < need or len(fields) > need + 1:
            layout = "text_a<TAB>text_b[<TAB>label]" if pair else "text[<TAB>label]"
            raise UserError(f"expected {layout} (texts already labelled), found {len(fields)} tab-separated fields",
                            path, number)
        example = parse_line("\t".join(fields[:need]), path, number, labelled=False, pair=pair)
        keys.add(text_key(example))
    return keys


def _lines(path: str) -> Iterator[Tuple[int, str]]:
    return iter_text_lines(path, what="--exclude_file")
