"""The flags of the scripts that use an export (infer.py, serve.py, client.py), and the groups they
share with explain.py: the device, and how onnxruntime runs the model. Paddle-free.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from typing import List, Optional, Tuple, Union

from ..choices import EventLoop, HttpParser, LogLevel, split_device
from ..errors import UserError
from .checks import positive

DEFAULT_OUTPUT = "infer_predictions.tsv"


@dataclass
class DeviceArguments:
    """Where the model runs (infer.py, serve.py, explain.py)."""

    device: Optional[str] = field(default=None, metadata={
        "help": "cpu, gpu or gpu:N (GPU N, as --device_id N). Default: gpu when onnxruntime-gpu's CUDA provider is "
                "available, else cpu."})
    device_id: int = field(default=0, metadata={"help": "The GPU's number."})

    def __post_init__(self):
        self.placement()

    def placement(self) -> Tuple[Optional[str], int]:
        """`(cpu|gpu|None, GPU number)`: --device and --device_id together (utils.choices.split_device)."""
        return split_device(self.device, self.device_id, "--")


@dataclass
class RuntimeArguments(DeviceArguments):
    """How onnxruntime runs an export (infer.py, serve.py): the Python API's `Classifier` arguments."""

    num_threads: Optional[int] = field(default=None, metadata={
        "aliases": ("--cpu_threads",), "help": "CPU threads (default: physical cores)."})
    use_fp16: bool = field(default=False, metadata={"help": "GPU: use the export's model_fp16.onnx."})
    use_int8: bool = field(default=False, metadata={
        "help": "Use the export's model_int8.onnx (export with --quantize int8); fastest on CPU."})
    max_seq_length: Optional[int] = field(default=None, metadata={
        "aliases": ("--max_length",),
        "help": "Tokens per input, prompt included (default and maximum: the exported value)."})

    def __post_init__(self):
        positive(self, "num_threads", "max_seq_length")
        super().__post_init__()


@dataclass
class InferArguments(RuntimeArguments):
    """infer.py: classify a file with an export."""

    model_path_prefix: Optional[str] = field(default=None, metadata={
        "required": True, "help": "Export directory, or its model prefix as upstream (checkpoints/export/model)."})
    data_dir: Optional[str] = field(default=None, metadata={"help": "Dataset folder: classify its data.txt."})
    input_file: Optional[str] = field(default=None, metadata={
        "help": "File of texts to classify (instead of --data_dir/data.txt)."})
    output_file: Optional[str] = field(default=None, metadata={
        "help": f"Where to write predictions (.tsv, or .jsonl for JSON lines). Default: {DEFAULT_OUTPUT}"})
    output_dir: Optional[str] = field(default=None, metadata={
        "help": f"Write {DEFAULT_OUTPUT} in this directory instead."})
    batch_size: int = field(default=32, metadata={
        "help": "Texts per batch (default %(default)s: with length-sorted batches, larger batches only cost memory "
                "on CPU; see BENCHMARKS.md)."})
    top_k: int = field(default=1, metadata={
        "help": "Also write the k best labels with confidences (multi-label: the k most probable, besides every "
                "label above its threshold)."})
    reject_threshold: Optional[float] = field(default=None, metadata={
        "help": "Multi-class: label a text --other_label when its top probability is below this (default: the "
                "export's, from train.py --reject_threshold; see the coverage table eval_coverage.tsv)."})
    other_label: Optional[str] = field(default=None, metadata={
        "text": True, "help": "The label of a rejected text (default: other)."})
    file_order: bool = field(default=False, metadata={
        "help": "Batch in file order instead of by length (slower; for comparisons)."})
    chunk_size: Optional[int] = field(default=None, metadata={
        "help": "Lines read, length-sorted and classified at a time (default 8192); with --ray, the unit of work "
                "sent to a worker. The same value gives the same output with or without --ray."})
    ray: Optional[str] = field(default=None, metadata={
        "metavar": "auto|HOST:PORT",
        "help": "Classify on a Ray cluster (pip install -r requirements-ray.txt): one worker per node, the same "
                "output file. `auto`: the cluster this machine is part of; else the head's address "
                "(utils/serving/ray_infer.py)."})
    model_name_or_path: Optional[str] = field(default=None, metadata={
        "aliases": ("--model_name",),
        "help": "Accepted for upstream compatibility and not needed: the export has its own tokenizer."})
    prompt: Optional[str] = field(default=None, metadata={"hidden": True})  # upstream deploy.py's: refused

    def __post_init__(self):
        from ..task.calibration import check_reject_options

        positive(self, "batch_size", "top_k", "chunk_size")
        super().__post_init__()
        check_reject_options(self.reject_threshold, self.other_label, "--")
        if self.prompt is not None:
            raise UserError("the export carries the template it was trained with (template.json, preprocess.json); "
                            "drop --prompt, or train and export a model with the prompt you want", "--prompt")
        if not self.input_file and not self.data_dir:
            raise UserError("give --input_file FILE or --data_dir DIR (which holds data.txt)", "infer.py")
        if self.output_file and self.output_dir:
            raise UserError("give --output_file or --output_dir, not both", "--output_dir")

    @property
    def input_path(self) -> str:
        return self.input_file or os.path.join(self.data_dir, "data.txt")

    @property
    def output_path(self) -> str:
        return self.output_file or os.path.join(self.output_dir or "", DEFAULT_OUTPUT)


