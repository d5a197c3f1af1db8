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
from typing import Any, List, Optional

import numpy as np
from fastapi import Body, FastAPI

from ..errors import UserError
from . import ml_backend
from .batcher import Batcher
from .config import ServiceConfig
from .metrics import Metrics
from .middleware import BodyLimit, Measure, add_error_handlers, error_response
from .requests import (RequestError, body_dict, check_fields, check_max_seq_len, check_positive, check_texts,
                       check_threshold, check_top_k, format_predictions, overloaded)

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
    """One export behind HTTP: the classifier, its batcher and metrics, and one method per route.
    serve.py runs `Service(...).asgi()` in uvicorn; a Ray Serve replica is a subclass
    (utils/serving/ray_serve.py) whose app Serve builds the same way."""

    def __init__(self, config: ServiceConfig, classifier=None, served_by: Optional[str] = None):
        self.config, self.classifier, self.served_by = config, classifier, served_by
        self.metrics = Metrics()
        self.batcher: Optional[Batcher] = None
        self.error: Optional[str] = None  # why the model could not be loaded
        self._model_version: Optional[str] = None

    def asgi(self):
        """The FastAPI app of this service: its routes, error handlers, middleware and lifespan."""
        app = FastAPI(title="P-tuning text classification", lifespan=self.lifespan,
                      description="Serves an export directory (onnxruntime, no Paddle). SimpleServing-compatible.")
        app.add_middleware(BodyLimit, limit=self.config.max_body_bytes)
        app.add_middleware(Measure, metrics=self.metrics, served_by=self.served_by)  # outside BodyLimit: its 413s count
        add_error_handlers(app)
        for name, member in vars(Service).items():  # (in the order defined: the order of /openapi.json)
            if hasattr(member, "route"):
                method, path, prefix = member.route
                path = (getattr(self.config, prefix) if prefix else "") + path
                app.add_api_route(path, getattr(self, name), methods=[method])
        app.state.service, app.state.metrics, app.state.config = self, self.metrics, self.config
        return app

    # Start-up and shutdown

    def load(self) -> None:
        from ..deploy.classifier import Classifier

        self.classifier = Classifier(self.config.model_path_prefix, **self.config.classifier_options())

    def start(self) -> None:
        config = self.config
        batcher = Batcher(self.classifier.model, config.max_batch_size, config.max_wait_ms, config.max_queue,
                          self.metrics, split_by_length=self.classifier.device == "cpu", workers=config.instances)
        batcher.start()
        self.batcher = batcher
        self.metrics.ready.set(1)
        logger.info("serving %s as %r", self.classifier, config.name)

    async def load_and_start(self) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.load)
            self.start()
        except Exception as exc:  # reported by /health, /ready and every request: the process is not healthy
            self.error = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
            logger.error("the model could not be loaded: %s", self.error)

    @asynccontextmanager
    async def lifespan(self, app):
        """Ready from the first request when the classifier is given (loaded before anything
        serves), else loaded in a thread meanwhile; on shutdown the queued requests are answered."""
        loading = None
        if self.classifier is None:
            loading = asyncio.get_running_loop().create_task(self.load_and_start())
        else:
            self.start()  # before the server accepts anything: ready from the first request
        yield
        self.metrics.ready.set(0)
        if loading is not None:
            await loading
        if self.batcher is not None:
            await self.batcher.close()  # uvicorn has let in-flight requests finish; drain the rest

    # What the routes share

    def ready_batcher(self) -> Batcher:
        if self.error:
            raise RequestError(503, "service", f"the model could not be loaded: {self.error}")
        if self.batcher is None:
            raise overloaded("the model is still loading; retry shortly")
        return self.batcher

    async def classify(self, examples: List[dict], top_k: int, max_seq_length: Optional[int] = None,
                       threshold: Optional[float] = None) -> List[dict]:
        probs = await self.ready_batcher().submit(examples, max_seq_length)
        self.metrics.texts.inc(len(examples))
        return format_predictions(probs, self.classifier.labels, top_k, self.classifier.model.decoder, threshold)

    # The routes

    @route("GET", "/health")
    async def health(self):
        """Liveness: the process answers, and its model did not fail to load (503 with the error then)."""
        if self.error:
            return error_response(503, "service", f"the model could not be loaded: {self.error}")
        return {"status": "ok"}

    @route("GET", "/ready")
    async def ready(self):
        """Readiness: the model is loaded and requests are accepted (503 while loading or draining)."""
        if self.error:
            return error_response(503, "service", f"the model could not be loaded: {self.error}")
        if self.batcher is None or self.batcher.closing:
            return error_response(503, "service", "not ready (loading or shutting down)", {"Retry-After": "1"})
        return {"status": "ready", "model": self.config.name}

    @route("GET", "/labels")
    async def labels(self):
        self.ready_batcher()
        classifier = self.classifier
        return {"model": self.config.name, "labels": classifier.labels, "pair": classifier.pair,
                "task_type": classifier.task_type, "thresholds": classifier.thresholds,
                # calibration and the reject option the export carries (applied to every prediction)
                "temperature": classifier.model.decoder.temperature,
                "reject_threshold": classifier.model.decoder.reject_threshold,
                "other_label": classifier.model.decoder.other_label}

    @route("GET", "/metrics")
    async def prometheus(self):
        from fastapi.responses import Response
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @route("POST", "/predict")
    async def predict(self, body: Any = Body(..., examples=[{"texts": ["央行宣布降准"], "top_k": 2}])):
        """`{"texts": [...], "top_k": k}` -> `{"predictions": [{label, confidence, top_k}]}`."""
        body = body_dict(body)
        check_fields(body, ("texts", "top_k", "threshold"))
        if "texts" not in body:
            raise RequestError(422, "texts", "is required")
        self.ready_batcher()
        classifier, config = self.classifier, self.config
        examples = check_texts(body["texts"], "texts", classifier.pair, config)
        top_k = check_top_k(body.get("top_k"), "top_k", len(classifier.labels), config.default_top_k)
        threshold = check_threshold(body.get("threshold"), "threshold")
        if threshold is not None and not classifier.model.decoder.multi_label:
            raise RequestError(422, "threshold", "is for multi-label models; this one is multi-class (it predicts "
                                                 "its best label)")
        return {"model": config.name, "predictions": await self.classify(examples, top_k, threshold=threshold)}

    @route("POST", "/models/{name}")
    async def simple_serving(self, name: str, body: Any = Body(..., examples=[{
            "data": {"text": ["央行宣布降准"]}, "parameters": {"max_seq_len": 128, "batch_size": 32}}])):
        """PaddleNLP SimpleServing's request body, unchanged; `{"result": [...]}`."""
        config = self.config
        if name != config.name:
            raise RequestError(404, "name", f"no model {name!r} here; this service serves {config.name!r}")
        body = body_dict(body)
        data = body_dict(body.get("data"), "data") if "data" in body else None
        if data is None or "text" not in data:
            raise RequestError(422, "data.text", "is required: {\"data\": {\"text\": [...]}}")
        parameters = body_dict(body.get("parameters") or {}, "parameters")
        self.ready_batcher()
        classifier = self.classifier
        examples = check_texts(data["text"], "data.text", classifier.pair, config, data.get("text_pair"))
        max_seq_length = check_max_seq_len(parameters.get("max_seq_len"), classifier.model)
        # batch_size is the service's business (--max_batch_size); prob_limit is the multi-label
        # threshold: a multi-class model returns its best label whatever its probability (as upstream).
        check_positive(parameters.get("batch_size"), "parameters.batch_size")
        prob_limit = check_threshold(parameters.get("prob_limit"), "parameters.prob_limit")
        top_k = check_top_k(parameters.get("top_k"), "parameters.top_k", len(classifier.labels), config.default_top_k)
        return {"result": await self.classify(examples, top_k, max_seq_length, threshold=prob_limit)}


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
        batcher = self.ready_batcher()
        control = self.label_studio_control(body["label_config"], "label_config")
        classifier, step = self.classifier, min(self.config.max_texts_per_request, self.config.max_queue)
        examples = ml_backend.task_examples(body["tasks"], control, classifier.pair, self.config)
        probs = [await batcher.submit(examples[start:start + step]) for start in range(0, len(examples), step)]
        self.metrics.texts.inc(len(examples))
        version = self.model_version
        return {"results": ml_backend.predictions(np.concatenate(probs), classifier, control, version),
                "model_version": version}

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
        if self._model_version is None:
            self._model_version = ml_backend.model_version(self.config.name, self.classifier.model)
        return self._model_version

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
