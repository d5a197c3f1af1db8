"""The flags of what builds an export: its contents (train.py --do_export, export.py, ensemble.py),
how export.py and ensemble.py build and check it, and those two scripts' own flags."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from ..choices import ExportType, FuseAttention, HierarchicalDecoding, Quantize, ThresholdSearch
from ..errors import UserError
from .checks import fraction, positive


@dataclass
class ExportArguments:
    """What an export contains; shared by `train.py --do_export`, export.py and ensemble.py."""

    export_type: ExportType = field(default=ExportType.PADDLE, metadata={
        "help": "paddle: static graph + ONNX; onnx: ONNX only (static graph removed after the parity check)."})
    export_fp16: bool = field(default=False, metadata={"help": "Also write model_fp16.onnx for onnxruntime-gpu."})
    quantize: Quantize = field(default=Quantize.NONE, metadata={
        "help": "int8: also write model_int8.onnx (onnxruntime dynamic quantization; infer.py --use_int8)."})
    fuse_attention: FuseAttention = field(default=FuseAttention.OFF, metadata={
        "help": "Rewrite the attention layers into onnxruntime's fused Attention operators, in each ONNX "
                "file whose parity check it passes. auto: only where it is also faster on this machine (timed at "
                "export; fp16, made for GPUs, stays unfused); on: wherever it passes; off (default): never, as no "
                "faster on the machine it was measured on (BENCHMARKS.md). manifest.json (onnx.attention_fusion) "
                "records which file is fused and why."})


@dataclass
class ExportBuildArguments(ExportArguments):
    """How export.py and ensemble.py build an export: the ONNX opset, the parity gate, replacing."""

    opset: int = field(default=13, metadata={"help": "ONNX opset (>= 13)."})
    tolerance: float = field(default=1e-4, metadata={
        "help": "Parity gate: max |Δ| allowed (of the logits; an ensemble's: of the probabilities)."})
    overwrite_output_dir: bool = field(default=False, metadata={
        "help": "Replace an existing export directory (ensemble.py: and the results of an earlier ensemble)."})

    def __post_init__(self):
        if self.opset < 13:
            raise UserError(f"must be at least 13, got {self.opset}", "--opset")
        positive(self, "tolerance")


@dataclass
class ExportCommandArguments(ExportBuildArguments):
    """export.py: a trained checkpoint into an export directory."""

    resume_from_checkpoint: Optional[str] = field(default=None, metadata={
        "help": "Checkpoint (or train.py output_dir) to export. Required."})
    output_dir: str = field(default="./checkpoints/export", metadata={"help": "Export directory to write."})
    data_dir: Optional[str] = field(default=None, metadata={
        "help": "Dataset folder; dev.txt (else test.txt/train.txt/data.txt) texts make the parity-check batch."})

    def __post_init__(self):
        if not self.resume_from_checkpoint:
            raise UserError("is required: the checkpoint (or train.py --output_dir) to export",
                            "--resume_from_checkpoint")
        if not str(self.output_dir).strip():
            raise UserError("must name a directory, got an empty string", "--output_dir")
        super().__post_init__()


@dataclass
class EnsembleArguments(ExportBuildArguments):
    """ensemble.py: trained runs combined into one export that averages their probabilities."""

    members: Optional[List[str]] = field(default=None, metadata={"required": True, "help": (
        "Trained models: train.py --output_dir directories (their final model) or checkpoint-N.")})
    output_dir: Optional[str] = field(default=None, metadata={
        "required": True, "help": "Where export/ and the results go."})
    data_dir: Optional[str] = field(default=None, metadata={
        "help": "Dataset folder: dev.txt for the parity sample and --do_eval, test.txt and data.txt for --do_predict."})
    do_eval: bool = field(default=False, metadata={"help": "The ensemble's and the members' metrics on dev.txt."})
    do_predict: bool = field(default=False, metadata={
        "help": "The same on test.txt (+ test_predictions.tsv), and data_predictions.tsv for data.txt."})
    threshold: Optional[float] = field(default=None, metadata={
        "help": "Label sets: one threshold for every label (default: per label, the mean of the members' thresholds)."})
    threshold_search: Optional[ThresholdSearch] = field(default=None, metadata={
        "help": "Label sets: tune the thresholds on dev.txt with the ensemble's probabilities."})
    hierarchical_decoding: Optional[HierarchicalDecoding] = field(default=None, metadata={
        "help": "Hierarchical: default the members' (they must agree)."})
    batch_size: int = field(default=32, metadata={"help": "Texts per batch when evaluating."})

    def __post_init__(self):
        fraction(self.threshold, "--threshold")
        positive(self, "opset", "batch_size")
        super().__post_init__()
