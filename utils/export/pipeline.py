"""Export a checkpoint into a self-contained deployment directory (shared by export.py and train.py).

    model.json + model.pdiparams   Paddle 3 static graph (PIR; `model.pdmodel` where Paddle writes the legacy format)
    model.onnx                     paddle2onnx conversion, dynamic batch and sequence axes, output `logits`
    model_fp16.onnx                with --export_fp16: float16 weights, float32 inputs/outputs (onnxruntime-gpu)
    model_int8.onnx                with --quantize int8: onnxruntime dynamic quantization (int8 weights, VNNI on x86)
    vocab.txt, tokenizer_config.json, special_tokens_map.json
    preprocess.json                the template as token-id parts, for infer.py's Paddle-free preprocessing
    template.json                  the template parts as trained
    labels.json                    labels in output (logit) order, with their label words
    manifest.json                  inputs/outputs, max_seq_length, versions, file sizes and hashes, parity results

The prompt encoder is folded: the soft-prompt vectors after the LSTM/MLP do not depend on the
input, so they are computed once and stored as a constant table (no LSTM in the graph, no
`encoder_ids` input). The mask position is found in the graph. Inputs: input_ids,
token_type_ids, position_ids, soft_token_ids (int64, [batch, sequence]).

Before anything is published, a parity gate compares the dynamic-graph model (unfolded), Paddle
Inference on the static graph and onnxruntime on model.onnx on a sample batch; the export fails
with the numbers unless max |Δlogits| <= tolerance and every argmax agrees (multi-label and
hierarchical models: max |Δ| of the sigmoid probabilities, and every predicted label set). The directory is
built beside the target and renamed into place, so a failed export leaves nothing half-written.
"""
from __future__ import annotations

import logging
import os
import platform
import time
from typing import Dict, List, Optional

import numpy as np
import paddle

from ..choices import ExportType, Quantize
from ..console import quiet_native_output
from ..task.decoding import Decoder
from ..errors import UserError
from ..files import atomic_directory, sha256_file, write_json_atomic
from ..model.assembly import rebuild_from_checkpoint
from ..deploy.format import (FORMAT_VERSION, INPUT_NAMES, LABELS_FILE, MANIFEST_FILE, MODEL_PREFIX, ONNX_FILE,
                            ONNX_FP16_FILE, ONNX_INT8_FILE, OUTPUT_NAME, PREPROCESS_FILE, TEMPLATE_FILE)
from ..deploy.preprocess import PromptPreprocessor, describe_template
from ..rundir.plan import DirLock

logger = logging.getLogger(__name__)

DEFAULT_TOLERANCE = 1e-4
FP16_TOLERANCE = 5e-2


class ExportError(UserError):
    """The exported model does not reproduce the trained one (or could not be produced)."""


class FoldedPromptModel(paddle.nn.Layer):
    """The inference graph: PLM + verbalizer head, the prompt encoder replaced by its output table."""

    def __init__(self, prompt_model):
        super().__init__()
        self.prompt_model = prompt_model
        template = prompt_model.template
        self.mask_id = template.tokenizer.mask_token_id
        self.pad_id = template.tokenizer.pad_token_id
        table = encoded_soft_table(template, prompt_model.plm.get_input_embeddings().weight.shape[1])
        self.soft_table = self.create_parameter(table.shape, dtype="float32")
        self.soft_table.set_value(table)

    def forward(self, input_ids, token_type_ids, position_ids, soft_token_ids):
        model = self.prompt_model
        word_embeds = model.plm.get_input_embeddings()(input_ids)
        soft_embeds = paddle.nn.functional.embedding(soft_token_ids, self.soft_table)
        inputs_embeds = paddle.where((soft_token_ids > 0).unsqueeze(-1), soft_embeds, word_embeds)
        attention_mask = paddle.unsqueeze((input_ids == self.pad_id).astype("float32") * -1e4, axis=[1, 2])
        inputs = dict(input_ids=None, token_type_ids=token_type_ids, position_ids=position_ids,
                      attention_mask=attention_mask, inputs_embeds=inputs_embeds)

        def mask_positions():  # flat batch*sequence indices of the [MASK]s, for heads that read them
            index = paddle.nonzero(paddle.logical_and(input_ids == self.mask_id, soft_token_ids == 0))
            return index[:, 0] * paddle.shape(input_ids)[1] + index[:, 1]

        return model.head.export_scores(model, inputs, mask_positions)


