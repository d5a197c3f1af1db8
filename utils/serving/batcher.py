"""Dynamic micro-batching (Triton's dynamic batcher, in small): requests queue their texts, model
worker threads run them in shared, length-sorted batches, and each request gets its own rows.
How long a batch waits and how workers share the queue: `Batcher`."""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import time
from typing import Deque, List, Optional, Tuple

import numpy as np

from .requests import overloaded

logger = logging.getLogger(__name__)


# What one more onnxruntime run costs, in tokens of compute: measured on ERNIE-3.0-base (fp32 and
# int8, 2 CPU threads), one run costs about as much as 8-16 more tokens in a batch.
RUN_COST_TOKENS = 16


def length_runs(lengths: List[int], run_cost: float = RUN_COST_TOKENS) -> List[slice]:
    """Cut ascending `lengths` (tokens per text) into consecutive runs so that the padded tokens
    (each run is padded to its longest text) plus `run_cost` per run are fewest. A batch of texts
    in arrival order is ~1.3-1.4x padding on tnews; cut this way ~1.05x in 4-7 runs (infer.py gets
    the same by sorting 8192 texts at a time). Cuts fall only between different lengths."""
    if not lengths:
        return []
    bounds = [0] + [i for i in range(1, len(lengths)) if lengths[i] != lengths[i - 1]] + [len(lengths)]
    # best[j]: least cost of the texts before bounds[j]; a run from bounds[i] to bounds[j] costs
    # its size times its longest (the last) length, plus run_cost.
    best, cut = [0.0] + [float("inf")] * (len(bounds) - 1), [0] * len(bounds)
    for j in range(1, len(bounds)):
        longest = lengths[bounds[j] - 1]
        for i in range(j):
            cost = best[i] + (bounds[j] - bounds[i]) * longest + run_cost
            if cost < best[j]:
                best[j], cut[j] = cost, i
    runs, j = [], len(bounds) - 1
    while j > 0:
        runs.append(slice(bounds[cut[j]], bounds[j]))
        j = cut[j]
    return runs[::-1]


def run_by_length(model, features: List[dict]) -> np.ndarray:
    """`model.run` on `features` (one batch) sorted by length and cut by `length_runs`: the logits,
    in the order of `features`."""
    order = np.argsort([len(f["input_ids"]) for f in features], kind="stable")
    logits = None
    for run in length_runs([len(features[i]["input_ids"]) for i in order]):
        index = order[run]
        part = model.run([features[i] for i in index], batch_size=len(index))
        if logits is None:
            logits = np.zeros((len(features), part.shape[1]), dtype=part.dtype)
        logits[index] = part
    return logits


class Engine:
    """What a request is computed by: one model version's all-threads model, its split one (None: every
    batch on `model`) and the metrics its batches count in. A batch runs on one engine only."""

    __slots__ = ("model", "split_model", "metrics")

    def __init__(self, model, split_model=None, metrics=None):
        self.model, self.split_model, self.metrics = model, split_model, metrics


class _Request:
    """One request's texts in the queue and the engine they are computed by; its future gets all its
    rows at once."""

    __slots__ = ("examples", "max_seq_length", "future", "rows", "done", "arrived", "engine")

    def __init__(self, examples: List[dict], max_seq_length: Optional[int], future: asyncio.Future, engine: Engine):
        self.examples, self.max_seq_length, self.future, self.engine = examples, max_seq_length, future, engine
        self.rows: List[Optional[np.ndarray]] = [None] * len(examples)
        self.done = 0
        self.arrived = time.monotonic()


class RunningBatches:
    """How many batches the model workers of several batchers run now: the batchers of a service's
    models share one (ModelRegistry), so that `--instances auto` sends a batch to the split path
    whenever any other batch runs on the same cores, not only one of its own batcher's (two busy
    models on 2 cores: no change measured in texts/s or p99; BENCHMARKS.md, "Where in a swap...")."""

    __slots__ = ("count",)

    def __init__(self):
        self.count = 0


