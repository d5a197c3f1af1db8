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
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

from .errors import UserError


@dataclass
class ModelArguments:
    model_name_or_path: str = field(default="ernie-3.0-base-zh", metadata={
        "help": "Built-in PaddleNLP model name (needs network or cache) or a local model directory."})
    export_type: str = field(default="paddle", metadata={
        "help": "With --do_export: `paddle` (static graph + ONNX) or `onnx` (ONNX only)."})
    export_fp16: bool = field(default=False, metadata={"help": "With --do_export: also write model_fp16.onnx."})
    quantize: Optional[str] = field(default=None, metadata={
        "help": "With --do_export: int8 also writes model_int8.onnx (onnxruntime dynamic quantization)."})
    method: str = field(default="ptuning", metadata={
        "help": "ptuning (prompt + verbalizer on the MLM head) or finetune ([CLS] classifier baseline)."})
    verbalizer: str = field(default="soft", metadata={
        "help": "P-tuning verbalizer: soft (SoftVerbalizer, one [MASK]) or manual (label words predicted "
                "token by token at as many [MASK]s as they have tokens; equal lengths needed)."})
    manual_loss: str = field(default="ce", metadata={
        "help": "With --verbalizer manual: ce (cross-entropy over the labels' word log-probabilities, PET style) "
                "or mlm (the gold word's token-level MLM loss over the whole vocabulary, transformers_tasks style)."})


@dataclass
class DataArguments:
    data_dir: str = field(default="./data/", metadata={
        "help": "Folder with train.txt, dev.txt, label.txt and optionally test.txt and data.txt."})
    prompt: Optional[str] = field(default=None, metadata={
        "help": "Prompt text (P-tuning: initialises the soft tokens) or a full template string."})
    soft_encoder: str = field(default="lstm", metadata={"help": "Soft prompt encoder: lstm, mlp or none."})
    encoder_hidden_size: int = field(default=200, metadata={"help": "Hidden size of the soft prompt encoder."})
    num_virtual_tokens: Optional[int] = field(default=None, metadata={
        "help": "Number of soft tokens (peft's num_virtual_tokens). Default: one per token of --prompt."})
    early_stopping_patience: int = field(default=4, metadata={
        "help": "Stop after this many evaluations without improvement (0: never)."})
    early_stopping_threshold: float = field(default=0.0, metadata={
        "help": "Improvement needed to reset the early-stopping patience."})


def flag_given(argv: Sequence[str], flag: str) -> bool:
    """Whether `flag` is on the command line, as `--flag value` or `--flag=value`."""
    return any(a == flag or a.startswith(flag + "=") for a in argv)


def _value(argv: Sequence[str], flag: str) -> Optional[str]:
    for index, arg in enumerate(argv):
        if arg == flag and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


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
    """Parse train.py's flags into `(model_args, data_args, training_args)`."""
    from paddlenlp.prompt import PromptTuningArguments
    from paddlenlp.trainer import PdArgumentParser

    training_args_class = training_args_class or PromptTuningArguments
    parser = PdArgumentParser((ModelArguments, DataArguments, training_args_class))
    argv = with_defaults(argv)
    try:
        model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    except ValueError as exc:  # unknown flags, or TrainingArguments.__post_init__ rejecting a combination
        message = str(exc).replace("\n", " ")
        if "not used by the PdArgumentParser" in message:
            message = "unknown flag(s) " + message.split(":", 1)[1].strip() + "; `python train.py --help` lists them"
        raise UserError(message, "train.py") from None
    check_args(model_args, data_args, training_args)
    return model_args, data_args, training_args


def check_args(model_args: ModelArguments, data_args: DataArguments, training_args) -> None:
    import paddle

    if model_args.export_type not in ("paddle", "onnx"):
        raise UserError(f"must be paddle or onnx, got {model_args.export_type!r}", "--export_type")
    if model_args.method not in ("ptuning", "finetune"):
        raise UserError(f"must be ptuning or finetune, got {model_args.method!r}", "--method")
    if model_args.verbalizer not in ("soft", "manual"):
        raise UserError(f"must be soft or manual, got {model_args.verbalizer!r}", "--verbalizer")
    if model_args.manual_loss not in ("ce", "mlm"):
        raise UserError(f"must be ce or mlm, got {model_args.manual_loss!r}", "--manual_loss")
    if model_args.method == "finetune" and (training_args.freeze_plm or training_args.freeze_dropout):
        raise UserError("--freeze_plm/--freeze_dropout with --method finetune would leave nothing to train "
                        "but the classifier's input; drop them or use --method ptuning", "--method")
    if data_args.soft_encoder not in ("lstm", "mlp", "none"):
        raise UserError(f"must be lstm, mlp or none, got {data_args.soft_encoder!r}", "--soft_encoder")
    if data_args.encoder_hidden_size is not None and data_args.encoder_hidden_size <= 0:
        raise UserError(f"must be positive, got {data_args.encoder_hidden_size}", "--encoder_hidden_size")
    if training_args.max_seq_length < 4:
        raise UserError(f"must be at least 4, got {training_args.max_seq_length}", "--max_seq_length")
    device = str(training_args.device)
    if device.startswith("gpu") and not paddle.is_compiled_with_cuda():
        raise UserError("asks for a GPU but this Paddle is the CPU build; install paddlepaddle-gpu "
                        "(https://www.paddlepaddle.org.cn/install) or use --device cpu", "--device")
    if (training_args.fp16 or getattr(training_args, "bf16", False)) and not device.startswith("gpu"):
        raise UserError("--fp16/--bf16 mixed precision needs --device gpu", "--fp16")
    if not any((training_args.do_train, training_args.do_eval, training_args.do_predict,
                getattr(training_args, "do_export", False))):
        raise UserError("nothing to do: give at least one of --do_train, --do_eval, --do_predict, --do_export",
                        "train.py")