def encoded_soft_table(template, hidden: int) -> paddle.Tensor:
    """Row i: the vector the template feeds the PLM for soft token i (after its encoder); row 0 unused."""
    num = int(getattr(template, "num_soft_token", 1))
    table = np.zeros([max(num, 1), hidden], dtype="float32")
    if num <= 1:  # no soft tokens (hard template or fine-tuning): the table is never read
        return paddle.to_tensor(table)
    encoded = template({key: "x" for key in template.example_keys})
    soft = np.array(encoded["soft_token_ids"])
    ids = soft[soft > 0]
    if len(set(ids.tolist())) != len(ids):
        raise ExportError("the template reuses soft tokens (`soft_id`); their encoded vectors depend on the "
                          "occurrence, so the prompt encoder cannot be folded", "template")
    batch = {"input_ids": paddle.to_tensor([encoded["input_ids"]], dtype="int64"),
             "soft_token_ids": paddle.to_tensor([encoded["soft_token_ids"]], dtype="int64"),
             "encoder_ids": paddle.to_tensor([encoded["encoder_ids"]], dtype="int64"),
             "attention_mask": paddle.zeros([1])}
    with paddle.no_grad():
        embeds = template.process_batch(batch)["inputs_embeds"][0].numpy()
    table[ids] = embeds[soft > 0]
    return paddle.to_tensor(table)


