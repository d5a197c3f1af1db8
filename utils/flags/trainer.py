"""train.py's Trainer flags: paddlenlp's `PromptTuningArguments` with this tool's defaults.

The defaults that differ from upstream are resolved in `__post_init__` (as HF's run_glue and
SetFit do), from what the user gave, so the upstream commands run unchanged:

* `--output_dir ./checkpoints/`, `--report_to none` (VisualDL only when asked for, and then
  switched off, never the run, if its writer fails), `--device` gpu when Paddle has CUDA and a GPU
  is visible, else cpu, `--save_total_limit 1` (the latest checkpoint, and the best one besides).
* Training with `--do_eval`: evaluate and save every `--eval_steps` (or every epoch when no
  `--eval_steps`), keep the best checkpoint by `--metric_for_best_model accuracy` and reload it at
  the end (early stopping: DataArguments). Upstream asserts in EarlyStoppingCallback unless all
  of these are given by hand.

Every numeric flag is checked here too, before paddlenlp's own `__post_init__` acts on it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional

from paddlenlp.prompt import PromptTuningArguments
from paddlenlp.trainer import TrainingArguments as PaddleNLPTrainingArguments
from paddlenlp.trainer.trainer_utils import IntervalStrategy

from ..choices import split_device
from ..errors import UserError

DEFAULT_OUTPUT_DIR = "./checkpoints/"
DEFAULT_SAVE_STEPS = 500
DEFAULT_METRIC = "accuracy"
METRICS_FOR_BEST_MODEL = ("accuracy", "macro_f1", "micro_f1", "loss")  # micro_f1: multi-label tasks
DEFAULT_MULTI_LABEL_METRIC = "macro_f1"  # upstream's multi-label/hierarchical commands select by macro-F1

# (flag, test, what it must be): checked before paddlenlp's __post_init__ sees the values.
_POSITIVE, _NON_NEGATIVE, _FRACTION = (lambda v: v > 0, "positive"), (lambda v: v >= 0, "zero or more"), (
    lambda v: 0 <= v < 1, "in [0, 1)")
NUMERIC_CHECKS = (
    ("per_device_train_batch_size", *_POSITIVE), ("per_device_eval_batch_size", *_POSITIVE),
    ("gradient_accumulation_steps", *_POSITIVE), ("learning_rate", *_NON_NEGATIVE),
    ("ppt_learning_rate", *_NON_NEGATIVE), ("seed", *_NON_NEGATIVE), ("weight_decay", *_NON_NEGATIVE),
    ("ppt_weight_decay", *_NON_NEGATIVE), ("max_grad_norm", *_NON_NEGATIVE), ("warmup_steps", *_NON_NEGATIVE),
    ("alpha_rdrop", *_NON_NEGATIVE), ("alpha_rgl", *_NON_NEGATIVE), ("dataloader_num_workers", *_NON_NEGATIVE),
    ("adam_epsilon", *_NON_NEGATIVE), ("ppt_adam_epsilon", *_NON_NEGATIVE), ("warmup_ratio", *_FRACTION),
    ("adam_beta1", *_FRACTION), ("adam_beta2", *_FRACTION), ("ppt_adam_beta1", *_FRACTION),
    ("ppt_adam_beta2", *_FRACTION), ("logging_steps", *_POSITIVE), ("eval_steps", *_POSITIVE),
    ("save_steps", *_POSITIVE), ("save_total_limit", *_POSITIVE),
)


# A loss weight given without the switch that turns its loss on is refused, not silently unused: upstream
# reads --alpha_rdrop only under --use_rdrop (and --alpha_rgl only under --use_rgl).
LOSS_WEIGHTS = (("alpha_rdrop", "use_rdrop"), ("alpha_rgl", "use_rgl"))


def check_loss_weights(args) -> None:
    """`--alpha_rdrop`/`--alpha_rgl` away from upstream's default only with `--use_rdrop`/`--use_rgl`."""
    for weight, switch in LOSS_WEIGHTS:
        default = PromptTuningArguments.__dataclass_fields__[weight].default
        if getattr(args, weight) != default and not getattr(args, switch):
            raise UserError(f"weighs a loss that is off: add --{switch} (without it --{weight} changes nothing)",
                            f"--{weight}")


def check_numbers(args) -> None:
    """Every NUMERIC_CHECKS flag `args` has, before paddlenlp's own __post_init__ acts on it."""
    for name, ok, what in NUMERIC_CHECKS:
        value = getattr(args, name, None)
        if value is not None and (not ok(value) or (isinstance(value, float) and math.isnan(value))):
            shown = int(value) if isinstance(value, float) and value.is_integer() else value
            raise UserError(f"must be {what}, got {shown}", f"--{name}")


def default_device() -> str:
    import paddle

    if paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0:
        return "gpu"
    return "cpu"


