"""Command-line arguments of train.py: the PaddleNLP few-shot app's flags, with working defaults.

`PdArgumentParser` over `ModelArguments`, `DataArguments` and paddlenlp's
`PromptTuningArguments` (all Trainer flags: --learning_rate, --ppt_learning_rate, --max_steps,
--eval_steps, --save_total_limit, --fp16, ...). Defaults that differ from upstream, applied only
when the flag is not given, so the upstream commands run unchanged:

* `--report_to none` (VisualDL crashes with current protobuf; `--report_to visualdl` is checked
  first and dropped with a warning if it cannot write).
* `--device` gpu when Paddle has CUDA and a GPU is visible, else cpu.
* `--output_dir ./checkpoints/`.
* training with `--do_eval`: evaluate and save every `--eval_steps` (or every epoch when no
  `--eval_steps`), keep the best checkpoint by `--metric_for_best_model accuracy` and reload it at
  the end, early-stop after `--early_stopping_patience` (4) evaluations without improvement.
  (Upstream asserts in EarlyStoppingCallback unless all of these are given by hand.)
* `--save_total_limit 1`: the latest checkpoint is kept, and the best one besides it when
  evaluating (the Trainer never rotates the best one away).

Every choice flag is a `Choice` enum below: the parser, the checks and the code that acts on a
choice all use that one definition. Every flag is checked here, before any data or model is
loaded. Nothing here imports paddle at module level (multirun.py uses it).
"""
from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple, Union

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
        key = str(text).strip().lower()
        for member in cls:
            if key == member.value or (member.value == "none" and key in NONE_SPELLINGS):
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


class ExportType(Choice):
    PADDLE = "paddle"
    ONNX = "onnx"


class Quantize(Choice):
    NONE = "none"
    INT8 = "int8"


DEVICE_PATTERN = re.compile(r"^(cpu|gpu(:\d+)?)$")


@dataclass
class ExportArguments:
    """What an export contains; shared by `train.py --do_export` and export.py."""

    export_type: ExportType = field(default=ExportType.PADDLE, metadata={
        "help": "paddle: static graph + ONNX; onnx: ONNX only (static graph removed after the parity check)."})
    export_fp16: bool = field(default=False, metadata={"help": "Also write model_fp16.onnx for onnxruntime-gpu."})
    quantize: Quantize = field(default=Quantize.NONE, metadata={
        "help": "int8: also write model_int8.onnx (onnxruntime dynamic quantization; infer.py --use_int8)."})


@dataclass
class ModelArguments(ExportArguments):
    model_name_or_path: str = field(default="ernie-3.0-base-zh", metadata={
        "help": "Built-in PaddleNLP model name (needs network or cache) or a local model directory."})
    method: Method = field(default=Method.PTUNING, metadata={
        "help": "ptuning (prompt + verbalizer on the MLM head) or finetune ([CLS] classifier baseline)."})
    verbalizer: VerbalizerKind = field(default=VerbalizerKind.SOFT, metadata={
        "help": "P-tuning verbalizer: soft (SoftVerbalizer, one [MASK]) or manual (label words predicted "
                "token by token at as many [MASK]s as they have tokens; equal lengths needed)."})
    manual_loss: ManualLoss = field(default=ManualLoss.CE, metadata={
        "help": "With --verbalizer manual: ce (cross-entropy over the labels' word log-probabilities, PET style) "
                "or mlm (the gold word's token-level MLM loss over the whole vocabulary, transformers_tasks style)."})