def _versions() -> Dict[str, str]:
    import onnx
    import onnxruntime
    import paddle2onnx
    import paddlenlp

    return {"python": platform.python_version(), "paddle": paddle.__version__, "paddlenlp": paddlenlp.__version__,
            "paddle2onnx": paddle2onnx.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def save_static_graph(folded: paddle.nn.Layer, directory: str, input_names=INPUT_NAMES) -> Dict[str, str]:
    """paddle.jit.save; returns the model/params file names Paddle wrote (PIR json or legacy pdmodel)."""
    from paddle.static import InputSpec

    spec = [InputSpec([None, None], "int64", name=name) for name in input_names]
    static = paddle.jit.to_static(folded, input_spec=spec, full_graph=True)
    paddle.jit.save(static, os.path.join(directory, MODEL_PREFIX))
    for model_file in (MODEL_PREFIX + ".json", MODEL_PREFIX + ".pdmodel"):
        if os.path.isfile(os.path.join(directory, model_file)):
            return {"model": model_file, "params": MODEL_PREFIX + ".pdiparams"}
    raise ExportError("paddle.jit.save wrote no model file", directory)


def convert_to_onnx(directory: str, files: Dict[str, str], opset: int, output_names=(OUTPUT_NAME,)) -> str:
    """paddle2onnx, then name the outputs (`logits`, ...) and the dynamic axes `batch`/`sequence`
    (`sequence_v1`, ... for the inputs of an ensemble's other views: their lengths differ)."""
    import onnx
    import paddle2onnx
    import polygraphy.config

    # paddle2onnx turns on Polygraphy's "pip install missing dependencies" mode, which would
    # hang offline and could replace onnxruntime-gpu; a deployment tool never installs packages.
    polygraphy.config.AUTOINSTALL_DEPS = False
    path = os.path.join(directory, ONNX_FILE)
    paddle2onnx.export(os.path.join(directory, files["model"]), os.path.join(directory, files["params"]),
                       path, opset_version=opset, enable_onnx_checker=True)
    model = onnx.load(path)
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        view = value.name.rsplit("_v", 1)[1] if value.name not in INPUT_NAMES and "_v" in value.name else ""
        dims[0].dim_param, dims[1].dim_param = "batch", "sequence" + (f"_v{view}" if view else "")
    renames = {output.name: name for output, name in zip(model.graph.output, output_names)}
    for node in model.graph.node:
        node.output[:] = [renames.get(o, o) for o in node.output]
    for output, name in zip(model.graph.output, output_names):
        output.name = name
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def convert_to_fp16(directory: str) -> str:
    """float16 weights and compute, float32 inputs/outputs (onnxruntime's own converter)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(os.path.join(directory, ONNX_FILE)), keep_io_types=True)
    path = os.path.join(directory, ONNX_FP16_FILE)
    onnx.save(model, path)
    return path


def quantize_int8(directory: str) -> str:
    """onnxruntime's dynamic quantization: int8 weights, activations quantized per batch at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path = os.path.join(directory, ONNX_INT8_FILE)
    quantize_dynamic(os.path.join(directory, ONNX_FILE), path, weight_type=QuantType.QInt8,
                     extra_options={"MatMulConstBOnly": True})
    return path


def int8_check(directory: str, feed: Dict[str, np.ndarray], fp32_logits: np.ndarray,
               decoder: Optional[Decoder] = None, probabilities: bool = False) -> dict:
    """int8 vs fp32 ONNX on the sample batch. Reported, not gated: quantization moves logits by
    design, and on an untrained model near-ties flip; measure agreement on real data."""
    int8_logits = onnxruntime_logits(os.path.join(directory, ONNX_INT8_FILE), feed)
    result = _compare("onnxruntime int8", fp32_logits, int8_logits, float("inf"), decoder, probabilities)
    result.pop("tolerance")
    result.pop("passed")
    if result["agreement"] < 0.99:
        logger.warning("int8 model agrees with fp32 on %.1f%% of the sample batch", 100 * result["agreement"])
    return result


def paddle_inference_logits(directory: str, files: Dict[str, str], feed: Dict[str, np.ndarray]) -> np.ndarray:
    return paddle_inference_outputs(directory, files, feed)[0]


def paddle_inference_outputs(directory: str, files: Dict[str, str], feed: Dict[str, np.ndarray]) -> List[np.ndarray]:
    from paddle import inference

    config = inference.Config(os.path.join(directory, files["model"]), os.path.join(directory, files["params"]))
    config.disable_gpu()
    config.disable_glog_info()
    predictor = inference.create_predictor(config)
    for name in predictor.get_input_names():
        predictor.get_input_handle(name).copy_from_cpu(feed[name])
    predictor.run()
    return [predictor.get_output_handle(name).copy_to_cpu() for name in predictor.get_output_names()]


def onnxruntime_logits(path: str, feed: Dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], feed)[0]


