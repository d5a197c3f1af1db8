"""The HTTP service: export directories behind an ASGI app (FastAPI + uvicorn), with dynamic
micro-batching. No Paddle, no PLM weights: the same `Classifier` as infer.py and the Python API.
One model (`ServiceConfig.model_path_prefix` as `name`) or several (`ServiceConfig.models`), each a
slot of registry.py, swapped without downtime; API keys: auth.py; the Open Inference Protocol v2
under /v2: oip.py. Every answer names the `model_version` that computed it.

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
    GET  /labels          labels in output order (?model=NAME);  GET /metrics: Prometheus
    GET  /models/{name}   one model's version, export, labels, swap in progress, last swap
    POST /admin/models/{name}  {"path": EXPORT_DIR}: swap in a new export (an admin key); POST /admin/scan
    /v2/...               the Open Inference Protocol v2 (health, metadata, infer with BYTES texts)
    /label-studio/...     Label Studio's ML backend (health, setup, predict, webhook, train, versions), under
                          `ServiceConfig.label_studio_prefix`: ml_backend.py
    GET  /docs, /openapi.json  (FastAPI's)

Batching (batcher.py; Triton's dynamic batcher, in small): requests queue their texts; one worker per
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
import logging
from contextlib import asynccontextmanager
from typing import Any, Dict, List, Optional

import numpy as np
from fastapi import Body, FastAPI
from starlette.requests import Request

from ..errors import UserError
from . import ml_backend, oip
from .auth import ApiKeys, KeyFile
from .batcher import Batcher
from .config import ServiceConfig
from .metrics import Metrics
from .middleware import BodyLimit, Measure, add_error_handlers, error_response
from .registry import ModelRegistry, Slot
from .requests import (RequestError, body_dict, check_fields, check_max_seq_len, check_positive, check_texts,
                       check_threshold, check_top_k, format_predictions)

__all__ = ["Service", "ServiceConfig", "create_app", "route"]

logger = logging.getLogger(__name__)


def route(method: str, path: str, prefix: Optional[str] = None):
    """Marks a `Service` method as the handler of `method path` (FastAPI's `@app.get(path)`), bound
    to its instance when `Service.asgi` builds the app; `prefix` names the `ServiceConfig` field
    whose value goes before `path` (`label_studio_prefix`: `/label-studio/predict`)."""
    def mark(handler):
        handler.route = (method, path, prefix)
        return handler
    return mark


class Service:
    """The served models behind HTTP: their registry (a classifier, batcher and version per name),
    the metrics, and one method per route. serve.py runs `Service(...).asgi()` in uvicorn; a Ray
    Serve replica is a subclass (utils/serving/ray_serve.py) whose app Serve builds the same way."""

    def __init__(self, config: ServiceConfig, classifier=None, served_by: Optional[str] = None,
                 classifiers: Optional[Dict[str, Any]] = None):
        self.config, self.served_by = config, served_by
        self.metrics = Metrics()
        self.registry = ModelRegistry(config, self.metrics)
        # Loaded before the service starts (serve.py, Ray replicas): the rest load in a thread at start-up.
        self.preloaded = dict(classifiers or ({self.registry.default: classifier} if classifier is not None else {}))
        self.api_keys = KeyFile(config.api_key_file, "--api_key_file") if config.api_key_file else None
        self.admin_keys = KeyFile(config.admin_key_file, "--admin_key_file") if config.admin_key_file else None
        self._tasks: List[asyncio.Task] = []
        self.loop: Optional[asyncio.AbstractEventLoop] = None

    def asgi(self):
        """The FastAPI app of this service: its routes, error handlers, middleware and lifespan."""
        app = FastAPI(title="P-tuning text classification", lifespan=self.lifespan,
                      description="Serves export directories (onnxruntime, no Paddle). SimpleServing-compatible; "
                                  "Open Inference Protocol v2 under /v2.")
        app.add_middleware(BodyLimit, limit=self.config.max_body_bytes)
        # Outside BodyLimit: a request without a key is never read. (Always: without an admin file it refuses /admin.)
        app.add_middleware(ApiKeys, api_keys=self.api_keys, admin_keys=self.admin_keys)
        app.add_middleware(Measure, metrics=self.metrics, served_by=self.served_by)  # outermost: 401s, 413s count
        add_error_handlers(app)
        for name, member in vars(Service).items():  # (in the order defined: the order of /openapi.json)
            if hasattr(member, "route"):
                method, path, prefix = member.route
                path = (getattr(self.config, prefix) if prefix else "") + path
                app.add_api_route(path, getattr(self, name), methods=[method])
        app.state.service, app.state.metrics, app.state.config = self, self.metrics, self.config
        return app

    # The default model (the only one, or the first --model): what the Label Studio routes serve

    @property
    def classifier(self):
        slot = self.registry.slots.get(self.registry.default)
        return slot.classifier if slot is not None else self.preloaded.get(self.registry.default)

    @property
    def batcher(self) -> Optional[Batcher]:
        slot = self.registry.slots.get(self.registry.default)
        return slot.batcher if slot is not None else None

    @property
    def error(self) -> Optional[str]:
        """Why a model could not be loaded (the first that failed), None when none failed."""
        errors = self.registry.errors
        if not errors:
            return None
        name, error = next(iter(errors.items()))
        return error if len(self.registry.names) == 1 else f"{name}: {error}"

    # Start-up and shutdown

    def load(self) -> None:
        """Loads the models not loaded yet, one after the other (in a thread)."""
        for name, path in self.config.exports.items():
            if name not in self.preloaded and name not in self.registry.errors:
                try:
                    self.preloaded[name] = self.registry.load(path)
                except Exception as exc:  # reported by /health, /ready and every request of that model
                    self.registry.errors[name] = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
                    logger.error("the model %r could not be loaded: %s", name, self.registry.errors[name])

    def start(self) -> None:
        for name in self.registry.names:
            if name in self.preloaded and name not in self.registry.slots:
                slot = self.registry.start(name, self.preloaded.pop(name))
                # (its text, not the object: a handler that keeps records would keep the model alive)
                logger.info("serving %s as %r (%s)", str(slot.classifier), name, slot.version)

    async def load_and_start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.load)
        self.start()

    @asynccontextmanager
    async def lifespan(self, app):
        """Ready from the first request when the classifiers are given (loaded before anything
        serves), else loaded in a thread meanwhile; on shutdown the queued requests are answered."""
        loop = self.loop = asyncio.get_running_loop()
        self.start()  # before the server accepts anything: the given models serve from the first request
        loading = None
        if len(self.registry.slots) < len(self.registry.names):
            loading = loop.create_task(self.load_and_start())
        if self.config.watch_interval_s:
            self._tasks.append(loop.create_task(self.registry.watch(self.config.watch_interval_s)))
        yield
        self.metrics.ready.set(0)
        for task in self._tasks:
            task.cancel()
        if loading is not None:
            await loading
        await self.registry.close()  # uvicorn has let in-flight requests finish; drain the rest

    def begin_shutdown_threadsafe(self) -> None:
        """`begin_shutdown` from a signal handler: run on the event loop, once it runs."""
        loop = self.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.begin_shutdown)

    def begin_shutdown(self) -> None:
        """SIGTERM has arrived (serve.py calls this from uvicorn's signal handler, on the loop's thread):
        a swap being loaded is abandoned now rather than put in service while the server drains."""
        self.registry.begin_shutdown()

    # What the routes share

    def slot(self, name: Optional[str], field: str = "model") -> Slot:
        return self.registry.get(name, field)

    def ready_batcher(self) -> Batcher:
        return self.slot(self.registry.default).batcher

    async def classify(self, slot: Slot, examples: List[dict], top_k: int, max_seq_length: Optional[int] = None,
                       threshold: Optional[float] = None) -> List[dict]:
        probs = await self.run_model(slot, examples, max_seq_length)
        return format_predictions(probs, slot.classifier.labels, top_k, slot.classifier.model.decoder, threshold)

    async def run_model(self, slot: Slot, examples: List[dict], max_seq_length: Optional[int] = None):
        probs = await slot.submit(examples, max_seq_length)
        self.metrics.texts.inc(len(examples))
        self.metrics.model_texts.labels(slot.name, slot.version).inc(len(examples))
        return probs

    def not_ready(self) -> Optional[Any]:
        """/ready's and /health's 503 when a model failed to load, else None."""
        if self.error:
            return error_response(503, "service", f"the model could not be loaded: {self.error}")
        return None

    # The routes

    @route("GET", "/health")
    async def health(self):
        """Liveness: the process answers, and its models did not fail to load (503 with the error then)."""
        return self.not_ready() or {"status": "ok"}

    @route("GET", "/ready")
    async def ready(self, model: Optional[str] = None):
        """Readiness: every model (or `?model=NAME`) is loaded and requests are accepted (503 while
        loading or draining): `{"status", "model": the default, "models": {name: version}}`."""
        failed = self.not_ready()
        if failed is not None:
            return failed
        names = self.registry.names if model is None else [self.slot(model).name]
        slots = [self.registry.slots.get(name) for name in names]
        if any(slot is None or slot.batcher.closing for slot in slots) or self.registry.closing:
            return error_response(503, "service", "not ready (loading or shutting down)", {"Retry-After": "1"})
        return {"status": "ready", "model": names[0], "models": {slot.name: slot.version for slot in slots}}

    @route("GET", "/labels")
    async def labels(self, model: Optional[str] = None):
        """The labels of the model (`?model=NAME` when there are several), its version, and the
        announcement of a swap that brought another label set (`labels_changed`)."""
        return self.describe(self.slot(model))

    @staticmethod
    def describe(slot: Slot) -> dict:
        classifier, decoder = slot.classifier, slot.classifier.model.decoder
        return {"model": slot.name, "labels": classifier.labels, "pair": classifier.pair,
                "task_type": classifier.task_type, "thresholds": classifier.thresholds,
                # calibration and the reject option the export carries (applied to every prediction)
                "temperature": decoder.temperature, "reject_threshold": decoder.reject_threshold,
                "other_label": decoder.other_label, "model_version": slot.version,
                **({"labels_changed": slot.labels_changed} if slot.labels_changed else {})}

    @route("GET", "/metrics")
    async def prometheus(self):
        from fastapi.responses import Response
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @route("POST", "/predict")
    async def predict(self, body: Any = Body(..., examples=[{"texts": ["央行宣布降准"], "top_k": 2}])):
        """`{"texts": [...], "top_k": k, "model": NAME}` -> `{"model", "model_version", "predictions": [{label,
        confidence, top_k}]}`; `model` names one of several models (not needed with one)."""
        body = body_dict(body)
        check_fields(body, ("texts", "top_k", "threshold", "model"))
        if "texts" not in body:
            raise RequestError(422, "texts", "is required")
        with self.slot(body.get("model")).hold() as slot:
            classifier, config = slot.classifier, self.config
            examples = check_texts(body["texts"], "texts", classifier.pair, config)
            top_k = check_top_k(body.get("top_k"), "top_k", len(classifier.labels), config.default_top_k)
            threshold = check_threshold(body.get("threshold"), "threshold")
            if threshold is not None and not classifier.model.decoder.multi_label:
                raise RequestError(422, "threshold", "is for multi-label models; this one is multi-class (it "
                                                     "predicts its best label)")
            predictions = await self.classify(slot, examples, top_k, threshold=threshold)
            return {"model": slot.name, "model_version": slot.version, "predictions": predictions}

    @route("POST", "/models/{name}")
    async def simple_serving(self, name: str, body: Any = Body(..., examples=[{
            "data": {"text": ["央行宣布降准"]}, "parameters": {"max_seq_len": 128, "batch_size": 32}}])):
        """PaddleNLP SimpleServing's request body, unchanged; `{"result": [...], "model_version"}`."""
        self.slot(name, "name")  # an unknown name first, whatever the body
        body = body_dict(body)
        data = body_dict(body.get("data"), "data") if "data" in body else None
        if data is None or "text" not in data:
            raise RequestError(422, "data.text", "is required: {\"data\": {\"text\": [...]}}")
        parameters = body_dict(body.get("parameters") or {}, "parameters")
        with self.slot(name, "name").hold() as slot:
            classifier, config = slot.classifier, self.config
            examples = check_texts(data["text"], "data.text", classifier.pair, config, data.get("text_pair"))
            max_seq_length = check_max_seq_len(parameters.get("max_seq_len"), classifier.model)
            # batch_size is the service's business (--max_batch_size); prob_limit is the multi-label
            # threshold: a multi-class model returns its best label whatever its probability (as upstream).
            check_positive(parameters.get("batch_size"), "parameters.batch_size")
            prob_limit = check_threshold(parameters.get("prob_limit"), "parameters.prob_limit")
            top_k = check_top_k(parameters.get("top_k"), "parameters.top_k", len(classifier.labels),
                                config.default_top_k)
            result = await self.classify(slot, examples, top_k, max_seq_length, threshold=prob_limit)
            return {"result": result, "model_version": slot.version}

    @route("GET", "/models/{name}")
    async def model_status(self, name: str):
        """One model: its version, export, labels, whether a new export is loading, the last swap."""
        slot = self.slot(name, "name")
        return {**self.describe(slot), "path": slot.export_path, "loaded_at": slot.loaded_at,
                **await self.swap_state(name)}

    @route("GET", "/models/{name}/labels")
    async def model_labels(self, name: str):
        """`/labels?model=NAME` at the model's own path (as `/v2/models/NAME/ready` is the protocol's)."""
        return self.describe(self.slot(name, "name"))

    @route("GET", "/models/{name}/ready")
    async def model_ready(self, name: str):
        """`/ready?model=NAME` at the model's own path (with --api_key_file it needs a key, as the
        per-model /v2 routes do; `/ready` stays open for orchestrators)."""
        return await self.ready(self.slot(name, "name").name)

    # Zero-downtime updates (registry.py): needs a key of --admin_key_file (auth.py)

    @route("POST", "/admin/models/{name}")
    async def admin_swap(self, name: str, body: Any = Body(..., examples=[{"path": "checkpoints/export"}])):
        """`{"path": EXPORT_DIR, "allow_label_change": false}`: load, verify, sample and warm up that export,
        then serve it as `name` (requests in flight finish on the old version). 200 with both versions;
        422 (the old version still serves) with why; 409 while another export for `name` loads."""
        body = body_dict(body)
        check_fields(body, ("path", "allow_label_change"))
        path = body.get("path")
        if path is not None and not isinstance(path, str):
            raise RequestError(422, "path", f"must be a string: the new export directory, got {type(path).__name__}")
        if not path:
            raise RequestError(422, "path", "is required: the new export directory, as the server sees it")
        allow = body.get("allow_label_change", False)
        if not isinstance(allow, bool):
            raise RequestError(422, "allow_label_change", f"must be true or false, got {allow!r}")
        return await self.swap(name, path, allow or self.config.allow_label_change)

    @route("POST", "/admin/scan")
    async def admin_scan(self):
        """Look once for new exports where the models were loaded from (what --watch_interval_s does)."""
        return {"swaps": await self.scan()}

    # How this service swaps a model: in this process (registry.py); a Ray Serve replica rolls the
    # application out again instead (ray_serve.py, ray_rollout.py)

    async def swap(self, name: str, path: str, allow_label_change: bool) -> dict:
        return await self.registry.swap(name, path, allow_label_change)

    async def scan(self) -> List[dict]:
        return await self.registry.scan()

    async def swap_state(self, name: str) -> dict:
        """`{"loading": the swap in progress, "last_swap": the last one's outcome}` of `name`."""
        return {"loading": self.registry.loading.get(name), "last_swap": self.registry.last_swap.get(name)}

    # The Open Inference Protocol v2 (oip.py)

    @route("GET", "/v2")
    async def oip_server(self):
        return oip.SERVER_METADATA

    @route("GET", "/v2/health/live")
    async def oip_live(self):
        return {"live": True}

    @route("GET", "/v2/health/ready")
    async def oip_ready(self):
        ready = await self.ready()
        if not isinstance(ready, dict):  # 503, in the protocol's shape
            return error_response(ready.status_code, "service", "not ready", {"Retry-After": "1"}, "/v2")
        return {"ready": True}

    @route("GET", "/v2/models/{name}")
    async def oip_model(self, name: str):
        return await self.oip_model_version(name, None)

    @route("GET", "/v2/models/{name}/ready")
    async def oip_model_ready(self, name: str):
        return await self.oip_model_version_ready(name, None)

    @route("GET", "/v2/models/{name}/versions/{version}")
    async def oip_model_version(self, name: str, version: Optional[str]):
        return await self.oip_call(name, lambda slot: oip.model_metadata(slot.name, slot.version, slot.classifier),
                                   version=version)

    @route("GET", "/v2/models/{name}/versions/{version}/ready")
    async def oip_model_version_ready(self, name: str, version: Optional[str]):
        return await self.oip_call(name, lambda slot: {"name": slot.name, "ready": True}, version=version)

    @route("POST", "/v2/models/{name}/infer")
    async def oip_infer(self, name: str, request: Request):
        return await self.oip_call(name, None, request)

    @route("POST", "/v2/models/{name}/versions/{version}/infer")
    async def oip_infer_version(self, name: str, version: str, request: Request):
        return await self.oip_call(name, None, request, version)

    async def oip_call(self, name: str, answer, request: Optional[Request] = None, version: Optional[str] = None):
        """A /v2 route's answer (its errors in the protocol's shape: middleware.error_response)."""
        with self.slot(name, "name").hold() as slot:
            if version is not None and version != slot.version:
                raise RequestError(404, "version", f"{name!r} serves version {slot.version}, not {version!r}")
            return answer(slot) if request is None else await self.oip_run(slot, request)

    async def oip_run(self, slot: Slot, request: Request) -> dict:
        header, texts = oip.parse_infer_request(await request.body(), request.headers.get(oip.HEADER_LENGTH),
                                                slot.classifier.pair)
        examples = check_texts(texts["text"], "inputs.text", slot.classifier.pair, self.config, texts.get("text_pair"))
        probs = await self.run_model(slot, examples)
        predictions = format_predictions(probs, slot.classifier.labels, 1, slot.classifier.model.decoder)
        return oip.infer_response(slot.name, slot.version, header, probs, predictions)

    # Label Studio's ML backend (ml_backend.py): under --label_studio_prefix, so that its /predict
    # is not ours. Label Studio sends every task it was asked about in one request: they go to the
    # batcher --max_texts_per_request at a time, so batching, limits and metrics are /predict's.

    @route("GET", "/health", prefix="label_studio_prefix")
    async def label_studio_health(self):
        """Label Studio's health check: up once the model is loaded (503 before, or if it failed)."""
        self.ready_batcher()
        return {"status": "UP", "model_class": "ptuning", "model_version": self.model_version}

    @route("POST", "/setup", prefix="label_studio_prefix")
    async def label_studio_setup(self, body: Any = Body(..., examples=[{"project": "1.1700000000", "schema": "<View>"
                                                                        "...</View>"}])):
        """The project's labelling config (`schema`) checked against the model: `{"model_version"}`,
        or a 422 naming `schema` when its control cannot hold this model's labels."""
        body = body_dict(body)
        field = "schema" if "schema" in body or "label_config" not in body else "label_config"
        if field not in body:
            raise RequestError(422, "schema", "is required: the project's labelling config")
        self.ready_batcher()
        self.label_studio_control(body[field], field)
        return {"model_version": self.model_version}

    @route("POST", "/predict", prefix="label_studio_prefix")
    async def label_studio_predict(self, body: Any = Body(..., examples=[{
            "tasks": [{"id": 1, "data": {"text": "央行宣布降准"}}], "label_config": "<View>...</View>"}])):
        """`{"tasks", "label_config", ...}` -> `{"results": [a prediction per task], "model_version"}`."""
        body = body_dict(body)
        for name in ("tasks", "label_config"):
            if name not in body:
                raise RequestError(422, name, "is required (Label Studio's predict request: tasks and label_config)")
        with self.slot(self.registry.default).hold() as slot:
            control = self.label_studio_control(body["label_config"], "label_config")
            classifier, step = slot.classifier, min(self.config.max_texts_per_request, self.config.max_queue)
            examples = ml_backend.task_examples(body["tasks"], control, classifier.pair, self.config)
            probs = [await self.run_model(slot, examples[start:start + step])
                     for start in range(0, len(examples), step)]
            return {"results": ml_backend.predictions(np.concatenate(probs), classifier, control, slot.version),
                    "model_version": slot.version}

    @route("POST", "/webhook", prefix="label_studio_prefix")
    async def label_studio_webhook(self, body: Any = Body(..., examples=[{"action": "TASKS_CREATED"}])):
        """Project events Label Studio sends on its own: acknowledged, nothing to do (the model is
        trained by train.py); its START_TRAINING action is /train's 501."""
        body = body_dict(body)
        if body.get("action") == ml_backend.START_TRAINING:
            return self.not_trained_here()
        return {"status": "ignored", "reason": "this model is trained by train.py, not from Label Studio's events"}

    @route("POST", "/train", prefix="label_studio_prefix")
    async def label_studio_train(self, body: Any = Body(None)):
        """Label Studio's "Start training": 501, this model is trained by train.py (docs/how-to/label-studio.md)."""
        return self.not_trained_here()

    @route("GET", "/versions", prefix="label_studio_prefix")
    async def label_studio_versions(self):
        self.ready_batcher()
        return {"versions": [self.model_version]}

    # What the Label Studio routes share

    @property
    def model_version(self) -> str:
        """The default model's version (what Label Studio records with its predictions)."""
        return self.slot(self.registry.default).version

    def label_studio_control(self, config: Any, field: str):
        try:
            return ml_backend.check_config(config, field, self.classifier)
        except RequestError as exc:  # (Label Studio shows the status only: the reason goes to the log too)
            logger.warning("Label Studio's %s refused: %s", field, exc.message)
            raise

    @staticmethod
    def not_trained_here():
        return error_response(501, "train", "this service does not train: train a model with train.py on the "
                                            "annotated data, export it and serve the new export")


def create_app(config: ServiceConfig, classifier=None, served_by: Optional[str] = None):
    """The FastAPI app around a loaded `utils.Classifier` (serve.py and Ray replicas load it first,
    so that a model that cannot load is an error before anything serves): ready from its start-up.
    Without one, the model loads in a thread at start-up: `/ready` answers 503 until it is loaded,
    and if it cannot be, `/health` answers 503 too (with the error), so no orchestrator keeps the
    process. `served_by` (a replica's node/pid under Ray Serve) is sent as the `X-Served-By` header
    of every response."""
    return Service(config, classifier, served_by).asgi()