class Batcher:
    """Dynamic micro-batching in front of `workers` model worker threads (default one).

    Each worker takes its own batches from the one queue, so with several, one runs while the next
    batch forms; they share the model (onnxruntime sessions are thread-safe; no extra memory). An
    idle worker takes only its share of the queue when others are idle too, and waits only for its
    share of the clients still to come back: otherwise the first to wake takes everything and the
    rest idle for good (simulated, 2 workers and fast clients: one worker busy, half the texts/s).

    `split_model` (serve.py `--instances auto`): the same model on a share of the threads. A batch
    that runs alone (no other worker busy, nothing left in the queue once it is taken) runs on
    `model`, every thread; a batch that will run beside another runs on `split_model`, so that
    concurrent batches share the cores instead of each asking for all of them (`_path`). "Another
    worker" is any of `running`'s: batchers given the same `RunningBatches` see each other's batches.

    Each request is computed by the `Engine` it was submitted with (default: `model`'s): a swap's old
    and new version share one batcher, so requests keep one queue, in order, and its workers, and a
    batch never mixes versions. With a batcher for each version, the closed-loop clients split between
    two queues at the switch and, for about a second, ran in one slow large batch beside small quick
    ones (BENCHMARKS.md, "Where in a swap the slow requests are": 16-24% of the requests in a swap's
    first tenth slower than steady p99, 2-6% with one queue)."""

    def __init__(self, model, max_batch_size: int, max_wait_ms: float, max_queue: int, metrics=None,
                 split_by_length: bool = False, workers: int = 1, split_model=None,
                 running: Optional[RunningBatches] = None):
        self.engine = Engine(model, split_model, metrics)  # what a request submitted without one runs on
        self.paths = collections.Counter()  # batches run by path: "full" (every thread) or "split"
        self.workers = workers
        self.split_by_length = split_by_length  # CPU: run a batch as length_runs() (see there)
        self.max_batch_size, self.max_wait = max_batch_size, max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.queue_metric = metrics.queue_depth if metrics else None
        self.pending: Deque[Tuple[_Request, int]] = collections.deque()  # (request, next row to take)
        self.queued = 0  # texts waiting
        self.in_service = 0  # requests submitted and not yet answered
        self.peak = 0  # the most requests in the service at once since the last batch was taken
        self.running = 0  # requests in the batches the workers are running now
        self.busy = 0  # workers running a batch now
        self.running_batches = running if running is not None else RunningBatches()  # of every batcher sharing it
        self.answered_at = 0.0  # time.monotonic() when the last batch's answers went out
        self.closing = False
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="model")
        self._wakeup: Optional[asyncio.Event] = None
        self._tasks: List[asyncio.Task] = []

    def start(self) -> None:
        self._wakeup = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._loop()) for _ in range(self.workers)]

    async def submit(self, examples: List[dict], max_seq_length: Optional[int] = None,
                     engine: Optional[Engine] = None) -> np.ndarray:
        """Probabilities `[len(examples), labels]` for one request, computed by `engine` (default: the
        batcher's) in shared batches."""
        if self.closing:
            raise overloaded("the service is shutting down")
        if self.queued + len(examples) > self.max_queue:
            raise overloaded(f"the queue is full ({self.queued} texts waiting, limit {self.max_queue}); retry shortly")
        request = _Request(examples, max_seq_length, asyncio.get_running_loop().create_future(), engine or self.engine)
        self.pending.append((request, 0))
        self._queued(len(examples))
        self.in_service += 1
        self.peak = max(self.peak, self.in_service)
        self._wakeup.set()
        try:
            return await request.future
        finally:
            self.in_service -= 1

    @property
    def idle(self) -> int:
        """Workers not running a batch (the one asking included)."""
        return self.workers - self.busy

    def _queued(self, delta: int) -> None:
        self.queued += delta
        if self.queue_metric is not None:
            self.queue_metric.set(self.queued)

    def _take_batch(self, limit: int) -> List[Tuple[_Request, int, int]]:
        """Up to `limit` texts from the front of the queue, all of the first one's engine: (request,
        start, end) slices."""
        batch, size = [], 0
        engine = self.pending[0][0].engine
        while self.pending and size < limit and self.pending[0][0].engine is engine:
            request, start = self.pending[0]
            end = min(len(request.examples), start + limit - size)
            batch.append((request, start, end))
            size += end - start
            if end == len(request.examples):
                self.pending.popleft()
            else:
                self.pending[0] = (request, end)
        self._queued(-size)
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.pending:
                if self.closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            # Wait briefly for more texts to share the batch, unless it is full already or every
            # request of the last round is back (a lone client would only wait for itself). The wait
            # counts from the later of the oldest arrival and the model's last answer: counted from
            # the arrival alone, texts queued during a run would leave at once without the clients
            # just answered, and closed-loop clients would split into alternating half batches for
            # good (measured: 32 clients on int8 ERNIE-base ran 16.5 texts a batch; now 26-31).
            # Requests another worker is running cannot come back before it answers: not waited for;
            # the rest are shared among the idle workers (this one included).
            deadline = max(self.pending[0][0].arrived, self.answered_at) + self.max_wait
            while (len(self.pending) * self.idle < self.peak - self.running
                   and self.queued < self.max_batch_size and not self.closing):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            if not self.pending:  # another worker took them while this one waited
                continue
            batch = self._take_batch(min(self.max_batch_size, -(-self.queued // self.idle)))
            model = self._path(batch[0][0].engine)
            self.peak = self.in_service
            self.running += len(batch)
            self.busy += 1
            self.running_batches.count += 1
            try:
                await self._run_batch(loop, batch, model)
            finally:
                self.running -= len(batch)
                self.busy -= 1
                self.running_batches.count -= 1
                self.answered_at = time.monotonic()

    def _path(self, engine: Engine):
        """The model a batch just taken runs on (see the class): `engine`'s split model when another
        worker (of any batcher sharing `running_batches`) is running a batch or texts are left in the
        queue for the next one, else its all-threads one. Counted in `paths` and the
        `ptuning_batch_paths` metric."""
        if engine.split_model is None:
            return engine.model
        path = "split" if self.running_batches.count or self.pending else "full"
        self.paths[path] += 1
        if engine.metrics and getattr(engine.metrics, "batch_paths", None) is not None:
            engine.metrics.batch_paths.labels(path).inc()
        return engine.split_model if path == "split" else engine.model

    async def _run_batch(self, loop, batch: List[Tuple[_Request, int, int]], model) -> None:
        """Run `batch` on `model` (`_path`'s choice) in a worker thread and answer its requests."""
        try:
            probs = await loop.run_in_executor(self.executor, self._run, batch, model)
        except Exception:  # isolate: the failing request(s) fail alone
            for request, start, end in batch:
                try:
                    self._deliver(request, start, await loop.run_in_executor(
                        self.executor, self._run, [(request, start, end)], model))
                except Exception as exc:  # noqa: BLE001 (reported to that request only)
                    logger.exception("a request failed in the model")
                    if not request.future.done():
                        request.future.set_exception(exc)
            return
        offset = 0
        for request, start, end in batch:
            self._deliver(request, start, probs[offset:offset + end - start])
            offset += end - start

    def _run(self, batch: List[Tuple[_Request, int, int]], model) -> np.ndarray:
        """In the model thread: encode every slice with its request's length, run one batch on `model`
        (its engine's all-threads or split model)."""
        started = time.perf_counter()
        metrics = batch[0][0].engine.metrics
        try:
            return self._encode_and_run(batch, model)
        finally:
            if metrics:
                metrics.model_seconds.inc(time.perf_counter() - started)

    def _encode_and_run(self, batch: List[Tuple[_Request, int, int]], model) -> np.ndarray:
        engine = batch[0][0].engine
        full, metrics = engine.model, engine.metrics
        features, pieces = [], []
        for request, start, end in batch:  # --long_text: every window of every document, in one batch
            encoder = full.encoder(request.max_seq_length)
            inputs, documents = encoder.split(request.examples[start:end])
            features += encoder.encode(inputs)
            pieces += documents
        if metrics:
            metrics.batch_size.observe(len(features))
            if getattr(getattr(full, "preprocessor", None), "long_text", None) and \
                    full.preprocessor.long_text.active:  # a --long_text model's documents
                metrics.long_texts.inc(sum(1 for p in pieces if p.longer))
                metrics.windows.inc(len(features))
        if self.split_by_length:
            logits = run_by_length(model, features)
        else:
            logits = model.run(features, batch_size=max(1, len(features)))
        return full.decoder.probabilities(full.documents(logits, pieces))

    def _deliver(self, request: _Request, start: int, probs: np.ndarray) -> None:
        if request.future.done():  # (cancelled: the client went away)
            return
        for offset, row in enumerate(probs):
            request.rows[start + offset] = row
        request.done += len(probs)
        if request.done == len(request.examples):
            request.future.set_result(np.stack(request.rows) if request.rows else np.zeros((0, 0)))

    async def close(self) -> None:
        """Refuse new requests, finish the queued ones, stop the worker."""
        self.closing = True
        if self._wakeup is not None:
            self._wakeup.set()
        await asyncio.gather(*self._tasks)
        self.executor.shutdown(wait=True)
