"""The service's Prometheus metrics: the service's own, and per model (labelled by its name and version)."""
from __future__ import annotations

from typing import Dict


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
        self.long_texts = Counter("ptuning_long_texts", "Texts longer than one input (a --long_text model: read as "
                                  "head+tail or windows)", registry=self.registry)
        self.windows = Counter("ptuning_windows", "Inputs read for the texts of a --long_text model (its windows)",
                               registry=self.registry)
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
        self.batch_paths = Counter("ptuning_batch_paths", "Batches run by path (--instances auto): full = alone, "
                                   "on every thread; split = beside another batch, on a share", ["path"],
                                   registry=self.registry)
        self.ready = Gauge("ptuning_ready", "1 when the model is loaded and requests are accepted",
                           registry=self.registry)
        # Per model (several models, zero-downtime swaps): series labelled by the model's name and version.
        self.model_info = Gauge("ptuning_model_info", "1 for the version each model serves now",
                                ["model", "version"], registry=self.registry)
        self.model_ready = Gauge("ptuning_model_ready", "1 when the model serves", ["model"], registry=self.registry)
        self.model_texts = Counter("ptuning_model_texts", "Texts classified, by model and version",
                                   ["model", "version"], registry=self.registry)
        self.model_queue = Gauge("ptuning_model_queue_texts", "Texts waiting for the model", ["model"],
                                 registry=self.registry)
        self.model_seconds_by_model = Counter("ptuning_model_busy_seconds", "Time the model's workers spent on "
                                              "batches", ["model", "version"], registry=self.registry)
        self.swaps = Counter("ptuning_model_swaps", "Exports offered to replace a model, by outcome (swapped, "
                             "refused: the old one kept serving, conflict: another was loading, abandoned: "
                             "shutdown)", ["model", "outcome"], registry=self.registry)
        self._queued: Dict[str, int] = {}

    def set_queued(self, model: str, texts: int) -> None:
        """A model's queue (its batcher's: the model's versions share it): the model's gauge and the total."""
        self._queued[model] = texts
        self.model_queue.labels(model).set(texts)
        self.queue_depth.set(sum(self._queued.values()))


class ModelMetrics:
    """What a `Batcher` records, for one model version: its queue in the model's and the service's
    gauges, its batches and busy time in the service's and the model's series."""

    def __init__(self, metrics: Metrics, model: str, version: str):
        self.metrics, self.model = metrics, model
        self.batch_size, self.batch_paths = metrics.batch_size, metrics.batch_paths
        self.long_texts, self.windows = metrics.long_texts, metrics.windows  # --long_text: the service's counts
        self.model_seconds = _Both(metrics.model_seconds, metrics.model_seconds_by_model.labels(model, version))
        self.queue_depth = _Queue(metrics, model)


class _Both:
    def __init__(self, *counters):
        self.counters = counters

    def inc(self, amount: float = 1) -> None:
        for counter in self.counters:
            counter.inc(amount)


class _Queue:
    def __init__(self, metrics: Metrics, model: str):
        self.metrics, self.model = metrics, model

    def set(self, texts: int) -> None:
        self.metrics.set_queued(self.model, texts)
