"""Export a checkpoint or an ensemble into a self-contained deployment directory (export.py, train.py
--do_export, ensemble.py): one pipeline, one parity gate.

    model.json + model.pdiparams   Paddle 3 static graph (PIR; `model.pdmodel` where Paddle writes the legacy format)
    model.onnx                     paddle2onnx conversion, dynamic batch and sequence axes, output `logits`
                                   (its attention fused into onnxruntime's operators where that passed the
                                   parity check and, with --fuse_attention auto, was faster: utils/export/fusion.py;
                                   manifest.json onnx.attention_fusion says which graph each file is)
    model_fp16.onnx                with --export_fp16: float16 weights, float32 inputs/outputs (onnxruntime-gpu)
    model_int8.onnx                with --quantize int8: onnxruntime dynamic quantization (int8 weights, VNNI on x86)
    vocab.txt, tokenizer_config.json, special_tokens_map.json
    preprocess.json                the template as token-id parts, for infer.py's Paddle-free preprocessing
    template.json                  the template parts as trained
    labels.json                    labels in output (logit) order, with their label words
    manifest.json                  inputs/outputs, max_seq_length, versions, file sizes and hashes, parity results

What is exported is an `ExportSource`: the inference graph with its prompt encoders folded
(utils/export/graph.py), the files describing its inputs, and the reference its outputs must
reproduce. A checkpoint provides one here (`checkpoint_source`), an ensemble in
utils/ensembles/export.py. Before anything is published, the parity gate (utils/export/parity.py)
compares the dynamic-graph model (unfolded), Paddle Inference on the static graph and onnxruntime
on model.onnx on a sample batch; the export fails with the numbers unless they agree. The directory
is built beside the target and renamed into place, so a failed export leaves nothing half-written.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import platform
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import paddle

from ..console import quiet_native_output
from ..deploy.format import (FORMAT_VERSION, LABELS_FILE, MANIFEST_FILE, ONNX_FILE, ONNX_FP16_FILE, ONNX_INT8_FILE,
                             OUTPUT_NAME, PREPROCESS_FILE, REPRESENTATION_OUTPUT, TEMPLATE_FILE, view_input_names,
                             view_suffix)
from ..deploy.preprocess import PromptPreprocessor, describe_template
from ..choices import ExportType, FuseAttention, Quantize
from ..errors import UserError
from ..files import atomic_directory, sha256_file, write_json_atomic
from ..model.assembly import rebuild_from_checkpoint
from ..model.spec import ModelSpec
from ..rundir.plan import DirLock
from ..task.decoding import Decoder
from .card import card_name, write_export_card
from .fusion import AttentionFusion, timing_batch
from .graph import FoldedPromptModel, convert_to_fp16, quantize_int8, write_graphs
from .parity import (DEFAULT_TOLERANCE, Reference, fp16_check, int8_check, onnxruntime_outputs, parity_gate,
                     sample_examples)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportOptions:
    """How to export: the choices export.py, train.py --do_export and ensemble.py share."""

    export_type: str = ExportType.PADDLE.value
    fp16: bool = False
    int8: bool = False
    opset: int = 13
    tolerance: float = DEFAULT_TOLERANCE
    fuse_attention: str = FuseAttention.OFF.value

    @classmethod
    def from_flags(cls, export_type: str, fp16: bool, quantize: Optional[str], opset: int,
                   tolerance: float, fuse_attention: str = FuseAttention.OFF.value) -> "ExportOptions":
        """The options the flags ask for, or a `UserError` naming the flag."""
        export_type = ExportType.from_flag(export_type, "--export_type").value
        quantize = Quantize.from_flag(quantize or "none", "--quantize").value
        fuse_attention = FuseAttention.from_flag(fuse_attention, "--fuse_attention").value
        if opset < 13:
            raise UserError(f"must be at least 13, got {opset}", "--opset")
        if not tolerance > 0:
            raise UserError(f"must be positive, got {tolerance}", "--tolerance")
        return cls(export_type, fp16, quantize == Quantize.INT8.value, opset, tolerance, fuse_attention)


@dataclass(frozen=True)
class ExportSource:
    """What to export: a checkpoint (`checkpoint_source`) and an ensemble (utils/ensembles/export.py)
    each describe themselves so; `write_export` does the rest."""

    name: str                    # in the log line
    layer: Any                   # the inference graph: a paddle.nn.Layer in eval mode, prompt encoders folded
    reference: Reference         # what its outputs must reproduce (the parity gate)
    spec: ModelSpec              # labels.json and the model's description in manifest.json (its decoding: the
                                 # reference's decoder)
    tokenizer: Any               # saved into the export (vocab.txt, ...)
    preprocess: dict             # preprocess.json
    template: dict               # template.json
    text_keys: Sequence[str]     # the fields of one example (text_a, text_b)
    outputs: Sequence[dict]      # the graph's outputs as manifest.json lists them, `logits` first
    views: int = 1               # sets of the four inputs (utils/deploy/format.py)
    source_checkpoint: Optional[str] = None
    manifest: Dict[str, Any] = field(default_factory=dict)  # fields replacing or adding to the spec's description

    @property
    def input_names(self) -> tuple:
        return tuple(name for view in range(self.views) for name in view_input_names(view))

    @property
    def output_names(self) -> tuple:
        return tuple(output["name"] for output in self.outputs)


def export_lock(output_dir: str) -> DirLock:
    """The lock of an export directory: a file beside it (the directory itself is replaced by rename)."""
    parent, name = os.path.split(os.path.abspath(output_dir))
    return DirLock(parent, lock_name=f".{name}.lock", what="export.py")


def export_checkpoint(checkpoint_dir: str, output_dir: str, examples: Optional[List[dict]] = None,
                      export_type: str = "paddle", export_fp16: bool = False, overwrite: bool = False,
                      opset: int = 13, tolerance: float = DEFAULT_TOLERANCE, quantize: Optional[str] = None,
                      locked: bool = False, reject_option: Optional[tuple] = None,
                      fuse_attention: str = FuseAttention.OFF.value) -> dict:
    """Export `checkpoint_dir` to `output_dir`; return the manifest.

    `locked`: the caller already holds a lock on the directory around `output_dir` (train.py).
    `reject_option`: `(threshold, other_label)` replacing the checkpoint's (train.py --reject_threshold
    on a checkpoint: decoding, not weights).
    """
    options = ExportOptions.from_flags(export_type, export_fp16, quantize, opset, tolerance, fuse_attention)
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise UserError("exists and is not a directory", output_dir)
    lock = None if locked else export_lock(output_dir).acquire()
    try:
        if os.path.exists(output_dir) and os.listdir(output_dir) and not overwrite:
            raise UserError("already exists and is not empty; pass --overwrite_output_dir to replace it", output_dir)
        started = time.time()
        paddle.set_device("cpu")
        with paddle.utils.unique_name.guard():
            source = checkpoint_source(checkpoint_dir, reject_option)
        return write_export(source, output_dir, examples, options, started)
    finally:
        if lock is not None:
            lock.release()


def checkpoint_source(checkpoint_dir: str, reject_option: Optional[tuple] = None) -> ExportSource:
    """A checkpoint's export: its model with the prompt encoder folded, held to the model unfolded."""
    model, tokenizer, spec = rebuild_from_checkpoint(checkpoint_dir)
    if reject_option is not None:
        spec = dataclasses.replace(spec, reject_threshold=reject_option[0], other_label=reject_option[1])
    folded = FoldedPromptModel(model, representation=True)
    folded.eval()
    return ExportSource(
        name=checkpoint_dir, layer=folded, reference=Reference(models=[model], decoder=spec.decoder), spec=spec,
        tokenizer=tokenizer, preprocess=describe_template(model.template, spec.max_seq_length, spec.long_text),
        template={"template": spec.template, "processed": model.template.prompt},
        text_keys=sorted(model.template.example_keys),
        outputs=[{"name": OUTPUT_NAME, "dtype": "float32", "shape": ["batch", len(spec.labels)]},
                 representation_output(model.plm.get_input_embeddings().weight.shape[1])],
        source_checkpoint=os.path.abspath(checkpoint_dir))


