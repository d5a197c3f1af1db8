"""Serving an export directory with onnxruntime: no Paddle, no PLM weights, no conversion at run time.

Reads only JSON, the vocab and the ONNX file from the export directory (see utils/export.py).
"""
from __future__ import annotations

import json
import os
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from .errors import UserError
from .files import atomic_path, read_json
from .metrics import softmax
from .preprocess import INPUT_NAMES, PromptPreprocessor

MANIFEST_FILE = "manifest.json"
LABELS_FILE = "labels.json"
EXPORT_HINT = "make one with `python export.py --resume_from_checkpoint CKPT --output_dir DIR`"


def resolve_export_dir(model_path_prefix: str) -> str:
    """`checkpoints/export/model` (upstream style prefix) or `checkpoints/export` -> the export dir."""
    for candidate in (model_path_prefix, os.path.dirname(model_path_prefix)):
        if candidate and os.path.isfile(os.path.join(candidate, MANIFEST_FILE)):
            return candidate
    if os.path.isdir(model_path_prefix) or os.path.isdir(os.path.dirname(model_path_prefix) or "."):
        raise UserError(f"is not an export directory ({MANIFEST_FILE} missing); {EXPORT_HINT}", model_path_prefix)
    raise UserError(f"export directory not found; {EXPORT_HINT}", model_path_prefix)


def check_export_files(export_dir: str, manifest: dict, names: Sequence[str]) -> None:
    """Each needed file must exist with the size the manifest recorded (catches truncated copies)."""
    recorded = manifest.get("files", {})
    for name in names:
        path = os.path.join(export_dir, name)
        if not os.path.isfile(path):
            raise UserError(f"{name} is missing from the export; {EXPORT_HINT}", export_dir)
        expected = recorded.get(name, {}).get("bytes")
        if expected is not None and os.path.getsize(path) != expected:
            raise UserError(f"has {os.path.getsize(path)} bytes, the manifest recorded {expected}: "
                            "corrupt or truncated copy; copy or export it again", path)


