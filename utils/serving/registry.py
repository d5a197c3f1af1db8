"""The models a service serves, by name, and their zero-downtime replacement.

Each name is a `Slot`: one loaded model (a `utils.Classifier`), the `Engine` its requests are
computed by in the name's micro-batcher, and its version. A request takes the slot of its model once
(`ModelRegistry.get`) and holds it (`Slot.hold`) until it is answered, so it is answered by one
version whatever happens meanwhile.

A swap (`ModelRegistry.swap`: `POST /admin/models/NAME`, or the watcher finding a new export where
a model was loaded from) loads the new export in a thread of its own while the old one serves:
every file against the manifest's sha256 (`Classifier`), the export's parity record (the gate
export.py passed), the label set against the old one's, then a parity sample (probe texts whose
probabilities must have the model's shape, be finite and, multi-class, sum to 1) that also warms it
up (one run of one text, one of 8). Only then, in one step on the event loop, the slot is
replaced: new requests go to the new version, and the old one retires once the requests holding it
are answered (its memory is freed). Both versions' requests share the name's batcher, its queue and
workers, so a switch changes nothing else for the clients in flight (batcher.py `Engine`). A load or
check that fails leaves the old version serving and says why (422). One swap per name at a time: a
second one while one loads is refused with 409 (not queued: its caller learns at once, and a queued
export could be stale by the time it ran). Shutdown during a swap abandons it: the new model is never served.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from typing import Callable, Dict, List, Optional

import numpy as np

from ..deploy.priority import background
from ..errors import UserError
from .batcher import Batcher, Engine, RunningBatches
from .config import ServiceConfig
from .metrics import Metrics, ModelMetrics
from .ml_backend import model_version
from .requests import RequestError, overloaded

__all__ = ["ModelRegistry", "Slot", "check_new_model", "export_identity"]

logger = logging.getLogger(__name__)

PROBE_TEXTS = 8  # texts of the parity sample


class Slot:
    """One version of a named model in service: its classifier, the name's batcher, the engine its
    requests run on there, and its version. `users` counts the requests holding it; once replaced, it
    retires when the last one lets go."""

    def __init__(self, name: str, export_path: str, classifier, batcher: Batcher, engine: Engine, identity=None):
        self.name, self.export_path, self.classifier, self.batcher = name, export_path, classifier, batcher
        self.engine = engine
        self.version = model_version(name, classifier.model)
        self.identity = identity  # what export_identity() said of export_path when it was loaded
        self.loaded_at = time.time()
        self.labels_changed: Optional[dict] = None  # set when this version brought another label set
        self.users = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @contextlib.contextmanager
    def hold(self):
        self.users += 1
        self._idle.clear()
        try:
            yield self
        finally:
            self.users -= 1
            if not self.users:
                self._idle.set()

    async def submit(self, examples: List[dict], max_seq_length: Optional[int] = None) -> np.ndarray:
        """`examples`' probabilities, computed by this version (hold the slot meanwhile)."""
        return await self.batcher.submit(examples, max_seq_length, self.engine)

    async def retire(self) -> None:
        """Once the requests holding this version are answered (the batcher serves the next version on)."""
        await self._idle.wait()


def export_identity(path: str):
    """What tells one complete export at `path` from the next: the directory's and its manifest's
    inode and mtime (export.py lands a new export by one rename, so both change at once). None when
    there is no complete export there (no manifest.json)."""
    from ..deploy.bundle import resolve_export_dir
    from ..deploy.format import MANIFEST_FILE

    try:
        directory = resolve_export_dir(path)
        folder, manifest = os.stat(directory), os.stat(os.path.join(directory, MANIFEST_FILE))
    except (UserError, OSError):
        return None
    return folder.st_dev, folder.st_ino, manifest.st_ino, manifest.st_mtime_ns, manifest.st_size