def representation_output(size: int) -> dict:
    """The manifest's entry for the text's vector (utils/deploy/format.py REPRESENTATION_OUTPUT)."""
    return {"name": REPRESENTATION_OUTPUT, "dtype": "float32", "shape": ["batch", int(size)],
            "meaning": "the PLM's hidden state at the [MASK]s, averaged (cls head: its pooled vector); "
                       "for selection (select.py)"}


def eager_outputs(source: ExportSource, feed) -> List:
    """The folded layer's outputs on `feed` in dynamic mode, before the static graph is traced."""
    with paddle.no_grad():
        outputs = source.layer(*[paddle.to_tensor(feed[name]) for name in source.input_names])
    outputs = outputs if isinstance(outputs, (tuple, list)) else [outputs]
    return [output.numpy() for output in outputs]


def write_export(source: ExportSource, output_dir: str, examples: Optional[List[dict]], options: ExportOptions,
                 started: Optional[float] = None) -> dict:
    """Write `source` to `output_dir` (built beside it, renamed into place once the gate passed);
    return the manifest. `examples`: texts for the parity batch. `started`: when the export began."""
    started = time.time() if started is None else started
    reference = source.reference
    examples = sample_examples(examples, source.text_keys, source.spec.max_seq_length)
    with atomic_directory(output_dir) as directory:
        write_preprocessing(source, directory)
        # One preprocessing and one fp32 onnxruntime pass serve the gate and the fp16/int8 checks.
        preprocessor = PromptPreprocessor.from_export(directory)
        # --long_text: the gate holds every window of the sample's long document to the training template
        examples, pieces = preprocessor.split(examples)
        features = preprocessor.encode(examples)
        feed = preprocessor.pad(features)
        # The representation's reference: the folded layer run eagerly (its logits are held to the
        # unfolded model by the gate; the vector is the same encoder pass's hidden state).
        eager = eager_outputs(source, feed) if REPRESENTATION_OUTPUT in source.output_names else None
        files = write_graphs(source.layer, directory, options.opset, source.input_names, source.output_names)
        outputs = onnxruntime_outputs(os.path.join(directory, ONNX_FILE), feed, source.output_names)
        fusion = AttentionFusion(directory, options.fuse_attention, preprocessor.pad(timing_batch(features)))
        fused = fusion.build(int8=options.int8)
        parity = parity_gate(reference, directory, files, examples, feed, outputs, options.tolerance,
                             output_names=source.output_names, eager=eager,
                             fused_outputs=onnxruntime_outputs(fused, feed, source.output_names) if fused else None)
        if preprocessor.long_text.active:
            parity["documents"] = len(pieces)
            parity["longest_document_inputs"] = max(len(p.texts) for p in pieces)
        parity.update(write_variants(directory, feed, outputs[0], options.fp16, options.int8, reference.decoder,
                                     reference.probabilities, fusion, options.tolerance))
        fusion.fp32(parity.pop("attention_fusion", None))  # last: the variants were made from the unfused model.onnx
        if options.export_type == ExportType.ONNX.value:
            for name in files.values():
                os.remove(os.path.join(directory, name))
            files = {}
        manifest = write_manifest(directory, source, options, files, parity, seconds=time.time() - started,
                                  fusion=fusion.finish())
        # after the manifest: the card is documentation, not verified, and a user may edit it
        write_export_card(directory, manifest, name=card_name(output_dir))
    logger.info("exported %s -> %s (parity: %s)", source.name, output_dir,
                ", ".join(f"{r['backend']} max|Δ| {r['max_abs_diff']:.2g}" for r in parity["results"]))
    return manifest


