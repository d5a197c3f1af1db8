"""The parity gate: nothing is published unless the export reproduces the model(s) it was made from.

The reference is the dynamic graph (prompt encoders unfolded) on the batch each model's training
template builds. The gate first checks that infer.py's preprocessing builds the same inputs, then
compares Paddle Inference on the static graph and onnxruntime on model.onnx with the reference:
max |Δlogits| <= tolerance and every argmax equal (multi-label and hierarchical: max |Δ| of the
sigmoid probabilities and every predicted label set). model_fp16.onnx is gated against model.onnx
too; model_int8.onnx is compared and reported, not gated.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import paddle

from ..deploy.format import (INPUT_NAMES, MEMBER_OUTPUT, ONNX_FP16_FILE, ONNX_INT8_FILE, OUTPUT_NAME,
                             REPRESENTATION_OUTPUT, view_suffix)
from ..task.decoding import Decoder
from .graph import ExportError

logger = logging.getLogger(__name__)

DEFAULT_TOLERANCE = 1e-4
FP16_TOLERANCE = 5e-2


@dataclass(frozen=True)
class Reference:
    """What an export must reproduce: dynamic-graph prompt models, each reading its view of the
    inputs (utils/deploy/preprocess.py) through its own training template.

    `combine`: the models' logits -> the expected `logits` output (None: the one model's logits). A
    graph of several models has a second output holding each one's logits, checked against its own.
    `probabilities`: multi-class `logits` are compared as softmax probabilities (an ensemble's are
    log-probabilities, whose values for near-impossible labels carry no meaning).
    """

    models: Sequence[Any]
    decoder: Decoder                   # how the export's `logits` are decoded
    views: Sequence[int] = (0,)
    decoders: Sequence[Decoder] = ()   # each model's own decoding, for its logits in the second output
    names: Sequence[str] = ()          # each model in messages ("member 0 (PATH)"); none for a lone model
    combine: Optional[Callable[[List[np.ndarray]], np.ndarray]] = None
    probabilities: bool = False
    description: str = "dynamic graph, unfolded prompt encoder"
    compared: Optional[str] = None     # what is compared, recorded when it is more than `logits`
    failure: str = "the export does not reproduce the trained model"


def sample_examples(examples: Optional[List[dict]], keys, max_seq_length: int, limit: int = 31) -> List[dict]:
    """The parity batch: up to `limit` given examples plus one longer than max_seq_length."""
    chosen = [dict(e) for e in (examples or [])[:limit]]
    filler = "长文本截断测试abc"
    long_text = (filler * (max_seq_length // len(filler) + 2))[: max_seq_length * 2]
    chosen.append({key: long_text for key in keys})
    if len(chosen) == 1:
        chosen.append({key: "短句" for key in keys})
    return [{k: v for k, v in e.items() if k in keys} for e in chosen]


def parity_gate(reference: Reference, directory: str, files: Dict[str, str], examples: List[dict],
                feed: Dict[str, np.ndarray], onnx_outputs: List[np.ndarray],
                tolerance: float = DEFAULT_TOLERANCE, output_names: Sequence[str] = (),
                eager: Optional[List[np.ndarray]] = None, fused_outputs: Optional[List[np.ndarray]] = None) -> dict:
    """Dynamic graph vs Paddle Inference vs onnxruntime on one batch; raise `ExportError` on mismatch.

    `feed` is infer.py's preprocessing of `examples`, `onnx_outputs` model.onnx's outputs on it, named
    by `output_names` (default: `logits`, then an ensemble's `member_logits`). `eager`: the folded
    layer's outputs in dynamic mode, the reference of the representation output (REPRESENTATION_OUTPUT).
    `fused_outputs`: those of the attention-fused candidate of model.onnx (utils/export/fusion.py),
    checked the same way and reported as `attention_fusion`; they do not fail the gate.
    """
    names = list(output_names) or [OUTPUT_NAME, MEMBER_OUTPUT][:len(onnx_outputs)]
    logits = reference_logits(reference, directory, examples, feed)
    expected = logits[0] if reference.combine is None else reference.combine(logits)
    inference = paddle_inference_outputs(directory, files, feed)

    def checks(backend: str, outputs: List[np.ndarray], with_members: bool = True) -> tuple:
        """(logits, members, representation) comparisons of one backend's outputs."""
        result = compare(backend, expected, outputs[0], tolerance, reference.decoder, reference.probabilities)
        members = [compare(f"{backend} member {index}", own, outputs[names.index(MEMBER_OUTPUT)][index],
                           tolerance, decoder)
                   for index, (own, decoder) in enumerate(zip(logits, reference.decoders))] \
            if with_members and MEMBER_OUTPUT in names else []
        vectors = [compare_vectors(backend, eager[names.index(REPRESENTATION_OUTPUT)],
                                   outputs[names.index(REPRESENTATION_OUTPUT)], tolerance)] \
            if REPRESENTATION_OUTPUT in names else []
        return [result], members, vectors

    paddle_result, _, paddle_vectors = checks("paddle_inference", inference, with_members=False)
    onnx_result, members, onnx_vectors = checks("onnxruntime", onnx_outputs)
    results, vectors = paddle_result + onnx_result, paddle_vectors + onnx_vectors
    report = {"sample_size": len(examples), **({"compared": reference.compared} if reference.compared else {}),
              "reference": reference.description, "results": results + members,
              **({REPRESENTATION_OUTPUT: vectors} if vectors else {}),
              "passed": all(r["passed"] for r in results + members + vectors)}
    if not report["passed"]:  # both backends' numbers, and those of each model or output that disagrees
        numbers = "; ".join(describe_result(r) for r in results + [m for m in members + vectors if not m["passed"]])
        raise ExportError(f"parity gate failed, {reference.failure}: {numbers}", directory)
    if fused_outputs is not None:
        report["attention_fusion"] = [r for part in checks("onnxruntime, attention fused", fused_outputs)
                                      for r in part]
    return report


def reference_logits(reference: Reference, directory: str, examples: List[dict],
                     feed: Dict[str, np.ndarray]) -> List[np.ndarray]:
    """Each model's logits on the batch its training template builds, once infer.py's preprocessing
    (`feed`) is shown to build the same inputs."""
    from paddlenlp.prompt import PromptDataCollatorWithPadding

    out = []
    for index, (model, view) in enumerate(zip(reference.models, reference.views)):
        template = model.template
        collate = PromptDataCollatorWithPadding(template.tokenizer, padding=True, return_tensors="np")
        batch = collate([template(dict(e)) for e in examples])
        whose = f" of {reference.names[index]}" if reference.names else " on the sample batch"
        for name in INPUT_NAMES:
            if not np.array_equal(feed[name + view_suffix(view)], batch[name]):
                raise ExportError(f"infer.py's preprocessing gives other {name} than the training template{whose}; "
                                  "refusing to export", directory)
        with paddle.no_grad():
            out.append(model(**{k: paddle.to_tensor(v) for k, v in batch.items() if k != "labels"}).numpy())
    return out


def compare(name: str, reference: np.ndarray, other: np.ndarray, tolerance: float,
            decoder: Optional[Decoder] = None, probabilities: bool = False) -> dict:
    """Logits and argmax (multi-class), or sigmoid probabilities and predicted label sets (multi-label).
    `probabilities`: multi-class outputs are compared as softmax probabilities."""
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


def compare_vectors(name: str, reference: np.ndarray, other: np.ndarray, tolerance: float) -> dict:
    """The representation output: max |Δ| of the L2-normalised vectors (what selection uses)."""
    def unit(x):
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)

    diff = float(np.abs(unit(reference) - unit(other)).max()) if reference.shape == other.shape else float("inf")
    return {"backend": f"{name} {REPRESENTATION_OUTPUT}", "compared": "L2-normalised vectors vs the folded layer "
            "in dynamic mode", "max_abs_diff": diff, "agreement": 1.0 if diff <= tolerance else 0.0,
            "tolerance": tolerance, "passed": bool(diff <= tolerance)}


