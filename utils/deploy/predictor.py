"""Serving an export directory with onnxruntime: no Paddle, no PLM weights, no conversion at run time.

Reads only JSON, the vocab and the ONNX file from the export directory (utils/deploy/format.py), each
checked against the size and sha256 recorded in manifest.json (utils/deploy/bundle.py).
"""
from __future__ import annotations

import time
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import UserError
from ..task.decoding import Decoder
from .bundle import (BackgroundSha256, check_file, read_decoder, read_labels, read_manifest, resolve_export_dir,
                           verify_file)
from .format import LABELS_FILE, MEMBER_OUTPUT, OUTPUT_NAME, PREPROCESS_FILE
from ..files import count_lines
from ..dataset.inputs import InputFile
from .predictions import PredictionWriter, prediction_summary
from .preprocess import PromptPreprocessor, read_config
from .priority import heavy
from ..progress import Progress
from ..task.windows import WindowCounts, aggregate, mean_rows

__all__ = ["ExportedClassifier", "classify_file", "classify_stream", "create_session", "pick_model_file",
           "resolve_export_dir"]

# Lines classified at a time by classify_file: memory stays flat however long the file is, and
# length-sorting within 8192 texts leaves batches of 32 about as little padding as a global sort.
CHUNK_SIZE = 8192


