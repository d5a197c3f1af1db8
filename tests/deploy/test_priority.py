"""Background work beside a serving model: its GIL-free heavy steps niced (and idle-class), its Python
steps not."""
import os
import threading

import pytest

import utils.deploy.priority as priority
from helpers import run_in_a_thread
from utils.deploy.priority import background, background_nice, heavy

LINUX = pytest.mark.skipif(not os.path.isdir("/proc/self/task") or os.nice(0) >= 19,
                           reason="per-thread nice values are Linux's (and the suite must not run at nice 19)")
NICE = 19
IDLE = pytest.mark.skipif(not hasattr(os, "SCHED_IDLE") or not priority._can_leave_idle(),
                          reason="SCHED_IDLE, and the right to leave it again, are Linux's (root or RLIMIT_NICE)")


def nice_of(tid=None):
    return os.getpriority(os.PRIO_PROCESS, tid or threading.get_native_id())


def policy_of(tid=None):
    return os.sched_getscheduler(tid or threading.get_native_id())


@LINUX
def test_background_work_runs_only_its_heavy_steps_niced_and_its_threads_get_their_priority_back():
    """Within `background()`, the Python steps keep the thread's priority (a starved thread holding the
    GIL would stall every serving thread), a `heavy()` step runs niced, a thread it starts (an
    onnxruntime pool) inherits the nice for the warm-up, and on leaving every such thread and the
    caller are back at the caller's priority."""
    def work():
        old, seen, started, release = nice_of(), {}, threading.Event(), threading.Event()

        def pool_thread():
            seen["pool_tid"] = threading.get_native_id()
            started.set()
            release.wait()

        with background(NICE):
            seen["python"] = nice_of()
            with heavy():
                seen["heavy"] = nice_of()
                pool = threading.Thread(target=pool_thread)
                pool.start()
                started.wait()
            seen["after_heavy"], seen["pool"] = nice_of(), nice_of(seen["pool_tid"])
        after = {"caller": nice_of(), "pool": nice_of(seen["pool_tid"]), "marked": background_nice()}
        release.set()
        pool.join()
        return old, seen, after

    old, seen, after = run_in_a_thread(work)
    assert old != NICE
    assert (seen["python"], seen["heavy"], seen["after_heavy"], seen["pool"]) == (old, NICE, old, NICE)
    assert after == {"caller": old, "pool": old, "marked": None}


@LINUX
@IDLE
def test_idle_background_work_runs_its_heavy_steps_under_sched_idle_and_its_threads_leave_it_after():
    """With `idle`, a heavy step also runs under SCHED_IDLE (a serving thread that wakes takes its core at
    once; at nice 19 alone it waits out the step's time slice), a thread it starts inherits the policy,
    and on leaving the block every such thread and the caller are back at the caller's policy and nice."""
    def work():
        old, seen, started, release = (nice_of(), policy_of()), {}, threading.Event(), threading.Event()

        def pool_thread():
            seen["pool_tid"] = threading.get_native_id()
            started.set()
            release.wait()

        with background(NICE, idle=True):
            seen["python"] = (nice_of(), policy_of())
            with heavy():
                seen["heavy"] = (nice_of(), policy_of())
                pool = threading.Thread(target=pool_thread)
                pool.start()
                started.wait()
            seen["after_heavy"] = (nice_of(), policy_of())
            seen["pool"] = (nice_of(seen["pool_tid"]), policy_of(seen["pool_tid"]))
        after = {"caller": (nice_of(), policy_of()), "pool": (nice_of(seen["pool_tid"]), policy_of(seen["pool_tid"]))}
        release.set()
        pool.join()
        return old, seen, after

    old, seen, after = run_in_a_thread(work)
    assert old[1] != os.SCHED_IDLE
    assert (seen["python"], seen["after_heavy"]) == (old, old)
    assert seen["heavy"] == seen["pool"] == (NICE, os.SCHED_IDLE)
    assert after == {"caller": old, "pool": old}