def write_preprocessing(source: ExportSource, directory: str) -> None:
    """What infer.py needs besides the graph: the tokenizer, the template as token ids, the labels."""
    spec = source.spec
    source.tokenizer.save_pretrained(directory)
    write_json_atomic(os.path.join(directory, PREPROCESS_FILE), source.preprocess)
    write_json_atomic(os.path.join(directory, TEMPLATE_FILE), source.template)
    write_json_atomic(os.path.join(directory, LABELS_FILE), [
        {"id": i, "label": label, "word": word} for i, (label, word) in enumerate(zip(spec.labels, spec.label_words))])


def write_variants(directory: str, feed, fp32_logits, fp16: bool, int8: bool,
                   decoder: Optional[Decoder] = None, probabilities: bool = False,
                   fusion: Optional[AttentionFusion] = None, tolerance: float = DEFAULT_TOLERANCE) -> dict:
    """model_fp16.onnx / model_int8.onnx, each checked against the fp32 model on the sample batch;
    with `fusion`, each made from the unfused model.onnx and from its fused candidate, one kept."""
    checks = {}
    if fp16:
        with quiet_native_output("the fp16 conversion"):
            convert_to_fp16(directory)
        if fusion is not None:
            fusion.fp16(feed, fp32_logits, decoder, probabilities)
        checks["fp16"] = fp16_check(directory, feed, fp32_logits, decoder, probabilities)
    if int8:
        with quiet_native_output("onnxruntime quantization"):
            quantize_int8(directory)
        if fusion is not None:
            fusion.int8(feed, fp32_logits, tolerance, decoder, probabilities)
        checks["int8"] = int8_check(directory, feed, fp32_logits, decoder, probabilities)
    return checks


