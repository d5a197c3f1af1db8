"""Long texts: which token spans of a document are read (`LongText`, `window_spans`, `head_tail_spans`)
and how the windows' logits become the document's (`aggregate`). numpy only, no tokenizer: the
caller gives each token's word id (utils/deploy/preprocess.py `DocumentWindows` does, for training
and inference alike), so every consumer cuts and aggregates through these functions.

* `truncate` (the default): the text as it always was, cut to fit by the template's rule.
* `head_tail`: one input of the first quarter and the last three quarters of the window's tokens
  (Sun et al. 2019 found head+tail best for long-text BERT classification).
* `window`: overlapping windows of the text's tokens, each a whole input with the prompt, soft
  tokens and mask, starting `stride` tokens apart, at most `max_windows` of them; the document's
  probabilities are the windows' mean, per-label max (renormalised for multi-class) or vote.

Cuts follow word boundaries: a window never starts or ends inside a word (its word pieces stay
together; a CJK character is a word), unless one word is longer than the window.
"""
from __future__ import annotations

import dataclasses
import threading
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

TRUNCATE, HEAD_TAIL, WINDOW = "truncate", "head_tail", "window"
MODES = (TRUNCATE, HEAD_TAIL, WINDOW)
MEAN, MAX, VOTE = "mean", "max", "vote"
AGGREGATIONS = (MEAN, MAX, VOTE)
DEFAULT_MAX_WINDOWS = 16
HEAD_SHARE = 4  # head_tail: the head is a quarter of the window, the tail the rest
TINY = 1e-30
EPS = 1e-7


