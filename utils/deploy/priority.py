"""Work beside a serving model (a swap's load and warm-up) at the lowest CPU priority, without
starving the model it runs beside.

`background(nice)` marks the calling thread's work; within it only the `heavy()` steps run at
`nice`: the onnxruntime session builds and runs and the hashing, which release the GIL while they
compute. The Python steps between them (manifest, tokenizer, checks) keep the thread's own
priority. Why not the whole load at nice 19: a nice-19 thread that holds the GIL while the serving
threads keep the cores busy waits long for a core, and every serving thread waits for it (measured,
BENCHMARKS.md: a ticker thread stalled up to 3.0 s under full load, 55 ms at nice 0).

Linux only (per-thread nice values); elsewhere, or without the right to lower a nice value again
(the new model's threads would keep the low priority), nothing is reniced.
"""
from __future__ import annotations

import contextlib
import os
import threading
from typing import Iterator, Optional

__all__ = ["background", "background_nice", "heavy"]

_local = threading.local()


def _thread_ids() -> set:
    try:
        return set(os.listdir("/proc/self/task"))
    except OSError:
        return set()


def _can_renice() -> bool:
    """Whether a thread may lower its nice value again (root with CAP_SYS_NICE, or RLIMIT_NICE), tried
    on a throwaway thread: without that right the new model's threads would keep the low priority."""
    outcome = []

    def probe():
        tid = threading.get_native_id()
        try:
            old = os.getpriority(os.PRIO_PROCESS, tid)
            os.setpriority(os.PRIO_PROCESS, tid, min(old + 1, 19))
            os.setpriority(os.PRIO_PROCESS, tid, old)
            outcome.append(True)
        except (OSError, AttributeError):
            pass

    thread = threading.Thread(target=probe)
    thread.start()
    thread.join()
    return bool(outcome)


def background_nice() -> Optional[int]:
    """The nice value of the calling thread's `background()` work, None outside one."""
    return getattr(_local, "nice", None)


@contextlib.contextmanager
def background(nice: int) -> Iterator[None]:
    """The calling thread's `heavy()` steps run at `nice` until the block ends; then every thread
    started meanwhile that still has `nice` (the new sessions' pools, which inherit it from the step
    that built them) gets the calling thread's priority back, so the new model does not serve niced."""
    if background_nice() is not None or not os.path.isdir("/proc/self/task") or not _can_renice():
        yield
        return
    tid = threading.get_native_id()
    old, before = os.getpriority(os.PRIO_PROCESS, tid), _thread_ids()
    _local.nice = nice
    try:
        yield
    finally:
        _local.nice = None
        for task in [str(tid), *sorted(_thread_ids() - before)]:
            with contextlib.suppress(OSError):  # a thread that has ended meanwhile
                if os.getpriority(os.PRIO_PROCESS, int(task)) == nice:  # (not another thread's own)
                    os.setpriority(os.PRIO_PROCESS, int(task), old)


@contextlib.contextmanager
def heavy(nice: Optional[int] = None) -> Iterator[None]:
    """A CPU-heavy step that releases the GIL while it computes: at the `background()` nice of the
    calling thread (or `nice`, for a thread working for one, such as the hash thread), else as is."""
    nice = background_nice() if nice is None else nice
    if nice is None:
        yield
        return
    tid = threading.get_native_id()
    old = os.getpriority(os.PRIO_PROCESS, tid)
    os.setpriority(os.PRIO_PROCESS, tid, nice)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, tid, old)
