"""Progress of a long job on stderr, wherever stderr goes.

On a terminal: a tqdm bar. Elsewhere (log files, notebooks, CI), where tqdm would either hide
itself or fill the log with carriage returns: one line every `interval` seconds or every `step`
of the total, whichever comes first. Either way a finished job ends at 100%.
"""
from __future__ import annotations

import sys
import time
from typing import Optional, TextIO


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Count `update(n)`s towards `total` (None: unknown). Use as a context manager: leaving the
    block normally shows the final count as 100% (the total may have been an estimate, e.g. lines
    counted with blank ones); leaving it by an exception shows no completion."""

    def __init__(self, total: Optional[int] = None, desc: str = "infer", unit: str = "texts",
                 enabled: bool = True, stream: Optional[TextIO] = None, interval: float = 30.0,
                 step: float = 0.1, tty: Optional[bool] = None):
        self.total = total
        self.desc = desc
        self.unit = unit
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.interval = interval
        self.step = step
        self.n = 0
        self.start = time.monotonic()
        self.last_time = self.start
        self.last_n = 0
        self.last_total = total
        self.bar = None
        if tty is None:
            tty = bool(getattr(self.stream, "isatty", lambda: False)())
        if enabled and tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit.rstrip("s"), file=self.stream, dynamic_ncols=True)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.close(finished=exc_type is None)
        return False

    def update(self, n: int) -> None:
        self.n += n
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.monotonic()
        stepped = self.total and self.n - self.last_n >= self.step * self.total
        if stepped or now - self.last_time >= self.interval:
            self._line(now)

    def _line(self, now: float) -> None:
        elapsed = now - self.start
        rate = self.n / elapsed if elapsed > 0 else 0.0
        if self.total:
            text = f"{self.desc}: {self.n}/{self.total} {self.unit} ({100 * self.n / self.total:.0f}%)"
        else:
            text = f"{self.desc}: {self.n} {self.unit}"
        text += f", {rate:.1f} {self.unit}/s, {format_seconds(elapsed)}"
        if self.total and rate > 0 and self.n < self.total:
            text += f", {format_seconds((self.total - self.n) / rate)} left"
        self.stream.write(text + "\n")
        self.stream.flush()
        self.last_time, self.last_n, self.last_total = now, self.n, self.total

    def close(self, finished: bool = True) -> None:
        if not self.enabled:
            return
        self.enabled = False
        if finished and self.total is not None:
            self.total = self.n
        if self.bar is not None:
            if finished and self.bar.total is not None:
                self.bar.total = self.n
                self.bar.refresh()
            self.bar.close()
        elif finished and (self.n, self.total) != (self.last_n, self.last_total):
            self._line(time.monotonic())