def describe_result(result: dict) -> str:
    """One result of the gate in words, e.g. for its error message and export.py's output."""
    agreement = "label-set" if "label_set_agreement" in result else "argmax"
    limit = f", limit {result['tolerance']:g}" if "tolerance" in result else ""
    return (f"{result['backend']}: max |Δ| {result['max_abs_diff']:.3g} ({result.get('compared', 'logits')}{limit}), "
            f"{agreement} agreement {result['agreement']:.3f}")


def fp16_check(directory: str, feed: Dict[str, np.ndarray], fp32_logits: np.ndarray,
               decoder: Optional[Decoder] = None, probabilities: bool = False, file: str = ONNX_FP16_FILE,
               gate: bool = True) -> dict:
    """model_fp16.onnx (or `file`) vs model.onnx on the sample batch, gated with FP16_TOLERANCE
    (`gate=False`: reported only)."""
    try:
        fp16 = onnxruntime_outputs(os.path.join(directory, file), feed)[0]
    except Exception as exc:  # some CPU builds lack fp16 kernels; the model targets onnxruntime-gpu
        return {"backend": "onnxruntime fp16 (CPU)", "checked": False, "reason": f"{type(exc).__name__}: {exc}"}
    result = compare("onnxruntime fp16 (CPU)", fp32_logits, fp16, FP16_TOLERANCE, decoder, probabilities)
    result["checked"] = True
    if gate and not result["passed"]:
        raise ExportError(f"fp16 model disagrees with fp32: {describe_result(result)}", directory)
    return result


def int8_check(directory: str, feed: Dict[str, np.ndarray], fp32_logits: np.ndarray,
               decoder: Optional[Decoder] = None, probabilities: bool = False) -> dict:
    """int8 vs fp32 ONNX on the sample batch. Reported, not gated: quantization moves logits by
    design, and on an untrained model near-ties flip; measure agreement on real data."""
    int8_logits = onnxruntime_outputs(os.path.join(directory, ONNX_INT8_FILE), feed)[0]
    result = compare("onnxruntime int8", fp32_logits, int8_logits, float("inf"), decoder, probabilities)
    result.pop("tolerance")
    result.pop("passed")
    if result["agreement"] < 0.99:
        logger.warning("int8 model agrees with fp32 on %.1f%% of the sample batch", 100 * result["agreement"])
    return result


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


def onnxruntime_outputs(path: str, feed: Dict[str, np.ndarray], names=(OUTPUT_NAME,)) -> List[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(list(names), feed)
