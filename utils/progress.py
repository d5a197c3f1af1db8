"""Progress bars that end at 100% and also show in logs and notebooks (stderr not a terminal).

On a terminal: a normal tqdm bar. Elsewhere tqdm would write carriage-return updates into one
endless line (or nothing, with `disable=None`); here each refresh becomes its own line, at most
every `LOG_INTERVAL_S` seconds, plus the final one.
"""
from __future__ import annotations

import sys
from typing import Optional

LOG_INTERVAL_S = 30.0


class _Lines:
    """A file for tqdm that turns each carriage-return refresh into a line."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").replace("\x1b[A", "").strip()  # (cursor-up of nested bars)
        if text:
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


def is_terminal(stream=None) -> bool:
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def progress_bar(total: Optional[int], desc: str, unit: str = "it", stream=None, leave: bool = True):
    """A tqdm bar on stderr: live on a terminal, rate-limited lines otherwise."""
    from tqdm import tqdm

    stream = stream or sys.stderr
    if is_terminal(stream):
        return tqdm(total=total, desc=desc, unit=unit, file=stream, leave=leave, dynamic_ncols=True)
    return tqdm(total=total, desc=desc, unit=unit, file=_Lines(stream), mininterval=LOG_INTERVAL_S,
                maxinterval=LOG_INTERVAL_S * 10, miniters=1, ascii=True, ncols=100, leave=True)


def finish(bar, complete: bool = True) -> None:
    """Close `bar`; a finished job shows its full count (not the last throttled refresh)."""
    if bar is None:
        return
    if complete and bar.total is not None and bar.n < bar.total:
        bar.update(bar.total - bar.n)
    bar.close()
