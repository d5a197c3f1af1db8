"""What serve.py serves and how (`ServiceConfig`): the export, the device, batching and request limits."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Union

from ..errors import UserError

DEFAULT_NAME = "cls_default"
MAX_INSTANCES = 64  # model workers on one device: more is a typo (each a thread and a run in memory)
AUTO = "auto"  # --instances auto: see ServiceConfig.workers


def _positive_int(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and value > 0


# The first path segments of the service's other routes (FastAPI's /docs, /redoc, /openapi.json too):
# a prefix starting with one would hide its routes or be hidden by them (POST /models/{name}).
TAKEN_SEGMENTS = ("models", "predict", "health", "ready", "labels", "metrics", "docs", "redoc", "openapi.json", "admin",
                  "v2")
PREFIX_CHARACTERS = re.compile(r"(/[A-Za-z0-9._~-]+)+")


def check_prefix(prefix) -> None:
    """--label_studio_prefix: a path of one or more segments (`/label-studio`, `/ls/v1`) that no other
    route of the service starts with."""
    flag = "--label_studio_prefix"
    if not isinstance(prefix, str) or not PREFIX_CHARACTERS.fullmatch(prefix):
        raise UserError(f"must be a URL path such as /label-studio (segments of letters, digits, '.', '_', '~', '-', "
                        f"no trailing '/'), got {prefix!r}", flag)
    first = prefix.split("/")[1]
    if first in TAKEN_SEGMENTS or first in (".", ".."):
        raise UserError(f"{prefix!r} would clash with the service's /{first} route", flag)


def check_model_name(name, flag: str) -> None:
    """A model's name: a URL path segment (/models/NAME, /v2/models/NAME): not empty, without '/' or spaces."""
    if (not isinstance(name, str) or not name or "/" in name or name in (".", "..")
            or any(c.isspace() for c in name)):
        raise UserError(f"must be a non-empty name without '/' or spaces (a URL path segment), got {name!r}", flag)


@dataclass
class ServiceConfig:
    """Everything `serve.py` takes besides host and port (its flags mirror infer.py's). One model
    (`model_path_prefix` served as `name`), or several (`models`: name -> export directory, in the
    order given; the first is the default of the routes that name none)."""

    model_path_prefix: Optional[str] = None
    name: str = DEFAULT_NAME
    device: Optional[str] = None
    device_id: int = 0
    num_threads: Optional[int] = None
    use_fp16: bool = False
    use_int8: bool = False
    max_seq_length: Optional[int] = None
    instances: Union[int, str] = AUTO  # model workers; `auto`: a lone batch on every thread, two at once on half each
    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 2048            # texts waiting, over all requests
    max_texts_per_request: int = 256
    max_chars_per_text: int = 8192
    default_top_k: int = 1
    label_studio_prefix: str = "/label-studio"  # where Label Studio's ML backend routes are (ml_backend.py)
    models: Dict[str, str] = field(default_factory=dict)  # --model NAME=EXPORT_DIR, repeatable
    api_key_file: Optional[str] = None    # keys (one a line) a request must bring as Authorization: Bearer KEY
    admin_key_file: Optional[str] = None  # keys of the /admin routes (without it, they are disabled)
    allow_label_change: bool = False      # a swap may bring another label set under the same name
    watch_interval_s: float = 0.0         # scan the served export paths for a new export (0: never)

    def __post_init__(self):
        if isinstance(self.instances, str) and self.instances.isdigit():  # --instances 2 from the command line
            self.instances = int(self.instances)
        if self.instances != AUTO and not _positive_int(self.instances):
            raise UserError(f"must be a positive integer or `auto`, got {self.instances!r}", "--instances")
        for name in ("max_batch_size", "max_queue", "max_texts_per_request", "max_chars_per_text", "default_top_k"):
            if not _positive_int(getattr(self, name)):
                raise UserError(f"must be a positive integer, got {getattr(self, name)!r}", f"--{name}")
        if not self.max_wait_ms >= 0:
            raise UserError(f"must be zero or more, got {self.max_wait_ms}", "--max_wait_ms")
        check_model_name(self.name, "--name")
        if self.models:
            if self.model_path_prefix is not None:
                raise UserError("give --model_path_prefix (one model) or --model NAME=EXPORT_DIR (one or more), "
                                "not both", "--model")
            for name, path in self.models.items():
                check_model_name(name, "--model")
                if not isinstance(path, str) or not path:
                    raise UserError(f"{name}=: the export directory is missing (--model NAME=EXPORT_DIR)", "--model")
        elif not isinstance(self.model_path_prefix, str) or not self.model_path_prefix:
            raise UserError("give the export directory: --model_path_prefix DIR, or --model NAME=DIR (repeatable)",
                            "--model_path_prefix")
        if not self.watch_interval_s >= 0:
            raise UserError(f"must be zero (off) or more seconds, got {self.watch_interval_s}", "--watch_interval_s")
        check_prefix(self.label_studio_prefix)
        for name in ("num_threads", "max_seq_length"):  # infer.py's checks and words: the same error for the same flag
            value = getattr(self, name)
            if value is not None and not _positive_int(value):
                raise UserError(f"must be positive, got {value}", f"--{name}")
        if self.instances == AUTO:
            return
        if self.instances > MAX_INSTANCES:
            raise UserError(f"is {self.instances}; at most {MAX_INSTANCES} (model workers on one device)", "--instances")
        if self.num_threads is not None and self.instances > self.num_threads and self._device() == "cpu":
            raise UserError(f"is {self.instances}, more than --num_threads {self.num_threads}: on CPU each instance "
                            "runs on its share of the threads, at least one", "--instances")

    @property
    def exports(self) -> Dict[str, str]:
        """Every served model's name -> its export path (as given), the default model first."""
        return dict(self.models) if self.models else {self.name: self.model_path_prefix}

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
        `num_threads` (default: physical cores), as instances run side by side (`auto`: all of them,
        for the batch that runs alone); GPU: as given."""
        if device != "cpu":
            return self.num_threads
        return max(1, self._cpu_threads() // (1 if self.instances == AUTO else self.instances))

    def _cpu_threads(self) -> int:
        from ..deploy.classifier import default_num_threads

        return self.num_threads or default_num_threads()

    def split_threads(self, device: str) -> Optional[int]:
        """`--instances auto` on CPU with 2+ threads: the threads of the split path's session (half of
        them; a batch that runs beside another gets that share), else None (no split path)."""
        if self.instances != AUTO or device != "cpu" or self._cpu_threads() < 2:
            return None
        return self._cpu_threads() // 2

    def workers(self, device: str, split_path: bool = True) -> int:
        """Model worker threads of a batcher: `--instances N`: N; `auto`: 2 when there is a split path
        (a lone batch on every thread, two at once on half each), else 1. `split_path=False`: no split
        session was made for this model (a Ray Serve replica: Ray scales by replicas), so one worker:
        two on the one all-threads session would oversubscribe the cores."""
        if self.instances == AUTO:
            return 2 if split_path and self.split_threads(device) else 1
        return self.instances

    @property
    def max_body_bytes(self) -> int:
        """The largest request body the service reads: texts and their pairs at the limits, every
        character JSON-escaped at its longest (an emoji's two \\uXXXX: 12 bytes), plus 64 KiB for
        the rest. A larger body can hold no valid request, so it is refused unparsed."""
        return 2 * self.max_texts_per_request * self.max_chars_per_text * 12 + 65536