def check_new_model(new, old, allow_label_change: bool) -> Optional[dict]:
    """Refuse (UserError) a new classifier whose export's parity gate did not pass, or whose labels,
    task type or text pairs differ from the old one's unless `allow_label_change`; then the
    announcement /labels shows (None when they are the same)."""
    parity = new.model.manifest.get("parity")
    if isinstance(parity, dict) and parity.get("passed") is False:
        raise UserError("its manifest records a failed parity gate; export again", new.export_dir)
    before = {"labels": list(old.labels), "task_type": old.task_type, "pair": old.pair}
    after = {"labels": list(new.labels), "task_type": new.task_type, "pair": new.pair}
    if before == after:
        return None
    changed = ", ".join(key for key in before if before[key] != after[key])
    if not allow_label_change:
        raise UserError(f"its {changed} differ from the served model's ({before} -> {after}); a different label "
                        "set under the same name needs serve.py --allow_label_change (or \"allow_label_change\": "
                        "true in the request), and clients that expect the old labels will see new ones",
                        new.export_dir)
    return {"changed": changed, "previous": before}


def parity_sample(classifier, batch_size: int) -> None:
    """Probe texts through the new model (also its warm-up: one text, then 8; a full batch would cost
    the model serving beside it as many texts' compute, measured in p99 under load): each row
    must be the labels' probabilities, finite, in [0, 1] and, multi-class, summing to 1."""
    model = classifier.model
    for count in (1, min(PROBE_TEXTS, batch_size)):
        examples = [{"text_a": str(i), **({"text_b": str(i)} if classifier.pair else {})} for i in range(count)]
        features = model.encoder().encode(examples)
        probs = np.asarray(model.decoder.probabilities(model.run(features, batch_size=len(features))))
        problem = None
        if probs.shape != (count, len(classifier.labels)):
            problem = f"answered shape {probs.shape} for {count} texts and {len(classifier.labels)} labels"
        elif not np.isfinite(probs).all() or probs.min() < 0 or probs.max() > 1:
            problem = "answered probabilities that are not finite or not in [0, 1]"
        elif not model.decoder.multi_label and not np.allclose(probs.sum(axis=1), 1, atol=1e-3):
            problem = "answered rows that do not sum to 1"
        if problem:
            raise UserError(f"the parity sample failed: the model {problem}", classifier.export_dir)


SWAP_NICE = 19  # a swap's heavy steps run at the lowest CPU priority beside the model that serves
SWAP_IDLE = True  # and under SCHED_IDLE: a serving thread that wakes up takes their core at once


def low_priority():
    """A swap's load and warm-up as background work (utils/deploy/priority.py): its session builds,
    runs and hashing at nice SWAP_NICE, its Python steps at the thread's own priority (a starved
    thread holding the GIL would stall the serving threads), the new model's threads back at the
    thread's priority afterwards. A swap's hashing, session builds and warm-up take ~30% of 2 cores
    for about a second (BENCHMARKS.md, swaps under load): niced and idle-class, they get what the serving
    model leaves, and give a core back the moment a serving thread wakes."""
    return background(SWAP_NICE, idle=SWAP_IDLE)


def load_checked(load: Callable, old, allow_label_change: bool, batch_size: int):
    """A swap's new model, `load()`ed, checked against the served `old` (labels, task type) and through the
    parity sample (its warm-up too), at low priority beside the model that serves: `(classifier,
    announcement)`. One process's swaps (ModelRegistry) and the Ray Rollout actor's both call this."""
    with low_priority():
        classifier = load()
        announcement = check_new_model(classifier, old, allow_label_change)
        parity_sample(classifier, batch_size)
    return classifier, announcement


