"""The HTTP service: an export directory behind an ASGI app (FastAPI + uvicorn), with dynamic
micro-batching. No Paddle, no PLM weights: the same `Classifier` as infer.py and the Python API.

    POST /models/{name}   PaddleNLP SimpleServing's body: {"data": {"text": [...], "text_pair": [...]},
                          "parameters": {"max_seq_len", "batch_size", "prob_limit", "top_k"}}
                          -> {"result": [{"label", "confidence", "top_k": [{"label", "confidence"}]}]}
    POST /predict         {"texts": [...] (pairs: [[a, b], ...]), "top_k": k} -> {"predictions": [...]}

Multi-label and hierarchical exports (their manifest says so) answer per text `{"label": [names],
"confidence": [sigmoid probabilities], "top_k": [...]}`: every label above its threshold, most
probable first, as upstream's multi-label SimpleServing does; `parameters.prob_limit` (or
`threshold` in /predict) replaces the model's thresholds for that request.
    GET  /health          alive (503 if the model failed to load);  GET /ready: the model is loaded and
                          the service is not draining (503 while loading or draining)
    GET  /labels          labels in output order;  GET /metrics: Prometheus
    GET  /docs, /openapi.json  (FastAPI's)

Batching (Triton's dynamic batcher, in small): requests queue their texts; one worker per
device takes up to `max_batch_size` texts, waiting at most `max_wait_ms` for more (counted from
the later of the first text's arrival and the last answers; not once every request of the last
round is back: a lone client waits for no one), runs
them as one length-sorted batch in a thread (the event loop never blocks on the model) and hands
every request its own rows, in order. A batch that fails is re-run request by
request, so a failing request never fails its neighbours. The queue is bounded: beyond
`max_queue` waiting texts a request gets 503 with Retry-After; a body larger than any valid request
(`ServiceConfig.max_body_bytes`) gets 413 unparsed. Bad requests get a 4xx JSON
error naming the field, never a 500 or a stack trace. SIGTERM (uvicorn) stops accepting, lets
in-flight requests finish, then drains the queue.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Deque, Dict, List, Optional, Tuple, Union

import numpy as np

from ..errors import UserError, check_text
from ..deploy.predictions import ranked_labels

logger = logging.getLogger(__name__)

DEFAULT_NAME = "cls_default"
MAX_INSTANCES = 64  # model workers on one device: more is a typo (each a thread and a run in memory)


@dataclass
class ServiceConfig:
    """Everything `serve.py` takes besides host and port (its flags mirror infer.py's)."""

    model_path_prefix: str
    name: str = DEFAULT_NAME
    device: Optional[str] = None
    device_id: int = 0
    num_threads: Optional[int] = None
    use_fp16: bool = False
    use_int8: bool = False
    max_seq_length: Optional[int] = None
    instances: int = 1               # model workers sharing the one loaded model
    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 2048            # texts waiting, over all requests
    max_texts_per_request: int = 256
    max_chars_per_text: int = 8192
    default_top_k: int = 1

    def __post_init__(self):
        for name in ("instances", "max_batch_size", "max_queue", "max_texts_per_request", "max_chars_per_text", "default_top_k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise UserError(f"must be a positive integer, got {value!r}", f"--{name}")
        if not self.max_wait_ms >= 0:
            raise UserError(f"must be zero or more, got {self.max_wait_ms}", "--max_wait_ms")
        if not self.name or "/" in self.name:
            raise UserError(f"must be a non-empty name without '/', got {self.name!r}", "--name")
        for name in ("num_threads", "max_seq_length"):  # infer.py's checks and words: the same error for the same flag
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise UserError(f"must be positive, got {value}", f"--{name}")
        if self.instances > MAX_INSTANCES:
            raise UserError(f"is {self.instances}; at most {MAX_INSTANCES} (model workers on one device)", "--instances")
        if self.num_threads is not None and self.instances > self.num_threads and self._device() == "cpu":
            raise UserError(f"is {self.instances}, more than --num_threads {self.num_threads}: on CPU each instance "
                            "runs on its share of the threads, at least one", "--instances")

    def classifier_options(self, device_id: Optional[int] = None) -> Dict[str, Any]:
        """`utils.Classifier`'s keyword arguments for this service (device resolved, CPU threads
        shared out by `model_threads`); `device_id` overrides the configured one (Ray's GPU)."""
        device = self._device()
        return dict(device=device, device_id=self.device_id if device_id is None else device_id,
                    num_threads=self.model_threads(device), use_fp16=self.use_fp16, use_int8=self.use_int8,
                    max_seq_length=self.max_seq_length, batch_size=self.max_batch_size,
                    allow_spinning=False)  # the process serves HTTP too: its threads sleep between runs

    def _device(self) -> str:
        """The configured device, else what this machine's onnxruntime offers (as infer.py)."""
        from ..deploy.classifier import default_device

        return self.device or default_device()

    def model_threads(self, device: str) -> Optional[int]:
        """The model's onnxruntime intra-op threads: on CPU each instance gets an equal share of
        `num_threads` (default: physical cores), as instances run side by side; GPU: as given."""
        if device != "cpu":
            return self.num_threads
        from ..deploy.classifier import default_num_threads

        return max(1, (self.num_threads or default_num_threads()) // self.instances)

    @property
    def max_body_bytes(self) -> int:
        """The largest request body the service reads: texts and their pairs at the limits, every
        character JSON-escaped at its longest (an emoji's two \\uXXXX: 12 bytes), plus 64 KiB for
        the rest. A larger body can hold no valid request, so it is refused unparsed."""
        return 2 * self.max_texts_per_request * self.max_chars_per_text * 12 + 65536


class RequestError(Exception):
    """A request the service refuses: HTTP `status`, the `field` at fault, a message."""

    def __init__(self, status: int, field: str, message: str, headers: Optional[Dict[str, str]] = None):
        super().__init__(message)
        self.status, self.field, self.message, self.headers = status, field, message, headers or {}


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes gets 413 before it is parsed (the
    service's JSON error, field "body"): at once from its Content-Length (the body is never read),
    or, sent chunked, as soon as the bytes read pass the limit. Without it one request could make
    the service read and parse any amount of JSON."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        from starlette.datastructures import Headers

        declared = Headers(scope=scope).get("content-length")
        if declared is not None:
            if declared.isdigit() and int(declared) > self.limit:
                return await self.too_large(int(declared), scope, receive, send)
            return await self.app(scope, receive, send)  # the server holds the body to its length
        chunks, size = [], 0
        while True:  # chunked: read up to the limit, then hand the app the whole body
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await self.too_large(size, scope, receive, send, exact=False)
            if not message.get("more_body"):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def too_large(self, size: int, scope, receive, send, exact: bool = True) -> None:
        message = (f"the request body is {'' if exact else 'over '}{size:,} bytes, more than this service reads "
                   f"({self.limit:,}, set by --max_texts_per_request and --max_chars_per_text)")
        response = error_response(413, "body", message, {"Connection": "close"})  # the rest is not read
        await response(scope, receive, send)


class Measure:
    """ASGI middleware: each HTTP request counted and timed in `metrics` by endpoint (the route's
    path template, "other" when none matched) and status, and `X-Served-By: served_by` added to
    every response. Plain ASGI: Starlette's BaseHTTPMiddleware (`@app.middleware("http")`) spent
    ~30% of the event loop's time per request here on its task group and streams."""

    def __init__(self, app, metrics: "Metrics", served_by: Optional[str] = None):
        self.app, self.metrics = app, metrics
        self.served_by = [(b"x-served-by", served_by.encode("latin-1"))] if served_by else []

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500  # (500: the app raised before answering)

        async def measured_send(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if self.served_by:
                    message = {**message, "headers": [*message.get("headers", ()), *self.served_by]}
            await send(message)

        self.metrics.in_progress.inc()
        try:
            await self.app(scope, receive, measured_send)
        finally:
            self.metrics.in_progress.dec()
            endpoint = getattr(scope.get("route"), "path", "other")  # (set in `scope` by the router)
            self.metrics.requests.labels(endpoint, str(status)).inc()
            if status >= 400:
                self.metrics.errors.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)


def error_response(status: int, field: str, message: str, headers: Optional[Dict[str, str]] = None):
    """The service's one error shape: `{"error": {"status", "field", "message"}}`."""
    from starlette.responses import JSONResponse

    return JSONResponse({"error": {"status": status, "field": field, "message": message}}, status_code=status,
                        headers=headers or {})


def overloaded(message: str) -> RequestError:
    return RequestError(503, "service", message, {"Retry-After": "1"})


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


class _Request:
    """One request's texts in the queue; its future gets all its rows at once."""

    __slots__ = ("examples", "max_seq_length", "future", "rows", "done", "arrived")

    def __init__(self, examples: List[dict], max_seq_length: Optional[int], future: asyncio.Future):
        self.examples, self.max_seq_length, self.future = examples, max_seq_length, future
        self.rows: List[Optional[np.ndarray]] = [None] * len(examples)
        self.done = 0
        self.arrived = time.monotonic()


class Batcher:
    """Dynamic micro-batching in front of `workers` model worker threads (default one).

    Each worker takes its own batches from the one queue, so with several, one runs while the next
    batch forms; they share the model (onnxruntime sessions are thread-safe; no extra memory). An
    idle worker takes only its share of the queue when others are idle too, and waits only for its
    share of the clients still to come back: otherwise the first to wake takes everything and the
    rest idle for good (simulated, 2 workers and fast clients: one worker busy, half the texts/s)."""

    def __init__(self, model, max_batch_size: int, max_wait_ms: float, max_queue: int, metrics=None,
                 split_by_length: bool = False, workers: int = 1):
        self.model = model  # a utils.deploy.predictor.ExportedClassifier
        self.workers = workers
        self.split_by_length = split_by_length  # CPU: run a batch as length_runs() (see there)
        self.max_batch_size, self.max_wait = max_batch_size, max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.metrics = metrics
        self.pending: Deque[Tuple[_Request, int]] = collections.deque()  # (request, next row to take)
        self.queued = 0  # texts waiting
        self.in_service = 0  # requests submitted and not yet answered
        self.peak = 0  # the most requests in the service at once since the last batch was taken
        self.running = 0  # requests in the batches the workers are running now
        self.busy = 0  # workers running a batch now
        self.answered_at = 0.0  # time.monotonic() when the last batch's answers went out
        self.closing = False
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="model")
        self._wakeup: Optional[asyncio.Event] = None
        self._tasks: List[asyncio.Task] = []

    def start(self) -> None:
        self._wakeup = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._loop()) for _ in range(self.workers)]

    async def submit(self, examples: List[dict], max_seq_length: Optional[int] = None) -> np.ndarray:
        """Probabilities `[len(examples), labels]` for one request, computed in shared batches."""
        if self.closing:
            raise overloaded("the service is shutting down")
        if self.queued + len(examples) > self.max_queue:
            raise overloaded(f"the queue is full ({self.queued} texts waiting, limit {self.max_queue}); retry shortly")
        request = _Request(examples, max_seq_length, asyncio.get_running_loop().create_future())
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
        if self.metrics:
            self.metrics.queue_depth.set(self.queued)

    def _take_batch(self, limit: int) -> List[Tuple[_Request, int, int]]:
        """Up to `limit` texts from the front of the queue: (request, start, end) slices."""
        batch, size = [], 0
        while self.pending and size < limit:
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
            self.peak = self.in_service
            self.running += len(batch)
            self.busy += 1
            try:
                await self._run_batch(loop, batch)
            finally:
                self.running -= len(batch)
                self.busy -= 1
                self.answered_at = time.monotonic()

    async def _run_batch(self, loop, batch: List[Tuple[_Request, int, int]]) -> None:
        """Run `batch` in a worker thread and answer its requests."""
        try:
            probs = await loop.run_in_executor(self.executor, self._run, batch)
        except Exception:  # isolate: the failing request(s) fail alone
            for request, start, end in batch:
                try:
                    self._deliver(request, start, await loop.run_in_executor(
                        self.executor, self._run, [(request, start, end)]))
                except Exception as exc:  # noqa: BLE001 (reported to that request only)
                    logger.exception("a request failed in the model")
                    if not request.future.done():
                        request.future.set_exception(exc)
            return
        offset = 0
        for request, start, end in batch:
            self._deliver(request, start, probs[offset:offset + end - start])
            offset += end - start

    def _run(self, batch: List[Tuple[_Request, int, int]]) -> np.ndarray:
        """In the model thread: encode every slice with its request's length, run one batch."""
        started = time.perf_counter()
        try:
            return self._encode_and_run(batch)
        finally:
            if self.metrics:
                self.metrics.model_seconds.inc(time.perf_counter() - started)

    def _encode_and_run(self, batch: List[Tuple[_Request, int, int]]) -> np.ndarray:
        features = []
        for request, start, end in batch:
            features += self.model.encoder(request.max_seq_length).encode(request.examples[start:end])
        if self.metrics:
            self.metrics.batch_size.observe(len(features))
        if self.split_by_length:
            return self.model.decoder.probabilities(run_by_length(self.model, features))
        return self.model.decoder.probabilities(self.model.run(features, batch_size=max(1, len(features))))

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


class Metrics:
    """Prometheus metrics of one app (its own registry, so several apps can live in one process)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("ptuning_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=self.registry)
        self.errors = Counter("ptuning_request_errors", "Requests answered with an error, by endpoint and status",
                              ["endpoint", "status"], registry=self.registry)
        self.texts = Counter("ptuning_texts", "Texts classified", registry=self.registry)
        self.in_progress = Gauge("ptuning_requests_in_progress", "HTTP requests being served now (body still "
                                 "arriving, waiting for the model, or being answered; a scrape counts itself)",
                                 registry=self.registry)
        self.latency = Histogram("ptuning_request_seconds", "Time from request to response", ["endpoint"],
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30),
                                 registry=self.registry)
        self.batch_size = Histogram("ptuning_batch_size", "Texts per model run",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512), registry=self.registry)
        self.queue_depth = Gauge("ptuning_queue_texts", "Texts waiting for the model", registry=self.registry)
        # Busy time of the model workers: its rate is their utilisation (1.0 = one worker never idle).
        self.model_seconds = Counter("ptuning_model_seconds", "Time the model workers spent on batches "
                                     "(tokenization + inference), summed over workers", registry=self.registry)
        self.ready = Gauge("ptuning_ready", "1 when the model is loaded and requests are accepted",
                           registry=self.registry)


Text = Union[str, List[str]]


def check_texts(texts: Any, field: str, pair: bool, config: ServiceConfig, pairs: Any = None) -> List[dict]:
    """Request texts -> example dicts, or a 4xx `RequestError` naming the offending field."""
    if not isinstance(texts, list):
        raise RequestError(422, field, f"must be a list of texts, got {type(texts).__name__}")
    if not texts:
        raise RequestError(422, field, "is empty: give at least one text")
    if len(texts) > config.max_texts_per_request:
        raise RequestError(413, field, f"has {len(texts)} texts; at most {config.max_texts_per_request} per request "
                                       "(--max_texts_per_request): split the request")
    if pairs is not None:
        if not isinstance(pairs, list) or len(pairs) != len(texts):
            raise RequestError(422, "data.text_pair", f"must be a list as long as data.text ({len(texts)})")
        texts = [[a, b] for a, b in zip(texts, pairs)]
    examples = []
    for index, text in enumerate(texts):
        where = f"{field}[{index}]"
        if pair:
            if not (isinstance(text, list) and len(text) == 2):
                raise RequestError(422, where, "this model classifies text pairs: give [text_a, text_b] "
                                               "(or data.text_pair)")
            fields = {"text_a": text[0], "text_b": text[1]}
        else:
            if not isinstance(text, str):
                raise RequestError(422, where, f"must be a string, got {type(text).__name__}"
                                   + (" (this model classifies single texts, not pairs)" if isinstance(text, list)
                                      else ""))
            fields = {"text_a": text}
        example = {}
        for key, value in fields.items():
            if not isinstance(value, str):
                raise RequestError(422, where, f"{key} must be a string, got {type(value).__name__}")
            try:
                check_text(value, text_field(field, index, key, pair, pairs is not None))
            except UserError as exc:  # a lone surrogate ("\ud800" in the JSON): no tokenizer takes it
                raise RequestError(400, exc.path, exc.message) from None
            value = value.strip()
            if not value:
                raise RequestError(422, where, "is empty")
            if len(value) > config.max_chars_per_text:
                raise RequestError(413, where, f"has {len(value)} characters; at most {config.max_chars_per_text} "
                                               "(--max_chars_per_text)")
            example[key] = value
        examples.append(example)
    return examples


def text_field(field: str, index: int, key: str, pair: bool, separate_pairs: bool) -> str:
    """Where one text of a request is: `texts[3]`, a pair's `texts[3][1]`, or SimpleServing's
    `data.text_pair[3]`."""
    if not pair:
        return f"{field}[{index}]"
    if separate_pairs:
        return f"{field}[{index}]" if key == "text_a" else f"data.text_pair[{index}]"
    return f"{field}[{index}][{0 if key == 'text_a' else 1}]"


def check_top_k(value: Any, field: str, labels: int, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise RequestError(422, field, f"must be a positive integer, got {value!r}")
    return min(value, labels)


def format_predictions(probs: np.ndarray, labels: List[str], top_k: int, decoder=None,
                       threshold: Optional[float] = None) -> List[dict]:
    """Per text: the best label's name and probability, and the `top_k` best (as infer.py ranks
    them); for a multi-label `decoder`, every label above its threshold (or `threshold`)."""
    out = []
    if decoder is not None and decoder.multi_label:
        decided = decoder.decide(probs, thresholds=threshold)
        for row, order, chosen in zip(probs, ranked_labels(probs, len(labels)), decided):
            picked = [j for j in order if chosen[j]]
            out.append({"label": [labels[j] for j in picked], "confidence": [round(float(row[j]), 6) for j in picked],
                        "top_k": [{"label": labels[j], "confidence": round(float(row[j]), 6)} for j in order[:top_k]]})
        return out
    names = decoder.names(probs) if decoder is not None else [labels[j] for j in probs.argmax(axis=1)]
    for name, row, best in zip(names, probs, ranked_labels(probs, top_k)):
        item = {"label": name, "confidence": round(float(row[best[0]]), 6)}
        item["top_k"] = [{"label": labels[j], "confidence": round(float(row[j]), 6)} for j in best]
        out.append(item)
    return out


def create_app(config: ServiceConfig, classifier=None, served_by: Optional[str] = None):
    """The FastAPI app around a loaded `utils.Classifier` (serve.py and Ray replicas load it first,
    so that a model that cannot load is an error before anything serves): ready from its start-up.
    Without one, the model loads in a thread at start-up: `/ready` answers 503 until it is loaded,
    and if it cannot be, `/health` answers 503 too (with the error), so no orchestrator keeps the
    process. `served_by` (a replica's node/pid under Ray Serve) is sent as the `X-Served-By` header
    of every response."""
    from contextlib import asynccontextmanager

    from fastapi import Body, FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import Response
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from starlette.exceptions import HTTPException as StarletteHTTPException

    metrics = Metrics()
    state: Dict[str, Any] = {"classifier": classifier, "batcher": None, "error": None}

    def load() -> None:
        from ..deploy.classifier import Classifier

        state["classifier"] = Classifier(config.model_path_prefix, **config.classifier_options())

    def start() -> None:
        classifier = state["classifier"]
        batcher = Batcher(classifier.model, config.max_batch_size, config.max_wait_ms, config.max_queue,
                          metrics, split_by_length=classifier.device == "cpu", workers=config.instances)
        batcher.start()
        state["batcher"] = batcher
        metrics.ready.set(1)
        logger.info("serving %s as %r", state["classifier"], config.name)

    async def load_and_start() -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(None, load)
            start()
        except Exception as exc:  # reported by /health, /ready and every request: the process is not healthy
            state["error"] = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
            logger.error("the model could not be loaded: %s", state["error"])

    @asynccontextmanager
    async def lifespan(app):
        loading = None
        if state["classifier"] is None:
            loading = asyncio.get_running_loop().create_task(load_and_start())
        else:
            start()  # before the server accepts anything: ready from the first request
        yield
        metrics.ready.set(0)
        if loading is not None:
            await loading
        if state["batcher"] is not None:
            await state["batcher"].close()  # uvicorn has let in-flight requests finish; drain the rest

    app = FastAPI(title="P-tuning text classification", lifespan=lifespan,
                  description="Serves an export directory (onnxruntime, no Paddle). SimpleServing-compatible.")

    app.add_middleware(BodyLimit, limit=config.max_body_bytes)
    app.add_middleware(Measure, metrics=metrics, served_by=served_by)  # outside BodyLimit: its 413s count

    @app.exception_handler(RequestError)
    async def request_error(request: Request, exc: RequestError):
        return error_response(exc.status, exc.field, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        location = [str(part) for part in first.get("loc", ()) if part != "body"]
        if first.get("type") == "json_invalid":
            return error_response(400, "body", f"malformed JSON: {first.get('msg', '')}".rstrip(": "))
        return error_response(422, ".".join(location) or "body", first.get("msg", "invalid request"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        # FastAPI's 400 is a body it could not parse (not UTF-8, nested too deep for Python's parser)
        field = {404: "path", 400: "body"}.get(exc.status_code, "request")
        return error_response(exc.status_code, field, str(exc.detail))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):  # a bug: logged here, no trace to the client
        logger.exception("internal error")
        return error_response(500, "service", "internal error (logged by the service)")

    def ready_batcher() -> Batcher:
        if state["error"]:
            raise RequestError(503, "service", f"the model could not be loaded: {state['error']}")
        batcher = state["batcher"]
        if batcher is None:
            raise overloaded("the model is still loading; retry shortly")
        return batcher

    async def classify(examples: List[dict], top_k: int, max_seq_length: Optional[int] = None,
                       threshold: Optional[float] = None) -> List[dict]:
        probs = await ready_batcher().submit(examples, max_seq_length)
        metrics.texts.inc(len(examples))
        return format_predictions(probs, state["classifier"].labels, top_k, state["classifier"].model.decoder,
                                  threshold)

    def check_threshold(value: Any, field: str) -> Optional[float]:
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1):
            raise RequestError(422, field, f"must be a number in [0, 1], got {value!r}")
        return value

    def body_dict(body: Any, field: str = "body") -> dict:
        if isinstance(body, (bytes, str)) and field == "body":  # sent without a JSON content type
            try:
                body = json.loads(body)
            except (ValueError, RecursionError) as exc:  # (also: not UTF-8, nested too deep)
                raise RequestError(400, "body", f"malformed JSON: {exc}") from None
        if not isinstance(body, dict):
            raise RequestError(422, field, f"must be a JSON object, got {type(body).__name__}")
        return body

    @app.get("/health")
    async def health():
        """Liveness: the process answers, and its model did not fail to load (503 with the error then)."""
        if state["error"]:
            return error_response(503, "service", f"the model could not be loaded: {state['error']}")
        return {"status": "ok"}

    @app.get("/ready")
    async def ready():
        """Readiness: the model is loaded and requests are accepted (503 while loading or draining)."""
        if state["error"]:
            return error_response(503, "service", f"the model could not be loaded: {state['error']}")
        if state["batcher"] is None or state["batcher"].closing:
            return error_response(503, "service", "not ready (loading or shutting down)", {"Retry-After": "1"})
        return {"status": "ready", "model": config.name}

    @app.get("/labels")
    async def labels():
        ready_batcher()
        classifier = state["classifier"]
        return {"model": config.name, "labels": classifier.labels, "pair": classifier.pair,
                "task_type": classifier.task_type, "thresholds": classifier.thresholds,
                # calibration and the reject option the export carries (applied to every prediction)
                "temperature": classifier.model.decoder.temperature,
                "reject_threshold": classifier.model.decoder.reject_threshold,
                "other_label": classifier.model.decoder.other_label}

    @app.get("/metrics")
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/predict")
    async def predict(body: Any = Body(..., examples=[{"texts": ["央行宣布降准"], "top_k": 2}])):
        """`{"texts": [...], "top_k": k}` -> `{"predictions": [{label, confidence, top_k}]}`."""
        body = body_dict(body)
        unknown = sorted(set(body) - {"texts", "top_k", "threshold"})
        if unknown:
            try:
                check_text(unknown[0], "body")  # (the error names the field: it must be writable as JSON)
            except UserError as exc:
                raise RequestError(400, "body", f"a field name is {exc.message}") from None
            raise RequestError(422, unknown[0], "unknown field (allowed: texts, top_k, threshold)")
        if "texts" not in body:
            raise RequestError(422, "texts", "is required")
        ready_batcher()
        examples = check_texts(body["texts"], "texts", state["classifier"].pair, config)
        top_k = check_top_k(body.get("top_k"), "top_k", len(state["classifier"].labels), config.default_top_k)
        threshold = check_threshold(body.get("threshold"), "threshold")
        if threshold is not None and not state["classifier"].model.decoder.multi_label:
            raise RequestError(422, "threshold", "is for multi-label models; this one is multi-class (it predicts "
                                                 "its best label)")
        return {"model": config.name, "predictions": await classify(examples, top_k, threshold=threshold)}

    @app.post("/models/{name}")
    async def simple_serving(name: str, body: Any = Body(..., examples=[{
            "data": {"text": ["央行宣布降准"]}, "parameters": {"max_seq_len": 128, "batch_size": 32}}])):
        """PaddleNLP SimpleServing's request body, unchanged; `{"result": [...]}`."""
        if name != config.name:
            raise RequestError(404, "name", f"no model {name!r} here; this service serves {config.name!r}")
        body = body_dict(body)
        data = body_dict(body.get("data"), "data") if "data" in body else None
        if data is None or "text" not in data:
            raise RequestError(422, "data.text", "is required: {\"data\": {\"text\": [...]}}")
        parameters = body_dict(body.get("parameters") or {}, "parameters")
        ready_batcher()
        classifier = state["classifier"]
        examples = check_texts(data["text"], "data.text", classifier.pair, config, data.get("text_pair"))
        max_seq_length = parameters.get("max_seq_len")
        if max_seq_length is not None:
            exported = classifier.model.manifest["max_seq_length"]
            if isinstance(max_seq_length, bool) or not isinstance(max_seq_length, int) or max_seq_length <= 0:
                raise RequestError(422, "parameters.max_seq_len", f"must be a positive integer, got {max_seq_length!r}")
            max_seq_length = min(max_seq_length, exported)  # longer than exported: the exported length
            try:
                classifier.model.encoder(max_seq_length)
            except UserError as exc:  # e.g. shorter than the prompt itself
                raise RequestError(422, "parameters.max_seq_len", exc.message) from None
        batch_size = parameters.get("batch_size")
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                       or batch_size <= 0):
            raise RequestError(422, "parameters.batch_size", f"must be a positive integer, got {batch_size!r}")
        prob_limit = check_threshold(parameters.get("prob_limit"), "parameters.prob_limit")
        top_k = check_top_k(parameters.get("top_k"), "parameters.top_k", len(classifier.labels), config.default_top_k)
        # batch_size is the service's business (--max_batch_size); prob_limit is the multi-label
        # threshold: a multi-class model returns its best label whatever its probability (as upstream).
        return {"result": await classify(examples, top_k, max_seq_length, threshold=prob_limit)}

    app.state.service = state
    app.state.metrics = metrics
    app.state.config = config
    return app
