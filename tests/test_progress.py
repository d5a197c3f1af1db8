"""Progress shows in log files and notebooks too (rate-limited lines), and a finished job ends at 100%."""
import io

import pytest

from utils import progress as progress_mod
from utils.progress import Progress


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(progress_mod.time, "monotonic", clock)
    return clock


def test_not_a_terminal_prints_a_line_every_tenth_and_ends_at_100_percent(clock):
    stream = io.StringIO()
    with Progress(1000, stream=stream, tty=False) as bar:
        for _ in range(100):
            clock.now += 0.1
            bar.update(10)
    lines = stream.getvalue().splitlines()
    assert [line.split(" (")[1].split(")")[0] for line in lines] == [f"{p}%" for p in range(10, 101, 10)]
    assert lines[-1].startswith("infer: 1000/1000 texts (100%), 100.0 texts/s")


def test_not_a_terminal_prints_every_interval_when_progress_is_slow(clock):
    stream = io.StringIO()
    with Progress(10_000, stream=stream, tty=False, interval=30) as bar:
        for _ in range(10):
            clock.now += 10
            bar.update(1)  # 0.01% per step: only the clock triggers lines
    lines = stream.getvalue().splitlines()
    assert [line.split(" texts")[0] for line in lines] == ["infer: 3/10000", "infer: 6/10000", "infer: 9/10000",
                                                           "infer: 10/10"]


def test_an_overestimated_total_still_ends_at_100_percent(clock):
    """Totals counted from lines include blank ones; the last line shows what was actually done."""
    stream = io.StringIO()
    with Progress(120, stream=stream, tty=False) as bar:
        bar.update(100)
    assert stream.getvalue().splitlines()[-1].startswith("infer: 100/100 texts (100%)")


def test_terminal_bar_ends_at_100_percent_with_an_overestimated_total():
    stream = io.StringIO()
    with Progress(120, stream=stream, tty=True) as bar:
        for _ in range(4):
            bar.update(25)
    assert "100%" in stream.getvalue().split("\r")[-1] and "100/100" in stream.getvalue().split("\r")[-1]


def test_failure_does_not_claim_completion(clock):
    stream = io.StringIO()
    with pytest.raises(RuntimeError):
        with Progress(1000, stream=stream, tty=False) as bar:
            bar.update(50)
            raise RuntimeError
    assert "100%" not in stream.getvalue()


def test_unknown_total_counts_texts(clock):
    stream = io.StringIO()
    with Progress(None, stream=stream, tty=False) as bar:
        clock.now += 31
        bar.update(7)
    assert stream.getvalue().splitlines() == ["infer: 7 texts, 0.2 texts/s, 0:00:31"]
