"""The service's Prometheus metrics."""
from __future__ import annotations


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
        self.ready = Gauge("ptuning_ready", "1 when the model is loaded and requests are accepted",
                           registry=self.registry)