def write_manifest(directory: str, source: ExportSource, options: ExportOptions, files: Dict[str, str],
                   parity: dict, seconds: float, fusion: Optional[dict] = None) -> dict:
    """manifest.json, written last: the export's description and every file's size and sha256.
    `fusion`: which ONNX graphs have their attention fused (`AttentionFusion.record`)."""
    spec, decoder = source.spec, source.reference.decoder
    manifest = {
        "format": FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "source_checkpoint": source.source_checkpoint,
        "export_type": options.export_type,
        "inputs": [{"name": name, "dtype": "int64", "shape": ["batch", "sequence" + view_suffix(view)]}
                   for view in range(source.views) for name in view_input_names(view)],
        "outputs": list(source.outputs),
        "onnx": {"fp32": ONNX_FILE, "fp16": ONNX_FP16_FILE if options.fp16 else None,
                 "int8": ONNX_INT8_FILE if options.int8 else None, "opset": options.opset,
                 **({"attention_fusion": fusion} if fusion else {})},
        "paddle": files or None,
        "method": spec.method.value,
        "verbalizer": spec.verbalizer,
        "head": spec.head,
        # task_type, thresholds, temperature, ...: how infer.py decodes `logits`, as the parity gate did
        **decoder.describe(),
        "threshold_search": spec.threshold_search if decoder.multi_label else None,
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
    manifest.update(source.manifest)
    manifest["files"] = {name: {"bytes": os.path.getsize(os.path.join(directory, name)),
                                "sha256": sha256_file(os.path.join(directory, name))}
                         for name in sorted(os.listdir(directory))}
    write_json_atomic(os.path.join(directory, MANIFEST_FILE), manifest)
    return manifest


def _versions() -> Dict[str, str]:
    import onnx
    import onnxruntime
    import paddle2onnx
    import paddlenlp

    return {"python": platform.python_version(), "paddle": paddle.__version__, "paddlenlp": paddlenlp.__version__,
            "paddle2onnx": paddle2onnx.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