def create_session(model_path: str, device: str = "cpu", device_id: int = 0, num_threads: Optional[int] = None,
                   allow_spinning: bool = True):
    """An onnxruntime session on CPU or CUDA, with clear errors for the usual set-up mistakes.
    `allow_spinning=False`: the intra-op threads sleep as soon as they run out of work instead of
    spin-waiting for more (onnxruntime's default, best when nothing else needs the cores; serve.py
    turns it off: its event loop shares the cores and the model idles between batches)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if num_threads:
        options.intra_op_num_threads = int(num_threads)
    options.inter_op_num_threads = 1
    if not allow_spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if device == "gpu":
        available = ort.get_available_providers()
        if "CUDAExecutionProvider" not in available:
            raise UserError(
                f"--device gpu needs onnxruntime-gpu, but this onnxruntime ({ort.__version__}) offers only "
                f"{', '.join(available)}. Install the GPU build alone (having both breaks it): "
                "`pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu`; "
                "or run with --device cpu", "--device")
        providers = [("CUDAExecutionProvider", {"device_id": int(device_id)}), "CPUExecutionProvider"]
    elif device == "cpu":
        providers = ["CPUExecutionProvider"]
    else:
        raise UserError(f"must be cpu or gpu, got {device!r}", "--device")
    try:
        with heavy():  # a swap's build: niced (it releases the GIL); its pool threads inherit the nice
            session = ort.InferenceSession(model_path, sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
        raise UserError(f"onnxruntime cannot load the model (corrupt file?): {type(exc).__name__}: {exc}",
                        model_path) from None
    if device == "gpu" and session.get_providers()[0] != "CUDAExecutionProvider":
        raise UserError("onnxruntime-gpu is installed but the CUDA provider did not start (CUDA/cuDNN libraries "
                        "missing or not matching this onnxruntime-gpu build); see onnxruntime.ai's CUDA "
                        "requirements, or use --device cpu", "--device")
    return session


def pick_model_file(manifest: dict, export_dir: str, device: str, use_fp16: bool, use_int8: bool) -> str:
    """The ONNX file of the export to serve: fp16 (GPU, with `use_fp16`), int8 (`use_int8`) or fp32."""
    onnx_files = manifest["onnx"]
    if use_fp16 and device == "gpu":
        if not onnx_files.get("fp16"):
            raise UserError("--use_fp16: this export has no fp16 model; export it with --export_fp16", export_dir)
        return onnx_files["fp16"]
    if use_int8:
        if not onnx_files.get("int8"):
            raise UserError("--use_int8: this export has no int8 model; export it with --quantize int8", export_dir)
        return onnx_files["int8"]
    return onnx_files["fp32"]


class ExportedClassifier:
    """An export directory ready to classify texts. Every file it reads is first checked against
    manifest.json (size, sha256); the model file is hashed in a thread while its session is built."""

    def __init__(self, export_dir: str, device: str = "cpu", device_id: int = 0, num_threads: Optional[int] = None,
                 use_fp16: bool = False, max_seq_length: Optional[int] = None, model_file: Optional[str] = None,
                 use_int8: bool = False, allow_spinning: bool = True):
        self.export_dir = export_dir
        self.manifest = read_manifest(export_dir)
        self.model_file = model_file or pick_model_file(self.manifest, export_dir, device, use_fp16, use_int8)
        for name in (self.model_file, LABELS_FILE, PREPROCESS_FILE):
            check_file(export_dir, self.manifest, name)  # missing or truncated files first, before any hashing
        exported_max = self.manifest["max_seq_length"]
        if max_seq_length and max_seq_length > exported_max:
            raise UserError(f"is {max_seq_length}, longer than the {exported_max} the model was trained and "
                            "exported with", "--max_seq_length")
        model_hash = BackgroundSha256(export_dir, self.manifest, self.model_file)  # as early as possible
        model_path = model_hash.path
        try:
            for name in (LABELS_FILE, PREPROCESS_FILE):
                verify_file(export_dir, self.manifest, name)
            config = read_config(export_dir)
            verify_file(export_dir, self.manifest, config["tokenizer"]["vocab_file"])
            self.labels = read_labels(export_dir)
            self.decoder = read_decoder(export_dir, self.manifest, self.labels)
            self.preprocessor = PromptPreprocessor(config, export_dir, max_seq_length)
            self.session = create_session(model_path, device, device_id, num_threads, allow_spinning)
            self._session_args = (model_path, device, device_id, num_threads, allow_spinning)
        except UserError:
            model_hash.check()  # a model that differs from the manifest explains a failure best
            raise
        model_hash.check()
        self.first_prediction_time: Optional[float] = None  # wall-clock time of the first batch's logits
        self.window_counts = WindowCounts()  # --long_text: texts longer than one input, inputs read (so far)
        self.input_names = [i.name for i in self.session.get_inputs()]
        fed = self.preprocessor.input_names
        if set(self.input_names) - set(fed):
            raise UserError(f"the ONNX model expects inputs {self.input_names}; {PREPROCESS_FILE} gives {fed}",
                            model_path)
        outputs = self.session.get_outputs()[0].shape
        if len(outputs) == 2 and isinstance(outputs[1], int) and outputs[1] != len(self.labels):
            raise UserError(f"the ONNX model outputs {outputs[1]} logits, {LABELS_FILE} lists {len(self.labels)} "
                            "labels; export again", model_path)

    def with_threads(self, num_threads: int) -> "ExportedClassifier":
        """This classifier (the same verified files, preprocessor and decoder) on a second onnxruntime
        session of `num_threads` intra-op threads: serve.py `--instances auto`'s split path. The second
        session holds its own copy of the weights (BENCHMARKS.md, "--instances auto": its RSS)."""
        import copy

        model_path, device, device_id, _, allow_spinning = self._session_args
        sibling = copy.copy(self)
        sibling.session = create_session(model_path, device, device_id, num_threads, allow_spinning)
        return sibling

    @property
    def text_keys(self) -> List[str]:
        return list(self.preprocessor.text_keys)

    def encoder(self, max_seq_length: Optional[int] = None) -> PromptPreprocessor:
        """The preprocessor for `max_seq_length` (None: this classifier's; at most the exported length)."""
        if not max_seq_length or max_seq_length == self.preprocessor.max_seq_length:
            return self.preprocessor
        exported_max = self.manifest["max_seq_length"]
        if max_seq_length > exported_max:
            raise UserError(f"is {max_seq_length}, longer than the {exported_max} the model was exported with",
                            "max_seq_length")
        cache = self.__dict__.setdefault("_encoders", {})
        if max_seq_length not in cache:
            cache[max_seq_length] = PromptPreprocessor(read_config(self.export_dir), self.export_dir, max_seq_length)
        return cache[max_seq_length]

    def run(self, features: List[Dict[str, List[int]]], batch_size: int = 32, sort_by_length: bool = True,
            on_batch: Optional[Callable[[int], None]] = None) -> np.ndarray:
        """Logits for encoded `features` (from any `encoder()`), in their order, batch by batch."""
        if not features:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        return self.run_outputs(features, (OUTPUT_NAME,), batch_size, sort_by_length, on_batch)[OUTPUT_NAME]

    @property
    def output_names(self) -> List[str]:
        """The ONNX model's outputs: `logits` first; an ensemble's `member_logits`; newer exports'
        `mask_embedding` (utils/deploy/format.py)."""
        return [output.name for output in self.session.get_outputs()]

    def run_outputs(self, features: List[Dict[str, List[int]]], names: Sequence[str], batch_size: int = 32,
                    sort_by_length: bool = True, on_batch: Optional[Callable[[int], None]] = None
                    ) -> Dict[str, np.ndarray]:
        """The outputs `names` (only those are fetched) for encoded `features`, in their order, each
        batch-first (`member_logits`: `[texts, members, labels]`)."""
        out: Dict[str, np.ndarray] = {}
        order = np.arange(len(features))
        if sort_by_length:
            order = np.argsort([len(f["input_ids"]) for f in features], kind="stable")
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size]
            batch = self.preprocessor.pad([features[i] for i in index])
            with heavy():  # a swap's warm-up runs niced; serving's runs are unchanged
                results = self.session.run(list(names), {name: batch[name] for name in self.input_names})
            for name, result in zip(names, results):
                if name == MEMBER_OUTPUT:
                    result = result.transpose(1, 0, 2)
                if name not in out:
                    out[name] = np.zeros((len(features), *result.shape[1:]), dtype=np.float32)
                out[name][index] = result
            if self.first_prediction_time is None:
                self.first_prediction_time = time.time()
            if on_batch is not None:
                on_batch(len(index))
        return out

    def logits(self, examples: List[dict], batch_size: int = 32, sort_by_length: bool = True,
               progress: Optional[bool] = None, on_batch: Optional[Callable[[int], None]] = None) -> np.ndarray:
        """Logits for in-memory `examples`, in their order. Batches are formed from length-sorted
        examples (less padding) unless `sort_by_length=False`. `progress`: show a progress bar
        (default: when there is more than one batch and no `on_batch`); `on_batch(n)` is called
        after each batch of n examples."""
        if not examples:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        show = progress if progress is not None else (on_batch is None and len(examples) > batch_size)
        with Progress(len(examples), enabled=show) as bar:
            def done(n: int) -> None:
                bar.update(n)
                if on_batch is not None:
                    on_batch(n)

            return self.document_outputs(examples, (OUTPUT_NAME,), batch_size, sort_by_length, done)[OUTPUT_NAME]

    def document_outputs(self, examples: List[dict], names: Sequence[str], batch_size: int = 32,
                         sort_by_length: bool = True, on_batch: Optional[Callable[[int], None]] = None
                         ) -> Dict[str, np.ndarray]:
        """`run_outputs` for `examples`, one row per document: under --long_text each document's windows
        are run and aggregated (`logits` as the model was trained to; `mask_embedding`, the text's
        vector, the mean of its windows'). `on_batch(n)` counts documents, not windows."""
        inputs, pieces = self.preprocessor.split(examples)  # --long_text: a document's windows
        counter = _DocumentCounter(len(examples), len(inputs), on_batch)
        arrays = self.run_outputs(self.preprocessor.encode(inputs), names, batch_size, sort_by_length, counter)
        if not self.preprocessor.long_text.active:
            return arrays
        counts = [len(piece.texts) for piece in pieces]
        out: Dict[str, np.ndarray] = {}
        for name, array in arrays.items():
            if name == OUTPUT_NAME:
                out[name] = self.documents(array, pieces)
            elif name == MEMBER_OUTPUT:  # each member's windows aggregated as that member alone would
                out[name] = np.stack([self.aggregate(array[:, member], counts)
                                      for member in range(array.shape[1])], axis=1)
            else:
                out[name] = mean_rows(array, counts)
        return out

    def window_report(self) -> Dict[str, int]:
        """What a run's summary says about long texts (`window_counts`): nothing without --long_text."""
        return self.window_counts.as_dict() if self.preprocessor.long_text.active else {}

    def documents(self, window_logits: np.ndarray, pieces) -> np.ndarray:
        """The documents' logits from their inputs' (`pieces`: `PromptPreprocessor.split`'s), aggregated
        as the model was trained to (utils/task/windows.py); counted in `window_counts`."""
        if not self.preprocessor.long_text.active:
            return window_logits
        self.window_counts.add(pieces)
        return self.aggregate(window_logits, [len(p.texts) for p in pieces])

    def aggregate(self, window_logits: np.ndarray, counts: Sequence[int]) -> np.ndarray:
        """Documents' logits from `counts[i]` consecutive window rows, as the export's preprocess.json says."""
        return aggregate(window_logits, counts, self.decoder.multi_label, self.preprocessor.long_text.aggregation)