def create_session(model_path: str, device: str = "cpu", device_id: int = 0, num_threads: Optional[int] = None):
    """An onnxruntime session on CPU or CUDA, with clear errors for the usual set-up mistakes."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if num_threads:
        options.intra_op_num_threads = int(num_threads)
    options.inter_op_num_threads = 1
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
        session = ort.InferenceSession(model_path, sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
        raise UserError(f"onnxruntime cannot load the model (corrupt file?): {type(exc).__name__}: {exc}",
                        model_path) from None
    if device == "gpu" and session.get_providers()[0] != "CUDAExecutionProvider":
        raise UserError("onnxruntime-gpu is installed but the CUDA provider did not start (CUDA/cuDNN libraries "
                        "missing or not matching this onnxruntime-gpu build); see onnxruntime.ai's CUDA "
                        "requirements, or use --device cpu", "--device")
    return session


class ExportedClassifier:
    """An export directory ready to classify texts."""

    def __init__(self, export_dir: str, device: str = "cpu", device_id: int = 0, num_threads: Optional[int] = None,
                 use_fp16: bool = False, max_seq_length: Optional[int] = None, model_file: Optional[str] = None,
                 use_int8: bool = False):
        self.export_dir = export_dir
        self.manifest = read_json(os.path.join(export_dir, MANIFEST_FILE), what=MANIFEST_FILE)
        onnx_files = self.manifest.get("onnx") or {}
        if model_file is None:
            model_file = onnx_files.get("fp32", "model.onnx")
            if use_fp16 and device == "gpu":
                if not onnx_files.get("fp16"):
                    raise UserError("--use_fp16: this export has no fp16 model; export it with --export_fp16",
                                    export_dir)
                model_file = onnx_files["fp16"]
            elif use_int8:
                if not onnx_files.get("int8"):
                    raise UserError("--use_int8: this export has no int8 model; export it with --quantize int8",
                                    export_dir)
                model_file = onnx_files["int8"]
        check_export_files(export_dir, self.manifest, [model_file, LABELS_FILE, "preprocess.json", "vocab.txt"])
        exported_max = int(self.manifest.get("max_seq_length", 0)) or None
        if max_seq_length and exported_max and max_seq_length > exported_max:
            raise UserError(f"is {max_seq_length}, longer than the {exported_max} the model was trained and "
                            "exported with", "--max_seq_length")
        labels = read_json(os.path.join(export_dir, LABELS_FILE), what=LABELS_FILE)
        try:
            self.labels = [entry["label"] for entry in sorted(labels, key=lambda e: e["id"])]
        except (TypeError, KeyError):
            raise UserError("is not a list of {id, label, word} entries (corrupt?)",
                            os.path.join(export_dir, LABELS_FILE)) from None
        self.preprocessor = PromptPreprocessor.from_export(export_dir, max_seq_length)
        self.model_file = model_file
        self.first_prediction_time: Optional[float] = None  # wall-clock time of the first batch's logits
        self.session = create_session(os.path.join(export_dir, model_file), device, device_id, num_threads)
        self.input_names = [i.name for i in self.session.get_inputs()]
        if set(self.input_names) - set(INPUT_NAMES):
            raise UserError(f"the ONNX model expects inputs {self.input_names}; this infer.py feeds {INPUT_NAMES}",
                            os.path.join(export_dir, model_file))

    @property
    def text_keys(self) -> List[str]:
        return list(dict.fromkeys(self.preprocessor.text_keys))

    def logits(self, examples: List[dict], batch_size: int = 32, sort_by_length: bool = True,
               progress: Optional[bool] = None) -> np.ndarray:
        """Logits for `examples` in their order. Batches are formed from length-sorted examples
        (less padding) unless `sort_by_length=False`."""
        from tqdm import tqdm

        if not examples:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        features = self.preprocessor.encode(examples)
        order = np.arange(len(features))
        if sort_by_length:
            order = np.argsort([len(f["input_ids"]) for f in features], kind="stable")
        out = np.zeros((len(features), len(self.labels)), dtype=np.float32)
        self.first_prediction_time = None
        starts = range(0, len(order), batch_size)
        show = progress if progress is not None else len(starts) > 1
        for start in tqdm(starts, desc="infer", unit="batch", disable=None if show else True):
            index = order[start:start + batch_size]
            batch = self.preprocessor.pad([features[i] for i in index])
            out[index] = self.session.run(None, {name: batch[name] for name in self.input_names})[0]
            if self.first_prediction_time is None:
                self.first_prediction_time = time.time()
        return out


def write_results(path: str, examples: List[dict], probs: np.ndarray, labels: List[str], top_k: int = 1,
                  gold: Optional[List[str]] = None) -> None:
    """TSV (header; text, [gold], label, confidence, then label_k/confidence_k for k >= 2) or JSONL
    (`.jsonl`/`.json` suffix; one object per line with `top_k` as a list), written atomically."""
    top_k = max(1, min(top_k, len(labels)))
    ranked = np.argsort(-probs, axis=1, kind="stable")[:, :top_k]
    pair = any("text_b" in e for e in examples)
    jsonl = path.endswith((".jsonl", ".json"))
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fp:
            if not jsonl:
                header = ["text_a", "text_b"] if pair else ["text"]
                header += (["gold"] if gold is not None else []) + ["label", "confidence"]
                for k in range(2, top_k + 1):
                    header += [f"label_{k}", f"confidence_{k}"]
                fp.write("\t".join(header) + "\n")
            for row, (example, best) in enumerate(zip(examples, ranked)):
                if jsonl:
                    record = {"text": example["text_a"]} if not pair else {"text_a": example["text_a"],
                                                                            "text_b": example.get("text_b", "")}
                    if gold is not None:
                        record["gold"] = gold[row]
                    record.update(label=labels[best[0]], confidence=round(float(probs[row, best[0]]), 6))
                    if top_k > 1:
                        record["top_k"] = [{"label": labels[j], "confidence": round(float(probs[row, j]), 6)}
                                           for j in best]
                    fp.write(json.dumps(record, ensure_ascii=False) + "\n")
                else:
                    cells = [example["text_a"]] + ([example.get("text_b", "")] if pair else [])
                    cells += ([gold[row]] if gold is not None else [])
                    for j in best:
                        cells += [labels[j], f"{probs[row, j]:.6f}"]
                    fp.write("\t".join(cells) + "\n")


def read_inputs(path: str, text_keys: List[str], labels: List[str]):
    """`(examples, gold or None)` from a file of texts; lines may also carry a trailing gold label
    (test.txt layout), which enables an accuracy line in the summary."""
    from .data import read_examples

    pair = "text_b" in text_keys
    try:
        return read_examples(path, labelled=False, pair=pair, what="input file"), None
    except UserError as unlabelled_error:
        try:
            examples = read_examples(path, labelled=True, pair=pair, what="input file")
        except UserError:
            raise unlabelled_error from None
        if any(e["label"] not in labels for e in examples):
            raise unlabelled_error from None
        gold = [e.pop("label") for e in examples]
        return examples, gold


def summarize(labels: List[str], probs: np.ndarray, seconds: float, gold: Optional[List[str]] = None) -> Dict:
    predicted = probs.argmax(axis=1) if len(probs) else np.zeros(0, dtype=int)
    counts = {label: int((predicted == i).sum()) for i, label in enumerate(labels)}
    summary = {"texts": int(len(probs)), "seconds": round(seconds, 3),
               "texts_per_second": round(len(probs) / seconds, 1) if seconds > 0 else None,
               "predicted_label_counts": counts,
               "mean_confidence": round(float(probs.max(axis=1).mean()), 4) if len(probs) else None}
    if gold is not None and len(probs):
        summary["accuracy"] = round(float(np.mean([labels[p] == g for p, g in zip(predicted, gold)])), 4)
    return summary


def classify_file(classifier: ExportedClassifier, input_path: str, output_path: str, batch_size: int = 32,
                  top_k: int = 1, sort_by_length: bool = True) -> Dict:
    start = time.perf_counter()
    examples, gold = read_inputs(input_path, classifier.text_keys, classifier.labels)
    if not examples:
        raise UserError("has no texts", input_path)
    probs = softmax(classifier.logits(examples, batch_size=batch_size, sort_by_length=sort_by_length))
    write_results(output_path, examples, probs, classifier.labels, top_k=top_k, gold=gold)
    summary = summarize(classifier.labels, probs, time.perf_counter() - start, gold)
    if classifier.first_prediction_time is not None:
        import psutil

        # From process start (interpreter and imports included) to the first batch's predictions.
        summary["first_prediction_seconds"] = round(classifier.first_prediction_time -
                                                    psutil.Process().create_time(), 3)
    return summary