def sample_examples(examples: Optional[List[dict]], keys, max_seq_length: int, limit: int = 31) -> List[dict]:
    """The parity batch: up to `limit` given examples plus one longer than max_seq_length."""
    chosen = [dict(e) for e in (examples or [])[:limit]]
    filler = "长文本截断测试abc"
    long_text = (filler * (max_seq_length // len(filler) + 2))[: max_seq_length * 2]
    chosen.append({key: long_text for key in keys})
    if len(chosen) == 1:
        chosen.append({key: "短句" for key in keys})
    return [{k: v for k, v in e.items() if k in keys} for e in chosen]


def _compare(name: str, reference: np.ndarray, other: np.ndarray, tolerance: float,
             decoder: Optional[Decoder] = None, probabilities: bool = False) -> dict:
    """Logits and argmax (multi-class), or sigmoid probabilities and predicted label sets (multi-label).
    `probabilities`: multi-class outputs are compared as softmax probabilities (an ensemble's outputs
    are log-probabilities, whose values for near-impossible labels carry no meaning)."""
    if decoder is not None and probabilities and not decoder.multi_label:
        ref_probs, other_probs = decoder.probabilities(reference), decoder.probabilities(other)
        diff = float(np.abs(ref_probs - other_probs).max())
        agree = float((ref_probs.argmax(-1) == other_probs.argmax(-1)).mean())
        return {"backend": name, "compared": "softmax probabilities", "max_abs_diff": diff, "agreement": agree,
                "argmax_agreement": agree, "tolerance": tolerance, "passed": bool(diff <= tolerance and agree == 1.0)}
    if decoder is not None and decoder.multi_label:
        ref_probs, other_probs = decoder.probabilities(reference), decoder.probabilities(other)
        diff = float(np.abs(ref_probs - other_probs).max())
        agree = float((decoder.decide(ref_probs) == decoder.decide(other_probs)).all(axis=1).mean())
        return {"backend": name, "compared": "sigmoid probabilities", "max_abs_diff": diff,
                "max_abs_logit_diff": float(np.abs(reference - other).max()), "agreement": agree,
                "label_set_agreement": agree, "tolerance": tolerance,
                "passed": bool(diff <= tolerance and agree == 1.0)}
    diff = float(np.abs(reference - other).max())
    agree = float((reference.argmax(-1) == other.argmax(-1)).mean())
    return {"backend": name, "compared": "logits", "max_abs_diff": diff, "agreement": agree, "argmax_agreement": agree,
            "tolerance": tolerance, "passed": bool(diff <= tolerance and agree == 1.0)}


def describe_result(result: dict) -> str:
    """One result of the gate in words, e.g. for its error message and export.py's output."""
    agreement = "label-set" if "label_set_agreement" in result else "argmax"
    limit = f", limit {result['tolerance']:g}" if "tolerance" in result else ""
    return (f"{result['backend']}: max |Δ| {result['max_abs_diff']:.3g} ({result.get('compared', 'logits')}{limit}), "
            f"{agreement} agreement {result['agreement']:.3f}")


def parity_gate(model, directory: str, files: Dict[str, str], examples: List[dict], feed: Dict[str, np.ndarray],
                onnx_logits: np.ndarray, tolerance: float = DEFAULT_TOLERANCE,
                decoder: Optional[Decoder] = None) -> dict:
    """Dynamic graph vs Paddle Inference vs onnxruntime on one batch; raise `ExportError` on mismatch.

    `feed` is infer.py's preprocessing of `examples`, `onnx_logits` model.onnx's output on it.
    """
    from paddlenlp.prompt import PromptDataCollatorWithPadding

    template = model.template
    collate = PromptDataCollatorWithPadding(template.tokenizer, padding=True, return_tensors="np")
    batch = collate([template(dict(e)) for e in examples])
    for name in INPUT_NAMES:
        if not np.array_equal(feed[name], batch[name]):
            raise ExportError(f"infer.py's preprocessing gives other {name} than the training template "
                              f"on the sample batch; refusing to export", directory)
    dynamic_inputs = {k: paddle.to_tensor(v) for k, v in batch.items() if k != "labels"}
    with paddle.no_grad():
        reference = model(**dynamic_inputs).numpy()
    results = [_compare("paddle_inference", reference, paddle_inference_logits(directory, files, feed), tolerance,
                        decoder),
               _compare("onnxruntime", reference, onnx_logits, tolerance, decoder)]
    report = {"sample_size": len(examples), "reference": "dynamic graph, unfolded prompt encoder",
              "results": results, "passed": all(r["passed"] for r in results)}
    if not report["passed"]:
        numbers = "; ".join(describe_result(r) for r in results)
        raise ExportError(f"parity gate failed, the export does not reproduce the trained model: {numbers}",
                          directory)
    return report


def fp16_check(directory: str, feed: Dict[str, np.ndarray], fp32_logits: np.ndarray,
               decoder: Optional[Decoder] = None, probabilities: bool = False) -> dict:
    try:
        fp16 = onnxruntime_logits(os.path.join(directory, ONNX_FP16_FILE), feed)
    except Exception as exc:  # some CPU builds lack fp16 kernels; the model targets onnxruntime-gpu
        return {"backend": "onnxruntime fp16 (CPU)", "checked": False, "reason": f"{type(exc).__name__}: {exc}"}
    result = _compare("onnxruntime fp16 (CPU)", fp32_logits, fp16, FP16_TOLERANCE, decoder, probabilities)
    result["checked"] = True
    if not result["passed"]:
        raise ExportError(f"fp16 model disagrees with fp32: {describe_result(result)}", directory)
    return result


def export_lock(output_dir: str) -> DirLock:
    """The lock of an export directory: a file beside it (the directory itself is replaced by rename)."""
    parent, name = os.path.split(os.path.abspath(output_dir))
    return DirLock(parent, lock_name=f".{name}.lock", what="export.py")


def export_checkpoint(checkpoint_dir: str, output_dir: str, examples: Optional[List[dict]] = None,
                      export_type: str = "paddle", export_fp16: bool = False, overwrite: bool = False,
                      opset: int = 13, tolerance: float = DEFAULT_TOLERANCE, quantize: Optional[str] = None,
                      locked: bool = False, reject_option: Optional[tuple] = None) -> dict:
    """Export `checkpoint_dir` to `output_dir`; return the manifest.

    `locked`: the caller already holds a lock on the directory around `output_dir` (train.py).
    `reject_option`: `(threshold, other_label)` replacing the checkpoint's (train.py --reject_threshold
    on a checkpoint: decoding, not weights).
    """
    export_type = ExportType.from_flag(export_type, "--export_type").value
    quantize = Quantize.from_flag(quantize or "none", "--quantize").value
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise UserError("exists and is not a directory", output_dir)
    lock = None if locked else export_lock(output_dir).acquire()
    try:
        return _export(checkpoint_dir, output_dir, examples, export_type, export_fp16, overwrite, opset, tolerance,
                       quantize == Quantize.INT8.value, reject_option)
    finally:
        if lock is not None:
            lock.release()


def _export(checkpoint_dir, output_dir, examples, export_type, export_fp16, overwrite, opset, tolerance,
            quantize: bool, reject_option: Optional[tuple] = None) -> dict:
    if os.path.exists(output_dir) and os.listdir(output_dir) and not overwrite:
        raise UserError("already exists and is not empty; pass --overwrite_output_dir to replace it", output_dir)
    start = time.time()
    paddle.set_device("cpu")
    with paddle.utils.unique_name.guard():
        model, tokenizer, spec = rebuild_from_checkpoint(checkpoint_dir)
        if reject_option is not None:
            import dataclasses

            spec = dataclasses.replace(spec, reject_threshold=reject_option[0], other_label=reject_option[1])
        folded = FoldedPromptModel(model)
        folded.eval()
    examples = sample_examples(examples, sorted(model.template.example_keys), spec.max_seq_length)
    with atomic_directory(output_dir) as directory:
        files = write_graphs(folded, directory, opset)
        write_preprocessing(model, tokenizer, spec, directory)
        # One preprocessing and one fp32 onnxruntime pass serve the gate and the fp16/int8 checks.
        preprocessor = PromptPreprocessor.from_export(directory)
        feed = preprocessor.pad(preprocessor.encode(examples))
        onnx_logits = onnxruntime_logits(os.path.join(directory, ONNX_FILE), feed)
        parity = parity_gate(model, directory, files, examples, feed, onnx_logits, tolerance, spec.decoder)
        parity.update(write_variants(directory, feed, onnx_logits, export_fp16, quantize, spec.decoder))
        if export_type == ExportType.ONNX.value:
            for name in files.values():
                os.remove(os.path.join(directory, name))
            files = {}
        manifest = write_manifest(directory, spec, checkpoint_dir, export_type, files, opset, parity,
                                  fp16=export_fp16, int8=quantize, seconds=time.time() - start)
    logger.info("exported %s -> %s (parity: %s)", checkpoint_dir, output_dir,
                ", ".join(f"{r['backend']} max|Δ| {r['max_abs_diff']:.2g}" for r in parity["results"]))
    return manifest


def write_graphs(folded: paddle.nn.Layer, directory: str, opset: int, input_names=INPUT_NAMES,
                 output_names=(OUTPUT_NAME,)) -> Dict[str, str]:
    """The Paddle static graph and its ONNX conversion; returns the static graph's file names."""
    with quiet_native_output("paddle.jit.save"):
        files = save_static_graph(folded, directory, input_names)
    with quiet_native_output("paddle2onnx"):
        convert_to_onnx(directory, files, opset, output_names)
    return files


def write_preprocessing(model, tokenizer, spec, directory: str) -> None:
    """What infer.py needs besides the graph: the tokenizer, the template as token ids, the labels."""
    template = model.template
    tokenizer.save_pretrained(directory)
    write_json_atomic(os.path.join(directory, PREPROCESS_FILE), describe_template(template, spec.max_seq_length))
    write_json_atomic(os.path.join(directory, TEMPLATE_FILE), {"template": spec.template, "processed": template.prompt})
    write_json_atomic(os.path.join(directory, LABELS_FILE), [
        {"id": i, "label": label, "word": word} for i, (label, word) in enumerate(zip(spec.labels, spec.label_words))])


def write_variants(directory: str, feed, fp32_logits, fp16: bool, int8: bool,
                   decoder: Optional[Decoder] = None, probabilities: bool = False) -> dict:
    """model_fp16.onnx / model_int8.onnx, each checked against the fp32 model on the sample batch."""
    checks = {}
    if fp16:
        with quiet_native_output("the fp16 conversion"):
            convert_to_fp16(directory)
        checks["fp16"] = fp16_check(directory, feed, fp32_logits, decoder, probabilities)
    if int8:
        with quiet_native_output("onnxruntime quantization"):
            quantize_int8(directory)
        checks["int8"] = int8_check(directory, feed, fp32_logits, decoder, probabilities)
    return checks


def write_manifest(directory: str, spec, checkpoint_dir: str, export_type: str, files: Dict[str, str], opset: int,
                   parity: dict, fp16: bool, int8: bool, seconds: float, extra: Optional[dict] = None) -> dict:
    """manifest.json, written last: the export's description and every file's size and sha256.
    `extra`: fields that replace or add to the description (an ensemble's members)."""
    manifest = {
        "format": FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "source_checkpoint": os.path.abspath(checkpoint_dir),
        "export_type": export_type,
        "inputs": [{"name": n, "dtype": "int64", "shape": ["batch", "sequence"]} for n in INPUT_NAMES],
        "outputs": [{"name": OUTPUT_NAME, "dtype": "float32", "shape": ["batch", len(spec.labels)]}],
        "onnx": {"fp32": ONNX_FILE, "fp16": ONNX_FP16_FILE if fp16 else None,
                 "int8": ONNX_INT8_FILE if int8 else None, "opset": opset},
        "paddle": files or None,
        "method": spec.method.value,
        "verbalizer": spec.verbalizer,
        "head": spec.head,
        **spec.decoder.describe(),  # task_type, thresholds, hierarchical_decoding: how infer.py decodes
        "threshold_search": spec.threshold_search if spec.decoder.multi_label else None,
        "zero_shot": spec.zero_shot,
        "prompt_encoder_folded": True,
        "max_seq_length": spec.max_seq_length,
        "template": spec.template,
        "labels": spec.labels,
        "model_name_or_path": spec.model_name_or_path,
        "distillation": spec.distillation,
        "versions": _versions(),
        "parity": parity,
        "export_seconds": round(seconds, 2),
    }
    manifest.update(extra or {})
    manifest["files"] = {name: {"bytes": os.path.getsize(os.path.join(directory, name)),
                                "sha256": sha256_file(os.path.join(directory, name))}
                         for name in sorted(os.listdir(directory))}
    write_json_atomic(os.path.join(directory, MANIFEST_FILE), manifest)
    return manifest