@dataclass
class TrainingArguments(PromptTuningArguments):
    output_dir: str = field(default=DEFAULT_OUTPUT_DIR, metadata={
        "help": "Where checkpoints, the final model, results, predictions, reports and the export go."})
    device: Optional[str] = field(default=None, metadata={
        "help": "cpu, gpu or gpu:N. Default: gpu when Paddle has CUDA and sees a GPU, else cpu."})
    report_to: Optional[List[str]] = field(default=None, metadata={
        "help": "none (default) or visualdl."})
    save_total_limit: Optional[int] = field(default=1, metadata={
        "help": "Checkpoints kept: the latest N, and the best one besides when evaluating."})
    evaluation_strategy: Optional[IntervalStrategy] = field(default=None, metadata={
        "help": "no, steps or epoch. Default with --do_train --do_eval: steps when --eval_steps is given, else epoch."})
    save_strategy: Optional[IntervalStrategy] = field(default=None, metadata={
        "help": "Default: the evaluation strategy when evaluating during training, else steps."})
    save_steps: Optional[int] = field(default=None, metadata={
        "help": f"Default: --eval_steps when evaluating every N steps, else {DEFAULT_SAVE_STEPS}."})
    load_best_model_at_end: Optional[bool] = field(default=None, metadata={
        "help": "Reload the best checkpoint at the end. Default: on when evaluating during training."})
    metric_for_best_model: Optional[str] = field(default=None, metadata={
        "help": f"accuracy, macro_f1 or loss. Default when evaluating during training: {DEFAULT_METRIC}."})

    def __post_init__(self):
        check_numbers(self)
        check_loss_weights(self)
        if self.do_train and self.max_steps <= 0 and not self.num_train_epochs > 0:
            raise UserError(f"must be positive (or give --max_steps), got {self.num_train_epochs}",
                            "--num_train_epochs")
        if not str(self.output_dir or "").strip():
            raise UserError("must name a directory, got an empty string", "--output_dir")
        if self.max_seq_length < 4:
            raise UserError(f"must be at least 4, got {self.max_seq_length}", "--max_seq_length")
        metric = (self.metric_for_best_model or "").replace("eval_", "", 1)
        if metric.endswith("_f1_score"):  # upstream's multi-label spelling: macro_f1_score
            metric = metric[:-len("_score")]
            self.metric_for_best_model = metric
        if metric and metric not in METRICS_FOR_BEST_MODEL:
            raise UserError(f"must be one of {', '.join(METRICS_FOR_BEST_MODEL)}, got {self.metric_for_best_model!r}",
                            "--metric_for_best_model")
        # Whether the metric is this tool's default (accuracy), which a multi-label task replaces (check_args).
        self.metric_is_default = self.metric_for_best_model is None
        self.resolve_defaults()
        # paddlenlp turns an explicit `--evaluation_strategy no` into "steps" whenever --do_eval is
        # on; here it means what it says: no evaluation during training, one at the end.
        final_evaluation_only = self.do_eval and IntervalStrategy(self.evaluation_strategy) == IntervalStrategy.NO
        if final_evaluation_only:
            self.do_eval = False
        super().__post_init__()
        if final_evaluation_only:
            self.do_eval = True

    def resolve_defaults(self) -> None:
        """This tool's defaults for whatever the user did not give (see the module docstring)."""
        if self.device is None:
            self.device = default_device()
        split_device(self.device, 0, "--")
        if self.report_to is None:
            self.report_to = ["none"]
        strategy = None if self.evaluation_strategy is None else IntervalStrategy(self.evaluation_strategy).value
        evaluating = self.do_train and (self.do_eval or strategy not in (None, "no"))
        if strategy is None:
            strategy = ("steps" if self.eval_steps else "epoch") if evaluating else "no"
            self.evaluation_strategy = strategy
        evaluating = evaluating and strategy != "no"
        if self.save_strategy is None:
            self.save_strategy = strategy if evaluating else "steps"
        if self.save_steps is None:
            self.save_steps = self.eval_steps if evaluating and strategy == "steps" and self.eval_steps else \
                DEFAULT_SAVE_STEPS
        if evaluating and self.metric_for_best_model is None:
            self.metric_for_best_model = DEFAULT_METRIC
        if self.load_best_model_at_end is None:
            self.load_best_model_at_end = evaluating


@dataclass
class PretrainingArguments(PaddleNLPTrainingArguments):
    """pretrain.py's Trainer flags: paddlenlp's TrainingArguments with this tool's defaults (checked
    the same way; always training; loss-only evaluation on --eval_file every --eval_steps)."""

    output_dir: str = field(default="./checkpoints/pretrain", metadata={
        "help": "The model directory to write (checkpoints inside)."})
    device: Optional[str] = field(default=None, metadata={"help": "cpu, gpu or gpu:N (default: gpu if visible)."})
    report_to: Optional[List[str]] = field(default=None, metadata={"help": "none (default) or visualdl."})
    save_total_limit: Optional[int] = field(default=1, metadata={"help": "Checkpoints kept (the latest N)."})
    do_train: bool = field(default=True, metadata={"help": "Always on: pretrain.py trains."})

    def __post_init__(self):
        check_numbers(self)
        if self.max_steps <= 0 and not self.num_train_epochs > 0:
            raise UserError(f"must be positive (or give --max_steps), got {self.num_train_epochs}",
                            "--num_train_epochs")
        if not str(self.output_dir or "").strip():
            raise UserError("must name a directory, got an empty string", "--output_dir")
        self.device = self.device or default_device()
        split_device(self.device, 0, "--")
        self.report_to = self.report_to or ["none"]
        self.do_train = True
        self.evaluation_strategy = "steps" if self.eval_steps else "no"
        self.do_eval = bool(self.eval_steps)
        self.prediction_loss_only = True
        self.remove_unused_columns = False
        super().__post_init__()