@dataclass
class DataArguments:
    data_dir: str = field(default="./data/", metadata={
        "help": "Folder with train.txt, dev.txt, label.txt and optionally test.txt and data.txt."})
    prompt: Optional[str] = field(default=None, metadata={
        "help": "Prompt text (P-tuning: initialises the soft tokens) or a full template string."})
    soft_encoder: Optional[SoftEncoder] = field(default=None, metadata={
        "help": "Soft prompt encoder for a plain-text --prompt: lstm (default), mlp or none (upstream's `None` too)."})
    encoder_hidden_size: Optional[int] = field(default=None, metadata={
        "help": "Hidden size of the soft prompt encoder (default 200)."})
    num_virtual_tokens: Optional[int] = field(default=None, metadata={
        "help": "Number of soft tokens (peft's num_virtual_tokens). Default: one per token of --prompt."})
    early_stopping_patience: int = field(default=4, metadata={
        "help": "Stop after this many evaluations without improvement (0: never)."})
    early_stopping_threshold: float = field(default=0.0, metadata={
        "help": "Improvement needed to reset the early-stopping patience."})
    # The prompt-encoder flags given on the command line: a full template string sets these
    # itself, so giving them too is refused instead of silently ignored.
    prompt_flags_given: List[str] = field(default_factory=list, init=False)

    def __post_init__(self):
        self.prompt_flags_given = [name for name in PROMPT_ENCODER_FLAGS if getattr(self, name) is not None]
        self.soft_encoder = SoftEncoder.LSTM if self.soft_encoder is None else SoftEncoder.parse(self.soft_encoder)
        if self.encoder_hidden_size is None:
            self.encoder_hidden_size = DEFAULT_ENCODER_HIDDEN_SIZE


PROMPT_ENCODER_FLAGS = ("soft_encoder", "encoder_hidden_size", "num_virtual_tokens")
DEFAULT_ENCODER_HIDDEN_SIZE = 200


def _parser_class():
    """PdArgumentParser whose errors are `UserError`s and whose `Choice` fields parse leniently."""
    import dataclasses

    from paddlenlp.trainer import PdArgumentParser

    class Parser(PdArgumentParser):
        @staticmethod
        def _parse_dataclass_field(parser, dc_field: dataclasses.Field):
            choice = dc_field.type
            if getattr(choice, "__origin__", None) is Union:  # Optional[SomeChoice]
                choice = next(a for a in choice.__args__ if a is not type(None))
            if isinstance(choice, type) and issubclass(choice, Choice):

                def parse(text, _choice=choice):
                    try:
                        return _choice.parse(text)
                    except ValueError as exc:
                        import argparse

                        raise argparse.ArgumentTypeError(str(exc)) from None

                parser.add_argument(f"--{dc_field.name}", type=parse, default=dc_field.default,
                                    metavar="{" + ",".join(m.value for m in choice) + "}",
                                    help=dc_field.metadata.get("help"))
                return
            PdArgumentParser._parse_dataclass_field(parser, dc_field)

        def error(self, message):
            flag = re.match(r"argument (--\w+)", message)
            raise UserError(re.sub(r"^argument --\w+(/--\w+)*: ", "", message), flag.group(1) if flag else "train.py")

    return Parser


def flag_given(argv: Sequence[str], flag: str) -> bool:
    """Whether `flag` is on the command line, as `--flag value` or `--flag=value`."""
    return any(a == flag or a.startswith(flag + "=") for a in argv)


def _value(argv: Sequence[str], flag: str) -> Optional[str]:
    """The value of `flag`'s last occurrence (argparse keeps the last)."""
    found = None
    for index, arg in enumerate(argv):
        if arg == flag and index + 1 < len(argv):
            found = argv[index + 1]
        elif arg.startswith(flag + "="):
            found = arg.split("=", 1)[1]
    return found


def _truthy(argv: Sequence[str], flag: str) -> bool:
    """A bool flag is on when given bare (`--do_eval`) or with a true value (`--do_eval True`)."""
    for index, arg in enumerate(argv):
        if arg == flag:
            nxt = argv[index + 1] if index + 1 < len(argv) else ""
            return nxt.lower() not in ("false", "0", "no", "f", "n")
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1].lower() in ("true", "1", "yes", "t", "y")
    return False


def default_device() -> str:
    import paddle

    if paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0:
        return "gpu"
    return "cpu"