MODULE_NEEDED = {EventLoop.UVLOOP: "uvloop", HttpParser.H11: "h11", HttpParser.HTTPTOOLS: "httptools"}
RAY_ONLY = ("replicas", "autoscaling_config", "max_ongoing_requests")


def parse_models(values: List[str]) -> dict:
    """--model NAME=EXPORT_DIR values -> {name: export dir}, in order; a name given twice is refused."""
    models = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise UserError(f"must be NAME=EXPORT_DIR, got {value!r}", "--model")
        if name in models:
            raise UserError(f"{name!r} is given twice", "--model")
        models[name] = path
    return models


@dataclass
class ServeArguments(RuntimeArguments):
    """serve.py: exports over HTTP. The service's own settings (`--name` to `--max_chars_per_text`, the keys,
    the swaps) are `utils.serving.app.ServiceConfig`'s fields, which checks them."""

    model_path_prefix: Optional[str] = field(default=None, metadata={
        "help": "Export directory (or its prefix dir/model), served as --name. Or --model, for one or more."})
    model: List[str] = field(default_factory=list, metadata={
        "repeatable": True, "metavar": "NAME=EXPORT_DIR",
        "help": "A model to serve as NAME (POST /models/NAME; /predict's \"model\" field): repeatable, the first is "
                "the default of the routes that name none (Label Studio's). Instead of --model_path_prefix."})
    host: str = field(default="127.0.0.1", metadata={"help": "Address to listen on (0.0.0.0: all)."})
    port: int = field(default=8189, metadata={"help": "0: any free port (the JSON line on stdout says which)."})
    name: str = field(default="cls_default", metadata={
        "text": True, "help": "The model's name in POST /models/<name> (with --ray: also the Serve application's; "
                              "with --ray and --model, only that)."})
    instances: str = field(default="auto", metadata={
        "metavar": "N|auto",
        "help": "Model workers, each running its own batches on the loaded model (Triton's instance count). auto "
                "(default; CPU with 2+ threads): a batch that runs alone gets every thread, two batches at once get "
                "half each, on a second onnxruntime session (the weights again in memory: --instances 1 when memory "
                "is short); on an idle 2-core machine the one setting with both a lone request's latency and infer.py's "
                "throughput at 32 clients (BENCHMARKS.md). N: on CPU each gets --num_threads / N threads. GPU, one "
                "thread, or a Ray Serve replica: auto is 1."})
    max_batch_size: int = field(default=32, metadata={"help": "Texts per model run."})
    max_wait_ms: float = field(default=5.0, metadata={
        "help": "How long a batch waits for more texts, from the oldest one's arrival or the last answers, whichever "
                "is later (no wait once every request of the last round is back)."})
    max_queue: int = field(default=2048, metadata={
        "help": "Texts allowed to wait; beyond, requests get 503 + Retry-After."})
    max_texts_per_request: int = field(default=256, metadata={"help": "Texts one request may send."})
    max_chars_per_text: int = field(default=8192, metadata={"help": "Characters one text may have."})
    label_studio_prefix: str = field(default="/label-studio", metadata={
        "help": "Where Label Studio's ML backend routes are ({prefix}/health, /setup, /predict, ...): give Label "
                "Studio http://HOST:PORT/label-studio as the backend's URL (docs/how-to/label-studio.md)."})
    log_level: LogLevel = field(default=LogLevel.INFO, metadata={"help": "uvicorn's (debug: with the access log)."})
    loop: EventLoop = field(default=EventLoop.AUTO, metadata={
        "help": "uvicorn's event loop (auto: uvloop when installed, as requirements.txt does)."})
    http: HttpParser = field(default=HttpParser.AUTO, metadata={
        "help": "uvicorn's HTTP parser (auto: httptools when installed)."})
    ray: Optional[str] = field(default=None, metadata={
        "metavar": "auto|HOST:PORT",
        "help": "Ray Serve (pip install -r requirements-ray.txt; utils/serving/ray_serve.py): serve as a Ray Serve "
                "deployment on this Ray cluster (`auto`: the one on this node); --host/--port are then those of "
                "Ray Serve's HTTP proxies."})
    replicas: Optional[str] = field(default=None, metadata={
        "metavar": "N|auto",
        "help": "With --ray: replicas, each one model and one micro-batcher (default 1; `auto`: Ray's autoscaling)."})
    autoscaling_config: Optional[str] = field(default=None, metadata={
        "metavar": "JSON",
        "help": "With --ray: Ray Serve AutoscalingConfig fields, passed through, e.g. "
                "'{\"min_replicas\": 1, \"max_replicas\": 8, \"target_ongoing_requests\": 32}'."})
    max_ongoing_requests: Optional[int] = field(default=None, metadata={
        "help": "With --ray: requests one replica holds at once (default: 4 x --max_batch_size, so batches fill)."})
    route_prefix: str = field(default="/", metadata={
        "help": "With --ray: where the app's endpoints start on the proxies."})
    api_key_file: Optional[str] = field(default=None, metadata={
        "help": "Require an API key: the file's keys (one a line, 16+ characters; re-read when it changes), sent as "
                "`Authorization: Bearer KEY` (401 without; /health, /ready and /v2/health/* stay open)."})
    admin_key_file: Optional[str] = field(default=None, metadata={
        "help": "Enable the admin routes (POST /admin/models/NAME: swap in a new export) for these keys."})
    allow_label_change: bool = field(default=False, metadata={
        "help": "Let a swap bring another label set (or task type) under the same name (announced in /labels)."})
    watch_interval_s: float = field(default=0.0, metadata={
        "help": "Every this many seconds, look where each model was loaded from for a new complete export (as "
                "export.py lands one: by a rename) and swap it in with no downtime. 0: never."})

    def __post_init__(self):
        super().__post_init__()
        self.models = parse_models(self.model)
        if self.models and self.model_path_prefix is not None:
            raise UserError("give --model_path_prefix (one model) or --model NAME=EXPORT_DIR (one or more), not both",
                            "--model")
        if self.models and self.name != "cls_default" and not self.ray:
            raise UserError("names the --model_path_prefix model; --model NAME=EXPORT_DIR names its own", "--name")
        lowest = 1 if self.ray else 0
        if not lowest <= self.port < 65536:
            raise UserError(f"must be in {lowest}..65535{'' if self.ray else ' (0: any free port)'}, got {self.port}",
                            "--port")
        if self.ray:
            self._check_ray()
            return
        for name in RAY_ONLY:
            if getattr(self, name) is not None:
                raise UserError("only with --ray", f"--{name}")
        for flag, choice in (("loop", self.loop), ("http", self.http)):
            module = MODULE_NEEDED.get(choice)
            if module and importlib.util.find_spec(module) is None:
                raise UserError(f"{module} is not installed (pip install 'uvicorn[standard]')", f"--{flag}")

    def _check_ray(self) -> None:
        for flag in ("loop", "http"):
            if getattr(self, flag) != "auto":
                raise UserError("is for serve.py's own uvicorn; with --ray, Ray Serve's HTTP proxies serve",
                                f"--{flag}")
        if self.placement()[1]:
            raise UserError("does not apply with --ray: Ray assigns each replica its GPU", "--device_id")
        if self.replicas not in (None, "auto") and not self.replicas.isdigit():
            raise UserError(f"must be a positive integer or `auto`, got {self.replicas!r}", "--replicas")

    @property
    def replica_count(self) -> Union[int, str, None]:
        """--replicas as Ray Serve takes it (`auto`, a number), 1 when neither it nor --autoscaling_config is given."""
        if self.replicas is None:
            return None if self.autoscaling_config is not None else 1
        return self.replicas if self.replicas == "auto" else int(self.replicas)


@dataclass
class ClientArguments:
    """client.py: texts to serve.py in SimpleServing's format."""

    url: str = field(default="http://127.0.0.1:8189/models/cls_default", metadata={
        "help": "The model's endpoint: serve.py's POST /models/<name>."})
    text: List[str] = field(default_factory=list, metadata={
        "repeatable": True, "text": True, "help": "A text to classify (repeatable)."})
    input_file: Optional[str] = field(default=None, metadata={
        "help": "One text per line (text_a<TAB>text_b for pair models)."})
    batch_size: int = field(default=32, metadata={"help": "Texts per request."})
    max_seq_len: Optional[int] = field(default=None, metadata={
        "help": "Tokens per input (SimpleServing's max_seq_len; default: the export's)."})
    top_k: int = field(default=1, metadata={"help": "Also the k best labels of each text."})
    prob_limit: Optional[float] = field(default=None, metadata={
        "help": "Multi-label/hierarchical models: one threshold for every label instead of the model's."})
    timeout: float = field(default=60.0, metadata={"help": "Seconds to wait for an answer."})

    def __post_init__(self):
        positive(self, "batch_size", "timeout")
        if not self.text and not self.input_file:
            raise UserError("give --text TEXT or --input_file FILE", "client.py")
