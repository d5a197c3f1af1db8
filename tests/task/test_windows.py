"""utils/task/windows.py: where windows are cut and how their logits become a document's."""
import sys
import threading

import numpy as np
import pytest

from utils.task.windows import (LongText, Pieces, WindowCounts, aggregate, head_tail_spans, mean_rows, pieces_of, window_spans,
                                word_starts)


def test_windows_cover_the_text_overlap_and_respect_the_bound():
    starts = [True] * 101  # 100 one-token words
    spans = window_spans(starts, window=30, stride=20, max_windows=16)
    assert spans[0] == (0, 30) and spans[-1][1] == 100
    assert all(b[0] - a[0] == 20 for a, b in zip(spans, spans[1:]))
    assert all(end - start <= 30 for start, end in spans)
    assert window_spans(starts, 30, 20, max_windows=2) == [(0, 30), (20, 50)]
    assert window_spans([True] * 11, 30, 20, 16) == [(0, 10)]


def test_cuts_never_split_a_word():
    # words of 3 pieces: a cut may only fall at multiples of 3
    word_ids = [i // 3 for i in range(60)]
    starts = word_starts(word_ids)
    for window, stride in ((10, 5), (7, 4), (16, 9)):
        for start, end in window_spans(starts, window, stride, 100):
            assert start % 3 == 0 and (end % 3 == 0 or end == 60) and end - start <= window
    head, tail = head_tail_spans(starts, 16)
    assert head[0] == 0 and head[1] % 3 == 0 and tail[0] % 3 == 0 and tail[1] == 60
    assert (head[1] - head[0]) + (tail[1] - tail[0]) <= 16


def test_a_word_longer_than_the_window_is_cut_rather_than_looping():
    starts = word_starts([0] * 50)  # one word of 50 pieces
    spans = window_spans(starts, 10, 5, 100)
    assert spans[-1][1] == 50 and all(b[0] > a[0] for a, b in zip(spans, spans[1:]))


def test_pieces_are_the_text_itself_when_it_fits_or_under_truncate():
    text = "abcdef"
    offsets = [(i, i + 1) for i in range(6)]
    ids = list(range(6))
    assert pieces_of(text, offsets, ids, 10, LongText("window")).texts == [text]
    truncated = pieces_of(text, offsets, ids, 4, LongText())
    assert truncated.texts == [text] and truncated.longer
    windows = pieces_of(text, offsets, ids, 4, LongText("window", stride=2))
    assert windows.texts == ["abcd", "cdef"] and windows.longer and not windows.capped
    assert pieces_of(text, offsets, ids, 4, LongText("window", stride=2, max_windows=1)).capped
    assert pieces_of(text, offsets, ids, 4, LongText("head_tail")).texts == ["a def"]


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_aggregation_of_probabilities():
    logits = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.2, 0.7], [0.1, 0.3, 0.6], [0.5, 0.25, 0.25]]))
    counts = [3, 1]
    mean = softmax(aggregate(logits, counts, False, "mean"))
    assert np.allclose(mean[0], [0.3, 0.7 / 3, 1.4 / 3], atol=1e-6)
    assert np.allclose(mean[1], [0.5, 0.25, 0.25], atol=1e-6)  # one window: its own logits
    assert np.allclose(aggregate(logits, counts, False, "mean")[1], logits[3])
    top = softmax(aggregate(logits, counts, False, "max"))[0]
    assert np.allclose(top, np.array([0.7, 0.3, 0.7]) / 1.7, atol=1e-6)
    vote = softmax(aggregate(logits, counts, False, "vote"))[0]
    assert vote.argmax() == 2 and np.isclose(vote.sum(), 1)
    # a tie in votes goes to the higher mean probability
    tie = softmax(aggregate(np.log(np.array([[0.9, 0.1], [0.4, 0.6]])), [2], False, "vote"))[0]
    assert tie.argmax() == 0


def test_label_sets_aggregate_each_label():
    logits = np.array([[2.0, -3.0], [-2.0, -1.0]])
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    assert np.allclose(sig(aggregate(logits, [2], True, "max"))[0], sig(logits).max(0), atol=1e-5)
    assert np.allclose(sig(aggregate(logits, [2], True, "mean"))[0], sig(logits).mean(0), atol=1e-5)
    with pytest.raises(ValueError):
        aggregate(logits, [3], True, "mean")


def test_settings_that_cannot_work_are_named():
    assert LongText("window", stride=30).problem(30, False)[0] == "--window_stride"
    assert LongText("window", stride=29).problem(30, False) is None
    assert LongText("window", aggregation="vote").problem(30, True)[0] == "--window_aggregation"
    assert LongText().problem(0, False) is None


@pytest.mark.parametrize("data", [{"mode": "slide"}, {"mode": "window", "stride": 0}, {"max_windows": "8"},
                                  {"mode": "window", "extra": 1}, [1]])
def test_a_damaged_description_is_refused(data):
    with pytest.raises(ValueError):
        LongText.from_dict(data, ValueError)


def test_the_description_round_trips():
    settings = LongText("window", stride=7, aggregation="max", max_windows=3)
    assert LongText.from_dict(settings.describe(), ValueError) == settings
    assert LongText.from_dict(None, ValueError) == LongText()


def test_a_documents_vector_is_the_mean_of_its_windows_vectors():
    rows = np.array([[1.0, 0.0], [3.0, 2.0], [5.0, 5.0], [0.0, 4.0], [2.0, 0.0], [4.0, 2.0]], dtype=np.float32)
    np.testing.assert_allclose(mean_rows(rows, [2, 1, 3]), [[2.0, 1.0], [5.0, 5.0], [2.0, 2.0]])
    assert mean_rows(rows[:0], []).shape == (0, 2)
    with pytest.raises(ValueError):
        mean_rows(rows, [2, 2])


def test_window_counts_shared_by_threads_lose_no_count():
    """serve.py's worker threads (and --instances auto's second session) add to one WindowCounts; with
    the interpreter switching threads every microsecond, an unlocked `+=` loses updates here."""
    counts, start = WindowCounts(), threading.Barrier(8)
    piece = [Pieces(["a", "b", "c"], True, False)]

    def add():
        start.wait()
        for _ in range(3000):
            counts.add(piece)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=add) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert (counts.texts, counts.longer, counts.windows, counts.capped) == (24000, 24000, 72000, 0)
    other = WindowCounts(texts=1, longer=1, windows=2, capped=1)
    counts.merge(other)
    assert counts.as_dict() == {"texts_longer_than_one_window": 24001, "windows_read": 72002,
                                "texts_cut_by_max_windows": 1}