def with_defaults(argv: Sequence[str]) -> List[str]:
    """Append this tool's defaults for the flags the user did not give."""
    argv = list(argv)
    extra: List[str] = []
    if not flag_given(argv, "--output_dir"):
        extra += ["--output_dir", "./checkpoints/"]
    if not flag_given(argv, "--report_to"):
        extra += ["--report_to", "none"]
    if not flag_given(argv, "--device"):
        extra += ["--device", default_device()]
    if not flag_given(argv, "--save_total_limit"):
        extra += ["--save_total_limit", "1"]
    evaluating = _truthy(argv, "--do_train") and (
        _truthy(argv, "--do_eval") or (_value(argv, "--evaluation_strategy") or "no") != "no")
    if evaluating:
        strategy = _value(argv, "--evaluation_strategy")
        if strategy is None:
            strategy = "steps" if flag_given(argv, "--eval_steps") else "epoch"
            extra += ["--evaluation_strategy", strategy]
        if strategy != "no":
            if not flag_given(argv, "--save_strategy"):
                extra += ["--save_strategy", strategy]
            if strategy == "steps" and not flag_given(argv, "--save_steps") and flag_given(argv, "--eval_steps"):
                extra += ["--save_steps", _value(argv, "--eval_steps")]
            if not flag_given(argv, "--metric_for_best_model"):
                extra += ["--metric_for_best_model", "accuracy"]
            if not flag_given(argv, "--load_best_model_at_end"):
                extra += ["--load_best_model_at_end", "True"]
    return argv + extra


def parse_args(argv: Sequence[str], training_args_class=None) -> Tuple[ModelArguments, DataArguments, object]:
    """Parse and check train.py's flags into `(model_args, data_args, training_args)`."""
    from paddlenlp.prompt import PromptTuningArguments

    training_args_class = training_args_class or PromptTuningArguments
    parser = _parser_class()((ModelArguments, DataArguments, training_args_class))
    argv = with_defaults(argv)
    check_device_flag(_value(argv, "--device"))  # before paddlenlp acts on it
    check_numbers(lambda name: _number(_value(argv, f"--{name}")))  # before TrainingArguments.__post_init__
    try:
        model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    except ValueError as exc:  # unknown flags, or TrainingArguments.__post_init__ rejecting a combination
        message = str(exc).replace("\n", " ")
        if "not used by the PdArgumentParser" in message:
            message = "unknown flag(s) " + message.split(":", 1)[1].strip() + "; `python train.py --help` lists them"
        raise UserError(message, _flag_in(message, parser) or "train.py") from None
    check_args(model_args, data_args, training_args)
    return model_args, data_args, training_args


def check_device_flag(device: Optional[str]) -> None:
    if device is not None and not DEVICE_PATTERN.match(device):
        raise UserError(f"must be cpu, gpu or gpu:N, got {device!r} (this tool trains on CPUs and NVIDIA GPUs)",
                        "--device")