class _DocumentCounter:
    """`on_batch` for runs over windows that reports documents: n inputs are n × documents/inputs
    documents, rounded so that the reported total is exact at the end."""

    def __init__(self, documents: int, inputs: int, on_batch: Optional[Callable[[int], None]]):
        self.scale = documents / inputs if inputs else 1.0
        self.on_batch, self.exact, self.reported = on_batch, 0.0, 0

    def __call__(self, n: int) -> None:
        self.exact += n * self.scale
        step = int(round(self.exact)) - self.reported
        self.reported += step
        if self.on_batch is not None and step:
            self.on_batch(step)


def classify_stream(input_path: str, output_path: str, labels: Sequence[str], pair: bool,
                    classify_chunks: Callable[..., Iterator[Tuple[List[dict], Optional[List[str]], np.ndarray]]],
                    top_k: int = 1, chunk_size: Optional[int] = None, progress: Optional[bool] = None,
                    batch_size: int = 32, decoder: Optional[Decoder] = None) -> Dict:
    """The streamed file path, wherever the model runs: read `input_path` in chunks of `chunk_size`
    lines (default CHUNK_SIZE; utils/dataset/inputs.py checks every line), let `classify_chunks(chunks,
    on_texts)` yield each chunk back as `(examples, gold, probs)` in input order (calling
    `on_texts(n)` as texts are done), write the prediction file (renamed into place only when
    complete) and return its summary. Local: `classify_file`; on a Ray cluster: utils/serving/ray_infer.py.
    `decoder`: the export's (multi-label exports write label sets; default multi-class), the
    probabilities are its `probabilities(logits)`."""
    start = time.perf_counter()
    task_type = decoder.task_type if decoder is not None else "multi-class"
    inputs = InputFile(input_path, pair=pair, labels=labels, task_type=task_type)
    summary = prediction_summary(labels, decoder)
    total = count_lines(input_path)  # blank lines included: an estimate the bar corrects at the end
    show = progress if progress is not None else total > batch_size
    with Progress(total, enabled=show) as bar, \
            PredictionWriter(output_path, labels, top_k=top_k, pair=inputs.pair, with_gold=inputs.has_gold,
                             decoder=decoder) as writer:
        for examples, gold, probs in classify_chunks(inputs.chunks(chunk_size or CHUNK_SIZE), bar.update):
            writer.write(examples, probs, gold)
            summary.update(probs, gold)
            del examples, gold, probs  # else they stay alive while the next chunk is read
    return summary.as_dict(time.perf_counter() - start)


