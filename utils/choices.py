"""The values a flag may take: `Choice` enums and the device names, one definition each.

The flag dataclasses (utils/flags/), the code that acts on a choice (model/spec.py, export,
ensembles, pretraining) and the Python API all read them here, without importing any flags.
Standard library only.
"""
from __future__ import annotations

import enum
import re
from typing import Optional, Tuple

from .errors import UserError


class Choice(str, enum.Enum):
    """A flag's allowed values. Parsing ignores case and knows upstream's spellings (`None`)."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec) -> str:
        return format(self.value, spec)

    @classmethod
    def parse(cls, text):
        if isinstance(text, cls):
            return text
        key = str(text).strip().lower().replace("_", "-")  # multi_label == multi-label
        for member in cls:
            if key == member.value.replace("_", "-") or (member.value == "none" and key in NONE_SPELLINGS):
                return member
        raise ValueError(f"must be one of {cls.describe()}, got {text!r}")

    @classmethod
    def from_flag(cls, text, flag: str):
        """`parse`, with a bad value reported as a user error on `flag`."""
        try:
            return cls.parse(text)
        except ValueError as exc:
            raise UserError(str(exc), flag) from None

    @classmethod
    def describe(cls) -> str:
        values = [m.value for m in cls]
        return ", ".join(values[:-1]) + " or " + values[-1] if len(values) > 1 else values[0]


NONE_SPELLINGS = ("", "null", "false", "no")  # also mean `none` for choices that have it (upstream's `None`)


class Method(Choice):
    PTUNING = "ptuning"
    FINETUNE = "finetune"


class VerbalizerKind(Choice):
    SOFT = "soft"
    MANUAL = "manual"


class ManualLoss(Choice):
    CE = "ce"
    MLM = "mlm"


class SoftEncoder(Choice):
    LSTM = "lstm"
    MLP = "mlp"
    NONE = "none"


class TaskType(Choice):
    """What a text gets: one label, a set of labels, or a set of label paths (utils/task/decoding.py)."""

    MULTI_CLASS = "multi-class"
    MULTI_LABEL = "multi-label"
    HIERARCHICAL = "hierarchical"


class ThresholdSearch(Choice):
    NONE = "none"
    GLOBAL = "global"
    PER_LABEL = "per-label"


class HierarchicalDecoding(Choice):
    CONSISTENT = "consistent"
    FLAT = "flat"


class LongTextMode(Choice):
    """How a text longer than one input is read (utils/task/windows.py)."""

    TRUNCATE = "truncate"
    HEAD_TAIL = "head_tail"
    WINDOW = "window"


class WindowAggregation(Choice):
    MEAN = "mean"
    MAX = "max"
    VOTE = "vote"


class WindowTraining(Choice):
    """What one training example is under --long_text window (utils/training/long_text.py)."""

    WINDOW = "window"      # each window, carrying its document's label(s)
    DOCUMENT = "document"  # each document: its windows' aggregated logits, trained end to end


class TeacherLabels(Choice):
    """What a student learns from the teacher: its probabilities, or its decisions."""

    SOFT = "soft"
    HARD = "hard"


class ExportType(Choice):
    PADDLE = "paddle"
    ONNX = "onnx"


class Quantize(Choice):
    NONE = "none"
    INT8 = "int8"


class FuseAttention(Choice):
    """Export: rewrite the attention subgraphs into onnxruntime's fused operators (utils/export/fusion.py)."""

    AUTO = "auto"  # each variant fused where its parity check passes and it is faster on this machine
    ON = "on"      # fused where its parity check passes
    OFF = "off"


class Masking(Choice):
    """pretrain.py: whole words (jieba's, as ERNIE) or every token on its own."""

    WORD = "word"
    CHAR = "char"


class Split(Choice):
    """explain.py --bad_cases: the labelled split whose errors are explained."""

    DEV = "dev"
    TEST = "test"


class LogLevel(Choice):
    """serve.py: uvicorn's log levels."""

    CRITICAL = "critical"
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"
    DEBUG = "debug"


class EventLoop(Choice):
    """uvicorn's event loops; each named one needs its module (uvicorn[standard] installs both)."""

    AUTO = "auto"
    ASYNCIO = "asyncio"
    UVLOOP = "uvloop"


class HttpParser(Choice):
    """uvicorn's HTTP parsers; each named one needs its module."""

    AUTO = "auto"
    H11 = "h11"
    HTTPTOOLS = "httptools"


DEVICE_PATTERN = re.compile(r"^(cpu|gpu(:\d+)?)$")


def split_device(device: Optional[str], device_id: int = 0, prefix: str = "") -> Tuple[Optional[str], int]:
    """`device` ("cpu", "gpu", "gpu:N", or None: the default) and `device_id` -> `(cpu|gpu|None, GPU
    number)`; "gpu:N" sets the number. The one check of a device, for every script's `--device` and
    the Python API's `device=`: errors name the argument (`prefix` "--": a flag)."""
    if isinstance(device_id, bool) or not isinstance(device_id, int) or device_id < 0:
        raise UserError(f"must be a GPU number, 0 or more, got {device_id!r}", prefix + "device_id")
    if device is None:
        return None, device_id
    if not isinstance(device, str) or not DEVICE_PATTERN.match(device):
        raise UserError(f"must be cpu, gpu or gpu:N, got {device!r} (this tool runs on CPUs and NVIDIA GPUs)",
                        prefix + "device")
    kind, _, number = device.partition(":")
    if number and device_id not in (0, int(number)):
        raise UserError(f"names GPU {number} and {prefix}device_id {device_id}: give one of them", prefix + "device")
    return kind, int(number) if number else device_id


class AnnotationFormat(Choice):
    """annotate.py: the annotation tool's file format (utils/annotation/)."""

    LABEL_STUDIO = "label-studio"
    DOCCANO = "doccano"


class ConflictPolicy(Choice):
    """annotate.py import --conflict: what to do when annotations of one text disagree."""

    ERROR = "error"
    MAJORITY = "majority"
    LATEST = "latest"
    DROP = "drop"


class UnlabeledPolicy(Choice):
    """annotate.py import --unlabeled: where a task nobody annotated goes."""

    DATA = "data"
    DROP = "drop"
    ERROR = "error"


class CancelledPolicy(Choice):
    """annotate.py import --cancelled: a task annotators skipped (Label Studio's was_cancelled)."""

    SKIP = "skip"
    ERROR = "error"
class Strategy(Choice):
    """select.py --strategy: how texts are ranked for labelling (utils/selection/scores.py)."""

    ENTROPY = "entropy"
    MARGIN = "margin"
    DISAGREEMENT = "disagreement"
    DIVERSITY = "diversity"
    HYBRID = "hybrid"


class Diversity(Choice):
    """select.py --diversity: how diversity and hybrid spread their picks over the texts' vectors."""

    KCENTER = "kcenter"
    KMEANS = "kmeans"


class Disagreement(Choice):
    """select.py --disagreement: how an ensemble's members' disagreement is measured."""

    KL = "kl"
    VOTE = "vote"