@LINUX
def test_without_the_right_to_leave_sched_idle_the_heavy_steps_are_only_reniced(monkeypatch):
    """Where a thread could not return from SCHED_IDLE (no CAP_SYS_NICE, RLIMIT_NICE too low), the new
    model's threads would stay idle-class: the steps then run at nice 19 under the thread's own policy."""
    monkeypatch.setattr(priority, "_can_leave_idle", lambda: False)

    def work():
        with background(NICE, idle=True):
            with heavy():
                return nice_of(), policy_of()

    assert run_in_a_thread(work) == (NICE, run_in_a_thread(policy_of))


@LINUX
def test_a_heavy_step_outside_background_work_is_not_reniced():
    """Serving's own session runs go through `heavy()` too: outside a background block it does nothing."""
    def work():
        with heavy():
            return nice_of(), background_nice()

    assert run_in_a_thread(work) == (run_in_a_thread(nice_of), None)


def test_without_the_right_to_restore_a_priority_nothing_is_reniced(monkeypatch):
    """Where a thread cannot lower its nice value again (no CAP_SYS_NICE), niceness would stick to the
    new model's threads: the work then runs at its normal priority, heavy steps included."""
    monkeypatch.setattr(priority, "_can_renice", lambda: False)

    def work():
        with background(NICE):
            with heavy():
                return nice_of(), background_nice()

    assert run_in_a_thread(work) == (run_in_a_thread(nice_of), None)


@LINUX
def test_a_background_load_builds_hashes_and_warms_up_niced_and_reads_its_files_at_its_own_priority(
        trained, monkeypatch):
    """A real export loaded and run as a swap does: the onnxruntime session build, the model file's
    hash (its own thread) and the runs at the background nice; the tokenizer's construction (Python,
    holding the GIL) at the thread's own; no thread of the process left niced afterwards."""
    import onnxruntime

    import utils.deploy.bundle as bundle
    import utils.deploy.predictor as predictor
    from utils.deploy.predictor import ExportedClassifier

    seen = []
    real_session, real_sha, real_preprocessor = onnxruntime.InferenceSession, bundle.sha256_file, predictor.PromptPreprocessor

    class Session(real_session):
        def run(self, *args, **kwargs):
            seen.append(("run", nice_of(), policy_of()))
            return super().run(*args, **kwargs)

    def session(*args, **kwargs):
        seen.append(("build", nice_of(), policy_of()))
        return Session(*args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", session)
    monkeypatch.setattr(bundle, "sha256_file",  # the model file's hash (the small files' are Python work)
                        lambda path: seen.append((os.path.basename(path), nice_of(), policy_of())) or real_sha(path))
    monkeypatch.setattr(predictor, "PromptPreprocessor",
                        lambda *args: seen.append(("tokenizer", nice_of(), policy_of())) or real_preprocessor(*args))
    export = os.path.join(trained[1], "export")

    def priorities():
        return {tid: (nice_of(int(tid)), policy_of(int(tid))) for tid in os.listdir("/proc/self/task")}

    def load():
        before = priorities()
        with background(NICE, idle=idle):
            model = ExportedClassifier(export, device="cpu", num_threads=2)
            model.logits([{"text_a": "苹果"}])
        return (nice_of(), policy_of()), before, priorities()

    idle = hasattr(os, "SCHED_IDLE") and priority._can_leave_idle()  # else only niced (the test above)
    low = (NICE, os.SCHED_IDLE if idle else run_in_a_thread(policy_of))
    old, before, after = run_in_a_thread(load)
    assert ("model.onnx", *low) in seen and ("tokenizer", *old) in seen
    assert {step: rest for step, *rest in seen if step in ("build", "run")} == {"build": list(low), "run": list(low)}
    assert [tid for tid, level in after.items() if level != before.get(tid, old)] == []