def in_thread(fn: Callable, name: str) -> asyncio.Future:
    """`fn()` in a daemon thread of its own (never one the process must wait for at exit: a load
    abandoned by shutdown does not hold the exit), its outcome as a future of the running loop."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def settle(result, exc):
        if not future.done():
            future.set_exception(exc) if exc is not None else future.set_result(result)

    def run():
        try:
            result, exc = fn(), None
        except BaseException as error:  # noqa: BLE001 (handed to the awaiting coroutine)
            result, exc = None, error
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            loop.call_soon_threadsafe(settle, result, exc)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


class ModelRegistry:
    """The served models by name (`ServiceConfig.exports`, in order: the first is the default),
    their swaps and the watcher. Names are fixed at start-up; versions change."""

    def __init__(self, config: ServiceConfig, metrics: Metrics):
        self.config, self.metrics = config, metrics
        self.slots: Dict[str, Slot] = {}
        self.errors: Dict[str, str] = {}  # name -> why its first load failed
        self.loading: Dict[str, dict] = {}  # name -> the swap in progress {"path", "since"}
        self.last_swap: Dict[str, dict] = {}  # name -> the last swap's outcome
        self.attempted: Dict[str, object] = {}  # name -> the export identity the watcher last tried
        self.closing = False
        self._shutdown: Optional[asyncio.Event] = None
        self._retiring: set = set()
        # every model runs on the same cores: a batch goes to the split path whenever any other one runs
        # (utils/serving/batcher.py RunningBatches)
        self.running_batches = RunningBatches()

    @property
    def names(self) -> List[str]:
        return list(self.config.exports)

    @property
    def default(self) -> str:
        return self.names[0]

    def load(self, path: str):
        """A `utils.Classifier` for `path` with the service's options (in a thread: it hashes and loads),
        and its `split_model`: with `--instances auto` on CPU, the split path's session, else None."""
        from ..deploy.classifier import Classifier

        classifier = Classifier(path, **self.config.classifier_options())
        split = self.config.split_threads(classifier.device)
        # --instances auto: the split path's session (a batch beside another runs on half the threads)
        classifier.split_model = classifier.model.with_threads(split) if split else None
        return classifier

    def start(self, name: str, classifier, path: Optional[str] = None) -> Slot:
        """Serve `classifier` as `name` from now on (on the event loop: the name's batcher starts with
        its first version; later versions join it)."""
        config = self.config
        path = path if path is not None else config.exports[name]
        version = model_version(name, classifier.model)
        split_model = getattr(classifier, "split_model", None)
        metrics = ModelMetrics(self.metrics, name, version)
        old = self.slots.get(name)
        if old is not None:  # one queue for every version of a name (batcher.py `Engine`)
            batcher, engine = old.batcher, Engine(classifier.model, split_model, metrics)
            batcher.engine = engine  # (so the batcher holds no version it no longer serves)
        else:
            batcher = Batcher(classifier.model, config.max_batch_size, config.max_wait_ms, config.max_queue, metrics,
                              split_by_length=classifier.device == "cpu",
                              workers=config.workers(classifier.device, split_path=split_model is not None),
                              split_model=split_model, running=self.running_batches)
            batcher.start()
            engine = batcher.engine
        slot = Slot(name, path, classifier, batcher, engine, export_identity(path))
        self.slots[name] = slot  # the swap itself: one assignment on the event loop
        self.metrics.model_info.labels(name, slot.version).set(1)
        self.metrics.model_ready.labels(name).set(1)
        if old is not None:
            if old.version != slot.version:
                self.metrics.model_info.remove(name, old.version)
            task = asyncio.get_running_loop().create_task(old.retire())
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
        self.metrics.ready.set(int(len(self.slots) == len(self.names) and not self.errors))
        return slot

    def get(self, name: Optional[str], field: str = "model") -> Slot:
        """The slot serving `name` (None: the only model), or the 4xx/503 that says why there is none."""
        if name is None:
            if len(self.names) > 1:
                raise RequestError(422, field, f"is required: this service serves {len(self.names)} models "
                                               f"({', '.join(self.names)})")
            name = self.default
        if not isinstance(name, str):
            raise RequestError(422, field, f"must be a string (a model's name), got {type(name).__name__}")
        if name not in self.config.exports:
            raise RequestError(404, field, f"no model {name!r} here; this service serves {', '.join(map(repr, self.names))}")
        if name in self.errors:
            raise RequestError(503, "service", f"the model could not be loaded: {self.errors[name]}")
        slot = self.slots.get(name)
        if slot is None:
            raise overloaded("the model is still loading; retry shortly")
        if slot.batcher.closing:
            raise overloaded("the service is shutting down")
        return slot

    async def swap(self, name: str, path: str, allow_label_change: bool = False, trigger: str = "admin") -> dict:
        """Load, verify, sample and warm up the export at `path`, then serve it as `name` (see the
        module's docstring); the old version serves until then, and on if anything fails."""
        old = self.get(name, "name")
        if self.closing:
            raise overloaded("the service is shutting down")
        if name in self.loading:
            self.metrics.swaps.labels(name, "conflict").inc()
            loading = self.loading[name]
            raise RequestError(409, "name", f"a new export for {name!r} is loading already ({loading['path']}, for "
                                            f"{time.time() - loading['since']:.0f} s); retry once it is done")
        self.loading[name] = {"path": path, "since": time.time(), "trigger": trigger}
        started = time.monotonic()
        try:
            classifier, announcement = await self._load_checked(name, path, old, allow_label_change)
            slot = self.start(name, classifier, path)
            slot.labels_changed = announcement and {**announcement, "previous_version": old.version,
                                                    "at": time.time()}
        finally:
            del self.loading[name]
        outcome = {"model": name, "model_version": slot.version, "previous_version": old.version,
                   "path": path, "trigger": trigger, "seconds": round(time.monotonic() - started, 3),
                   "outcome": "swapped", "labels_changed": slot.labels_changed}
        self.last_swap[name] = outcome
        self.metrics.swaps.labels(name, "swapped").inc()
        logger.info("%s now serves %s (was %s; %s, %.1f s)", name, slot.version, old.version, trigger,
                    outcome["seconds"])
        return outcome

    async def _load_checked(self, name: str, path: str, old: Slot, allow_label_change: bool):
        loading = in_thread(lambda: load_checked(lambda: self.load(path), old.classifier, allow_label_change,
                                                 self.config.max_batch_size), f"load-{name}")
        stop = asyncio.ensure_future(self._shutdown_event().wait())
        await asyncio.wait({loading, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not loading.done() or self.closing:
            loading.cancel()  # (the thread's result, when it comes, is dropped)
            self._failed(name, path, "abandoned", "the service is shutting down", old)
            raise overloaded(f"the service is shutting down: the new export for {name!r} was not put in service")
        try:
            return loading.result()
        except Exception as exc:  # noqa: BLE001 (any failure keeps the old version: reported, never raised as a 500)
            reason = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
            self._failed(name, path, "refused", reason, old)
            raise RequestError(422, "path", f"the new export was refused and {name!r} still serves {old.version}: "
                                            f"{reason}") from None

    def _failed(self, name: str, path: str, outcome: str, reason: str, old: Slot) -> None:
        self.metrics.swaps.labels(name, outcome).inc()
        self.last_swap[name] = {"model": name, "path": path, "outcome": outcome, "reason": reason,
                                "model_version": old.version, "at": time.time()}
        logger.error("%s: the export at %s was %s, %s still serves: %s", name, path, outcome, old.version, reason)

    def _shutdown_event(self) -> asyncio.Event:
        if self._shutdown is None:
            self._shutdown = asyncio.Event()
        return self._shutdown

    def begin_shutdown(self) -> None:
        """Shutdown has begun (SIGTERM): swaps in progress are abandoned, no new one starts. On the loop."""
        self.closing = True
        self._shutdown_event().set()

    # The watcher

    def changed_exports(self) -> List[str]:
        """The names whose export path holds a complete export other than the one served (and than
        the one last tried there), and that are not loading already."""
        changed = []
        for name, slot in self.slots.items():
            identity = export_identity(slot.export_path)
            if (identity is not None and identity != slot.identity and identity != self.attempted.get(name)
                    and name not in self.loading):
                self.attempted[name] = identity
                changed.append(name)
        return changed

    async def scan(self) -> List[dict]:
        """Once: swap every model whose export path holds a new complete export (what the watcher
        does every --watch_interval_s; tests call it). Each outcome, failures included."""
        if self.closing:
            return []
        names = self.changed_exports()
        results = await asyncio.gather(*(self.swap(name, self.slots[name].export_path, self.config.allow_label_change,
                                                   "watch") for name in names), return_exceptions=True)
        return [self.last_swap.get(name, {"model": name, "outcome": str(result)}) for name, result in zip(names, results)]

    async def watch(self, interval: float) -> None:
        while not self.closing:
            await asyncio.sleep(interval)
            try:
                await self.scan()
            except Exception:  # noqa: BLE001 (the watcher never dies of one scan)
                logger.exception("scanning the exports failed")

    async def close(self) -> None:
        """Stop serving: every version's batcher drains (in-flight and queued requests are answered)."""
        self.begin_shutdown()
        for name in self.names:
            self.metrics.model_ready.labels(name).set(0)
        await asyncio.gather(*(slot.batcher.close() for slot in list(self.slots.values())), *list(self._retiring))