@dataclasses.dataclass(frozen=True)
class LongText:
    """How a model reads texts longer than one input: part of the model (the spec, preprocess.json)."""

    mode: str = TRUNCATE
    stride: Optional[int] = None          # tokens between window starts (None: half the window)
    aggregation: str = MEAN
    max_windows: int = DEFAULT_MAX_WINDOWS

    @property
    def active(self) -> bool:
        return self.mode != TRUNCATE

    def stride_for(self, window: int) -> int:
        return self.stride if self.stride is not None else max(1, window // 2)

    def problem(self, window: int, multi_label: bool) -> Optional[Tuple[str, str]]:
        """`(flag, message)` when these settings cannot work for `window` text tokens per input, else None."""
        if self.mode == WINDOW and self.stride is not None and self.stride >= window:
            return "--window_stride", (f"is {self.stride}, but a window holds only {window} text tokens (the "
                                       "length minus the prompt); windows must overlap: use less than "
                                       f"{window}, or raise --max_seq_length")
        if self.mode == HEAD_TAIL and window < 2:
            return "--long_text", f"head_tail needs at least 2 text tokens per input, the prompt leaves {window}"
        if multi_label and self.aggregation == VOTE:
            return "--window_aggregation", ("vote is for multi-class models (the label most windows choose); a "
                                            "label set aggregates each label's probability: use mean or max")
        return None

    def describe(self) -> Dict[str, Any]:
        return {"mode": self.mode, "stride": self.stride, "aggregation": self.aggregation,
                "max_windows": self.max_windows}

    @classmethod
    def from_dict(cls, data, bad: Callable[[str], Exception]) -> "LongText":
        """Checked reading of `describe()`'s output (a spec or preprocess.json, maybe hand-edited)."""
        if data is None:
            return cls()
        if not isinstance(data, dict) or set(data) - {"mode", "stride", "aggregation", "max_windows"}:
            raise bad(f"long_text must be an object with mode, stride, aggregation and max_windows, got {data!r}")
        mode, stride = data.get("mode", TRUNCATE), data.get("stride")
        aggregation, max_windows = data.get("aggregation", MEAN), data.get("max_windows", DEFAULT_MAX_WINDOWS)
        if mode not in MODES or aggregation not in AGGREGATIONS:
            raise bad(f"long_text: mode must be one of {MODES} and aggregation one of {AGGREGATIONS}")
        for name, value, allowed_none in (("stride", stride, True), ("max_windows", max_windows, False)):
            if not ((value is None and allowed_none) or (isinstance(value, int) and not isinstance(value, bool)
                                                         and value > 0)):
                raise bad(f"long_text.{name} must be a positive integer, got {value!r}")
        return cls(mode=mode, stride=stride, aggregation=aggregation, max_windows=max_windows)


def word_starts(word_ids: Sequence[Optional[int]]) -> List[bool]:
    """Where a cut may fall: before token i when it starts a word; one more entry (the end) is True."""
    starts = [i == 0 or word_ids[i] is None or word_ids[i] != word_ids[i - 1] for i in range(len(word_ids))]
    return starts + [True]


def _back_to_start(starts: Sequence[bool], position: int, floor: int) -> int:
    """The last word start in (floor, position]; `position` itself when a word spans all of it."""
    cut = position
    while cut > floor and not starts[cut]:
        cut -= 1
    return cut if cut > floor else position


def window_spans(starts: Sequence[bool], window: int, stride: int, max_windows: int) -> List[Tuple[int, int]]:
    """`[start, end)` token spans of at most `window` tokens, `stride` apart (moved back to word
    starts), the last one reaching the end unless `max_windows` stops first."""
    n = len(starts) - 1
    spans: List[Tuple[int, int]] = []
    start = 0
    while True:
        end = n if start + window >= n else _back_to_start(starts, start + window, start)
        spans.append((start, end))
        if end >= n or len(spans) >= max_windows:
            return spans
        start = min(_back_to_start(starts, start + stride, start), end)


def head_tail_spans(starts: Sequence[bool], window: int) -> List[Tuple[int, int]]:
    """The head (a quarter of the window) and the tail (the rest), both cut at word starts."""
    n = len(starts) - 1
    if n <= window:
        return [(0, n)]
    head = _back_to_start(starts, max(1, window // HEAD_SHARE), 0)
    tail = n - (window - head)
    while tail < n and not starts[tail]:  # forward: the tail may only shrink
        tail += 1
    return [(0, head), (tail, n)]


class Pieces(NamedTuple):
    texts: List[str]      # what the model reads, one input each
    longer: bool          # the document had more tokens than one input holds
    capped: bool          # --max_windows stopped before its end


def pieces_of(text: str, offsets: Sequence[Tuple[int, int]], word_ids: Sequence[Optional[int]], window: int,
              long_text: LongText) -> Pieces:
    """The texts a document is read as: itself when it fits (or under truncate), else one text per
    window (head_tail: head and tail joined by a space, which word-piece tokenizers drop).
    `offsets`: each token's `[start, end)` characters in `text`."""
    n = len(offsets)
    if not long_text.active or n <= window:
        return Pieces([text], n > window, False)
    starts = word_starts(word_ids)

    def cut(span: Tuple[int, int]) -> str:
        return text[offsets[span[0]][0]:offsets[span[1] - 1][1]]

    if long_text.mode == HEAD_TAIL:
        return Pieces([" ".join(cut(span) for span in head_tail_spans(starts, window))], True, False)
    spans = window_spans(starts, window, long_text.stride_for(window), long_text.max_windows)
    return Pieces([cut(span) for span in spans], True, spans[-1][1] < n)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def aggregate(window_logits: np.ndarray, counts: Sequence[int], multi_label: bool, aggregation: str) -> np.ndarray:
    """Document logits from its windows' (`counts[i]` consecutive rows per document). One window:
    its logits unchanged. Several: the aggregated probabilities q as logits whose softmax (log q)
    or sigmoid (logit q) gives q back, so every consumer decodes them as any model's logits (a
    temperature then scales the document's distribution, and --calibrate fits it on documents).

    multi-class: mean of the softmax probabilities; max: per-label max, renormalised; vote: each
    window's argmax is one vote, q = (votes + mean probabilities) / (windows + 1), so the most voted
    label wins and ties go to the higher mean probability. Label sets: per-label mean or max of
    the sigmoid probabilities."""
    window_logits = np.asarray(window_logits, dtype=np.float64)
    labels = window_logits.shape[1] if window_logits.ndim == 2 else 0
    out = np.zeros((len(counts), labels), dtype=np.float32)
    start = 0
    for index, count in enumerate(counts):
        rows = window_logits[start:start + count]
        start += count
        if count == 1:
            out[index] = rows[0]
            continue
        if multi_label:
            probs = 1.0 / (1.0 + np.exp(-rows))
            q = np.clip(probs.max(0) if aggregation == MAX else probs.mean(0), EPS, 1 - EPS)
            out[index] = np.log(q) - np.log1p(-q)
            continue
        probs = _softmax(rows)
        if aggregation == MAX:
            q = probs.max(0)
            q = q / q.sum()
        elif aggregation == VOTE:
            votes = np.bincount(rows.argmax(-1), minlength=labels)
            q = (votes + probs.mean(0)) / (count + 1)
        else:
            q = probs.mean(0)
        out[index] = np.log(np.maximum(q, TINY))
    if start != len(window_logits):
        raise ValueError(f"{len(window_logits)} window rows, but the counts add up to {start}")
    return out


def mean_rows(rows: np.ndarray, counts: Sequence[int]) -> np.ndarray:
    """Per document, the mean of its `counts[i]` consecutive rows (a document's vector from its
    windows' vectors: utils/selection's diversity reads it; the mean keeps a window's direction when
    the others are near the average text)."""
    rows = np.asarray(rows, dtype=np.float32)
    ends = np.cumsum(counts)
    if len(rows) != (ends[-1] if len(ends) else 0):
        raise ValueError(f"{len(rows)} window rows, but the counts add up to {ends[-1] if len(ends) else 0}")
    sums = np.add.reduceat(rows, ends - np.asarray(counts), axis=0) if len(rows) else rows[:0]
    return (sums / np.asarray(counts, dtype=np.float32).reshape(-1, *([1] * (rows.ndim - 1)))).astype(np.float32)


_COUNTS_LOCK = threading.Lock()
WINDOW_REPORT_KEYS = ("texts_longer_than_one_window", "windows_read", "texts_cut_by_max_windows")


@dataclasses.dataclass
class WindowCounts:
    """What a report says about long texts: how many were longer than one input, how many inputs were read."""

    texts: int = 0
    longer: int = 0
    windows: int = 0
    capped: int = 0     # texts whose end was not read (--max_windows)

    def add(self, pieces: Sequence[Pieces]) -> None:
        counts = (len(pieces), sum(1 for p in pieces if p.longer), sum(len(p.texts) for p in pieces),
                  sum(1 for p in pieces if p.capped))
        self._add(counts)

    def merge(self, other: "WindowCounts") -> None:
        self._add(tuple(getattr(other, field.name) for field in dataclasses.fields(other)))

    def _add(self, counts: Tuple[int, ...]) -> None:
        # serve.py's model workers (--instances 2 or auto) are threads that add to their model's one
        # WindowCounts (Batcher calls its `documents`): `+=` on an attribute is not atomic across threads
        with _COUNTS_LOCK:
            for field, n in zip(dataclasses.fields(self), counts):
                setattr(self, field.name, getattr(self, field.name) + n)

    def as_dict(self) -> Dict[str, int]:
        return dict(zip(WINDOW_REPORT_KEYS, (self.longer, self.windows, self.capped)))