# (flag, test, what it must be): numeric Trainer flags, checked so that no value can reach a traceback.
_POSITIVE, _NON_NEGATIVE = (lambda v: v > 0, "positive"), (lambda v: v >= 0, "zero or more")
_NUMERIC_CHECKS = (
    ("per_device_train_batch_size", *_POSITIVE), ("per_device_eval_batch_size", *_POSITIVE),
    ("gradient_accumulation_steps", *_POSITIVE), ("learning_rate", *_NON_NEGATIVE),
    ("ppt_learning_rate", *_NON_NEGATIVE), ("seed", *_NON_NEGATIVE), ("weight_decay", *_NON_NEGATIVE),
    ("ppt_weight_decay", *_NON_NEGATIVE), ("max_grad_norm", *_NON_NEGATIVE), ("warmup_steps", *_NON_NEGATIVE),
    ("alpha_rdrop", *_NON_NEGATIVE), ("alpha_rgl", *_NON_NEGATIVE), ("dataloader_num_workers", *_NON_NEGATIVE),
    ("adam_epsilon", *_NON_NEGATIVE), ("ppt_adam_epsilon", *_NON_NEGATIVE),
    ("warmup_ratio", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("adam_beta1", lambda v: 0 <= v < 1, "in [0, 1)"), ("adam_beta2", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("ppt_adam_beta1", lambda v: 0 <= v < 1, "in [0, 1)"), ("ppt_adam_beta2", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("logging_steps", *_POSITIVE), ("eval_steps", *_POSITIVE), ("save_steps", *_POSITIVE),
)
METRICS_FOR_BEST_MODEL = ("accuracy", "macro_f1", "loss")


def _number(text: Optional[str]):
    try:
        return None if text is None else float(text)
    except ValueError:
        return None  # not a number: the parser reports it


def _flag_in(message: str, parser) -> Optional[str]:
    """The flag a paddlenlp message is about (`--name`, or a bare field name in it)."""
    named = re.search(r"--\w+", message)
    if named:
        return named.group(0)
    known = {action.dest for action in parser._actions}
    for word in re.findall(r"[a-z_]+", message):
        if word in known and "_" in word:
            return f"--{word}"
    return None


def check_numbers(value_of) -> None:
    """The numeric table below, on `value_of(name)` (raw command-line values, then parsed ones)."""
    for name, ok, what in _NUMERIC_CHECKS:
        value = value_of(name)
        if value is not None and (not ok(value) or (isinstance(value, float) and math.isnan(value))):
            shown = int(value) if isinstance(value, float) and value.is_integer() else value
            raise UserError(f"must be {what}, got {shown}", f"--{name}")


def check_args(model_args: ModelArguments, data_args: DataArguments, training_args) -> None:
    """Every flag, before any file is read or model loaded: one clear error per bad value."""
    import paddle

    check_numbers(lambda name: getattr(training_args, name, None))
    if training_args.do_train and training_args.max_steps <= 0 and not training_args.num_train_epochs > 0:
        raise UserError(f"must be positive (or give --max_steps), got {training_args.num_train_epochs}",
                        "--num_train_epochs")
    if training_args.save_total_limit is not None and training_args.save_total_limit <= 0:
        raise UserError(f"must be positive (checkpoints kept), got {training_args.save_total_limit}",
                        "--save_total_limit")
    if not str(training_args.output_dir or "").strip():
        raise UserError("must name a directory, got an empty string", "--output_dir")
    if training_args.max_seq_length < 4:
        raise UserError(f"must be at least 4, got {training_args.max_seq_length}", "--max_seq_length")
    metric = (training_args.metric_for_best_model or "").replace("eval_", "", 1)
    if metric and metric not in METRICS_FOR_BEST_MODEL:
        raise UserError(f"must be one of {', '.join(METRICS_FOR_BEST_MODEL)}, got "
                        f"{training_args.metric_for_best_model!r}", "--metric_for_best_model")
    if data_args.encoder_hidden_size is not None and data_args.encoder_hidden_size <= 0:
        raise UserError(f"must be positive, got {data_args.encoder_hidden_size}", "--encoder_hidden_size")
    if data_args.num_virtual_tokens is not None and data_args.num_virtual_tokens <= 0:
        raise UserError(f"must be positive, got {data_args.num_virtual_tokens}", "--num_virtual_tokens")
    if data_args.early_stopping_patience < 0:
        raise UserError(f"must be zero (never stop) or more, got {data_args.early_stopping_patience}",
                        "--early_stopping_patience")
    if model_args.method == Method.FINETUNE and (training_args.freeze_plm or training_args.freeze_dropout):
        raise UserError("--freeze_plm/--freeze_dropout with --method finetune would leave nothing to train "
                        "but the classifier's input; drop them or use --method ptuning", "--method")
    device = str(training_args.device)
    check_device_flag(device)
    if device.startswith("gpu") and not paddle.is_compiled_with_cuda():
        raise UserError("asks for a GPU but this Paddle is the CPU build; install paddlepaddle-gpu "
                        "(https://www.paddlepaddle.org.cn/install) or use --device cpu", "--device")
    if (training_args.fp16 or getattr(training_args, "bf16", False)) and not device.startswith("gpu"):
        raise UserError("--fp16/--bf16 mixed precision needs --device gpu", "--fp16")
    if not any((training_args.do_train, training_args.do_eval, training_args.do_predict,
                getattr(training_args, "do_export", False))):
        raise UserError("nothing to do: give at least one of --do_train, --do_eval, --do_predict, --do_export",
                        "train.py")
    if getattr(training_args, "do_export", False):
        check_export_dependencies()


EXPORT_MODULES = ("onnx", "paddle2onnx", "onnxruntime")


def check_export_dependencies() -> None:
    """--do_export needs onnx, paddle2onnx and onnxruntime: say so before training, not after."""
    import importlib.util

    missing = [name for name in EXPORT_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(f"needs {', '.join(missing)}, which this environment lacks; install them first: "
                        "`pip install onnxruntime` (CPU) or `pip install onnxruntime-gpu` (GPU; not both), and "
                        "`pip install -r requirements.txt` for onnx and paddle2onnx", "--do_export")

