"""Work beside a serving model (a swap's load and warm-up) at the lowest CPU priority, without
starving the model it runs beside.

`background(nice)` marks the calling thread's work; within it only the `heavy()` steps run at
`nice`: the onnxruntime session builds and runs and the hashing, which release the GIL while they
compute. The Python steps between them (manifest, tokenizer, checks) keep the thread's own
priority. Why not the whole load at nice 19: a nice-19 thread that holds the GIL while the serving
threads keep the cores busy waits long for a core, and every serving thread waits for it (measured,
BENCHMARKS.md: a ticker thread stalled up to 3.0 s under full load, 55 ms at nice 0).

`background(nice, idle=True)` also puts the heavy steps under Linux's SCHED_IDLE policy: a nice-19
thread that holds a core keeps it for its time slice when a serving thread wakes up, a SCHED_IDLE one
is preempted at once (measured, BENCHMARKS.md: session builds beside a serving model raised its p99
1.09-1.32x at nice 19, 1.02-1.18x under SCHED_IDLE).

Linux only (per-thread nice values and policies); elsewhere, or without the right to lower a nice
value again (the new model's threads would keep the low priority), nothing is reniced; without the
right to leave SCHED_IDLE again, the heavy steps are only reniced.
"""
from __future__ import annotations

import contextlib
import os
import threading
from typing import Callable, Iterator, Optional, Tuple

__all__ = ["background", "background_level", "background_nice", "heavy"]

_local = threading.local()
_IDLE = getattr(os, "SCHED_IDLE", None)


def _thread_ids() -> set:
    try:
        return set(os.listdir("/proc/self/task"))
    except OSError:
        return set()


def _allowed(attempt: Callable[[], None]) -> bool:
    """Whether `attempt` (a change of the calling thread's priority and back) succeeds, tried on a
    throwaway thread so that no thread that stays is touched."""
    outcome = []

    def probe():
        try:
            attempt()
            outcome.append(True)
        except (OSError, AttributeError):
            pass

    thread = threading.Thread(target=probe)
    thread.start()
    thread.join()
    return bool(outcome)


def _renice_and_back() -> None:
    tid = threading.get_native_id()
    old = os.getpriority(os.PRIO_PROCESS, tid)
    os.setpriority(os.PRIO_PROCESS, tid, min(old + 1, 19))
    os.setpriority(os.PRIO_PROCESS, tid, old)


def _idle_and_back() -> None:
    policy = os.sched_getscheduler(0)
    os.sched_setscheduler(0, _IDLE, os.sched_param(0))
    os.sched_setscheduler(0, policy, os.sched_param(0))


def _can_renice() -> bool:
    """Whether a thread may lower its nice value again (root with CAP_SYS_NICE, or RLIMIT_NICE): without
    that right the new model's threads would keep the low priority."""
    return _allowed(_renice_and_back)


def _can_leave_idle() -> bool:
    """Whether a thread may go from SCHED_IDLE back to its own policy (root, or RLIMIT_NICE allowing its
    nice value): without that the new model's threads would stay idle-class."""
    return _IDLE is not None and _allowed(_idle_and_back)


def background_level() -> Optional[Tuple[int, bool]]:
    """`(nice, idle)` of the calling thread's `background()` work, None outside one."""
    return getattr(_local, "level", None)


def background_nice() -> Optional[int]:
    """The nice value of the calling thread's `background()` work, None outside one."""
    level = background_level()
    return None if level is None else level[0]


def _lower(tid: int, level: Tuple[int, bool]) -> None:
    os.setpriority(os.PRIO_PROCESS, tid, level[0])
    if level[1]:
        with contextlib.suppress(OSError):  # (probed by background(); then the step runs only niced)
            os.sched_setscheduler(tid, _IDLE, os.sched_param(0))


def _restore(tid: int, nice: int, policy: Optional[int]) -> None:
    """`tid` back at `nice` and, when `policy` is given, out of SCHED_IDLE into `policy`."""
    with contextlib.suppress(OSError):  # a thread that has ended meanwhile
        if policy is not None and os.sched_getscheduler(tid) == _IDLE:
            os.sched_setscheduler(tid, policy, os.sched_param(0))
        os.setpriority(os.PRIO_PROCESS, tid, nice)


@contextlib.contextmanager
def background(nice: int, idle: bool = False) -> Iterator[None]:
    """The calling thread's `heavy()` steps run at `nice` (and, with `idle`, under SCHED_IDLE where a
    thread may leave it again) until the block ends; then every thread started meanwhile that still has
    `nice` (the new sessions' pools, which inherit it and the policy from the step that built them) gets
    the calling thread's priority and policy back, so the new model does not serve niced."""
    if background_level() is not None or not os.path.isdir("/proc/self/task") or not _can_renice():
        yield
        return
    tid = threading.get_native_id()
    old, before = os.getpriority(os.PRIO_PROCESS, tid), _thread_ids()
    policy = os.sched_getscheduler(tid) if idle and _IDLE is not None else None
    # only from the ordinary policies: a real-time thread's own could not be set back with priority 0
    idle = policy in (os.SCHED_OTHER, getattr(os, "SCHED_BATCH", os.SCHED_OTHER)) and _can_leave_idle()
    _local.level = (nice, idle)
    try:
        yield
    finally:
        _local.level = None
        for task in [str(tid), *sorted(_thread_ids() - before)]:
            with contextlib.suppress(OSError):  # a thread that has ended meanwhile
                if os.getpriority(os.PRIO_PROCESS, int(task)) == nice:  # (not another thread's own)
                    _restore(int(task), old, policy if idle else None)


@contextlib.contextmanager
def heavy(level: Optional[Tuple[int, bool]] = None) -> Iterator[None]:
    """A CPU-heavy step that releases the GIL while it computes: at the `background()` level of the
    calling thread (or `level`, for a thread working for one, such as the hash thread), else as is."""
    level = background_level() if level is None else level
    if level is None:
        yield
        return
    tid = threading.get_native_id()
    old = os.getpriority(os.PRIO_PROCESS, tid)
    policy = os.sched_getscheduler(tid) if level[1] else None
    _lower(tid, level)
    try:
        yield
    finally:
        _restore(tid, old, policy)