def seconds_since_process_start(when: float) -> float:
    """From this process's start (interpreter and imports included) to the wall-clock time `when`."""
    import psutil

    return round(when - psutil.Process().create_time(), 3)


def classify_file(classifier: ExportedClassifier, input_path: str, output_path: str, batch_size: int = 32,
                  top_k: int = 1, sort_by_length: bool = True, chunk_size: Optional[int] = None,
                  progress: Optional[bool] = None) -> Dict:
    """Classify every line of `input_path` into `output_path` (utils/deploy/predictions.py format), chunk by
    chunk: memory is bounded by `chunk_size` (default CHUNK_SIZE), rows keep the input order, and the
    output appears (by rename) only when every line was classified. Returns the summary."""
    classifier.window_counts = WindowCounts()  # --long_text: this file's

    def classify_chunks(chunks, on_texts):
        for examples, gold in chunks:
            probs = classifier.decoder.probabilities(classifier.logits(
                examples, batch_size=batch_size, sort_by_length=sort_by_length, progress=False, on_batch=on_texts))
            yield examples, gold, probs
            del examples, gold, probs  # before the next chunk is read

    result = classify_stream(input_path, output_path, classifier.labels, "text_b" in classifier.text_keys,
                             classify_chunks, top_k=top_k, chunk_size=chunk_size, progress=progress,
                             batch_size=batch_size, decoder=classifier.decoder)
    if classifier.first_prediction_time is not None:
        result["first_prediction_seconds"] = seconds_since_process_start(classifier.first_prediction_time)
    result.update(classifier.window_report())
    return result
