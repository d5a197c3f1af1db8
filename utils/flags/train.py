"""train.py's flags: the PaddleNLP few-shot app's.

`utils.flags.parser.Parser` (paddlenlp's PdArgumentParser) over `ModelArguments` (with the
`ExportArguments` export.py shares), `DataArguments` and `utils.flags.trainer.TrainingArguments`
(paddlenlp's PromptTuningArguments: every Trainer flag, with this tool's defaults resolved in its
`__post_init__`). Each dataclass checks its own flags in `__post_init__`; `TrainFlags` adds the
checks that span several and resolves the task type. Every choice flag is a `Choice` enum
(utils/choices.py): the parser, the checks and the code that acts on a choice all use that one
definition, and a bad value is one `error: --flag: ...` paragraph. Nothing is loaded before all
of this passes. Paddle-free at import (multirun.py uses `flag_given`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

from ..choices import (HierarchicalDecoding, LongTextMode, ManualLoss, Method, SoftEncoder, TaskType, TeacherLabels,
                       ThresholdSearch, VerbalizerKind, WindowAggregation, WindowTraining)
from ..errors import UserError, check_text
from .checks import fraction
from .export import ExportArguments


@dataclass
class ModelArguments(ExportArguments):
    model_name_or_path: str = field(default="ernie-3.0-base-zh", metadata={
        "help": "Built-in PaddleNLP model name (needs network or cache) or a local model directory."})
    method: Method = field(default=Method.PTUNING, metadata={
        "help": "ptuning (prompt + verbalizer on the MLM head) or finetune ([CLS] classifier baseline)."})
    verbalizer: Optional[VerbalizerKind] = field(default=None, metadata={
        "help": "P-tuning verbalizer: soft (default: SoftVerbalizer, one [MASK]) or manual (label words predicted "
                "token by token at as many [MASK]s as they have tokens; equal lengths needed)."})
    manual_loss: ManualLoss = field(default=ManualLoss.CE, metadata={
        "help": "With --verbalizer manual: ce (cross-entropy over the labels' word log-probabilities, PET style) "
                "or mlm (the gold word's token-level MLM loss over the whole vocabulary, transformers_tasks style)."})
    task_type: Optional[TaskType] = field(default=None, metadata={
        "help": "multi-class (one label per text; default, or the checkpoint's), multi-label (text<TAB>l1,l2: a "
                "sigmoid per label, BCE) or hierarchical (multi-label over label paths A##B, decoded consistently)."})
    threshold: Optional[float] = field(default=None, metadata={
        "help": "Multi-label/hierarchical: a label is predicted when its probability is above this (default 0.5, "
                "upstream's prob_limit)."})
    threshold_search: Optional[ThresholdSearch] = field(default=None, metadata={
        "help": "Multi-label/hierarchical, with --do_train: none (default), global (one threshold maximising dev "
                "micro-F1) or per-label (each label's own, maximising its dev F1); saved with the model."})
    hierarchical_decoding: Optional[HierarchicalDecoding] = field(default=None, metadata={
        "help": "Hierarchical: consistent (default: a child only with its parent) or flat (every label on its own, "
                "as upstream)."})

    zero_shot: bool = field(default=False, metadata={
        "help": "No training: the PLM's own masked-LM head reads the label words at the masks after the prompt "
                "(text + --prompt as hard text + [MASK]s), for --do_eval/--do_predict/--do_export; the model is saved "
                "to --output_dir as a checkpoint. The baseline to beat, and a model without labelled data."})
    explain: bool = field(default=False, metadata={
        "help": "With --do_predict: token attributions (integrated gradients) of the first 50 test/data texts "
                "(test_explanations.html/.json, data_explanations.*) and the bad-case report (test_bad_cases.*: "
                "test errors, most confident first). explain.py does it for any text."})
    calibrate: bool = field(default=False, metadata={
        "help": "With --do_train (or --zero_shot): fit temperature scaling on dev.txt after training (saved with the model and the "
                "export, so infer.py, the Python API and the service report calibrated confidences); "
                "eval_results.json shows the expected calibration error before and after."})
    reject_threshold: Optional[float] = field(default=None, metadata={
        "help": "Multi-class: a text whose top probability is below this gets --other_label instead of a label "
                "(saved with the model; eval_coverage.tsv shows coverage and accuracy per threshold on dev)."})
    other_label: Optional[str] = field(default=None, metadata={
        "help": "The label of a rejected text (default: other); must not be a label of label.txt."})

    long_text: Optional[LongTextMode] = field(default=None, metadata={
        "help": "Texts longer than one input (--max_seq_length with the prompt): truncate (default: the first "
                "tokens), head_tail (the first quarter and the last three quarters of an input's tokens) or window "
                "(overlapping windows, each with the prompt, their probabilities aggregated). Part of the model: "
                "saved with it and its export, so infer.py, the API, the service and --ray read texts the same way."})
    window_stride: Optional[int] = field(default=None, metadata={
        "help": "--long_text window: tokens between the starts of two windows, less than a window's text tokens "
                "(default: half of them). Cuts fall between words."})
    window_aggregation: Optional[WindowAggregation] = field(default=None, metadata={
        "help": "--long_text window: the document's probabilities from its windows': mean (default), max (per "
                "label; renormalised for multi-class) or vote (multi-class: the label most windows choose)."})
    max_windows: Optional[int] = field(default=None, metadata={
        "help": "--long_text window: at most this many windows per text (default 16), a cost bound; the rest of a "
                "longer text is not read (reports count such texts)."})
    window_training: Optional[WindowTraining] = field(default=None, metadata={
        "help": "--long_text window: what a training example is: window (default: each window, carrying its "
                "document's label(s)) or document (a batch of whole documents, the loss taken on each document's "
                "aggregated probabilities, trained end to end). Training only: inference reads documents the "
                "same way."})

    def __post_init__(self):
        from ..task.calibration import check_reject_options

        check_reject_options(self.reject_threshold, self.other_label, "--")
        check_long_text_flags(self)
        if self.other_label is not None and self.reject_threshold is None:
            raise UserError("names what --reject_threshold outputs; give --reject_threshold too", "--other_label")
        for name, choice in (("task_type", TaskType), ("threshold_search", ThresholdSearch),
                             ("hierarchical_decoding", HierarchicalDecoding)):
            if getattr(self, name) is not None:
                setattr(self, name, choice.from_flag(getattr(self, name), f"--{name}"))
        fraction(self.threshold, "--threshold")
        if self.zero_shot and self.verbalizer == VerbalizerKind.SOFT:
            raise UserError("a soft verbalizer is learned in training; --zero_shot reads the label words with the "
                            "PLM's own masked-LM head (a manual verbalizer): drop --verbalizer soft", "--verbalizer")
        self.verbalizer = VerbalizerKind.SOFT if self.verbalizer is None else VerbalizerKind.parse(self.verbalizer)


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
    # Self-training / distillation (utils/training/distill.py): the teacher's labels on unlabeled texts join the gold ones.
    teacher: Optional[str] = field(default=None, metadata={
        "help": "Distillation: the model that labels --unlabeled_file: a train.py --output_dir (or checkpoint-N), "
                "an export, or an ensemble.py --output_dir (its export). Without it, --unlabeled_file means "
                "self-training: a model trained on the gold labels first is the teacher."})
    unlabeled_file: Optional[str] = field(default=None, metadata={
        "help": "Unlabeled texts, one per line (text_a<TAB>text_b for pairs): FewCLUE's unlabeled.txt, the app's "
                "data.txt, ... Default with --teacher: DATA_DIR/data.txt."})
    teacher_labels: TeacherLabels = field(default=TeacherLabels.SOFT, metadata={
        "help": "soft (default: the teacher's probabilities, PET's distillation) or hard (its predicted labels)."})
    min_confidence: float = field(default=0.0, metadata={
        "help": "Keep only texts the teacher is this sure about: its top probability (multi-class), or every "
                "label's max(p, 1-p) (label sets), at least this. 0 keeps all."})
    temperature: float = field(default=1.0, metadata={
        "help": "Soft labels are the teacher's softmax/sigmoid of logits / T (T > 1 softens, T < 1 sharpens)."})
    max_unlabeled: Optional[int] = field(default=None, metadata={
        "help": "At most this many teacher-labelled texts per round: the most confident ones."})
    rounds: int = field(default=1, metadata={
        "help": "Rounds of self-training: the student of a round is the teacher of the next (iPET). Earlier rounds "
                "are kept in OUTPUT_DIR/rounds/round-K; the last one is the run in OUTPUT_DIR."})
    # The prompt-encoder flags given on the command line: a full template string sets these
    # itself, so giving them too is refused instead of silently ignored.
    prompt_flags_given: List[str] = field(default_factory=list, init=False)
    unlabeled_file_defaulted: bool = field(default=False, init=False)  # --teacher without --unlabeled_file

    @property
    def distilling(self) -> bool:
        return bool(self.teacher or self.unlabeled_file)

    def __post_init__(self):
        if self.prompt is not None:
            check_text(self.prompt, "--prompt")
        for name in ("encoder_hidden_size", "num_virtual_tokens"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise UserError(f"must be positive, got {value}", f"--{name}")
        if self.early_stopping_patience < 0:
            raise UserError(f"must be zero (never stop) or more, got {self.early_stopping_patience}",
                            "--early_stopping_patience")
        self.teacher_labels = TeacherLabels.from_flag(self.teacher_labels, "--teacher_labels")
        if not 0 <= self.min_confidence < 1:
            raise UserError(f"must be in [0, 1), got {self.min_confidence}", "--min_confidence")
        if not self.temperature > 0:
            raise UserError(f"must be positive, got {self.temperature}", "--temperature")
        if self.max_unlabeled is not None and self.max_unlabeled <= 0:
            raise UserError(f"must be positive, got {self.max_unlabeled}", "--max_unlabeled")
        if self.rounds < 1:
            raise UserError(f"must be at least 1, got {self.rounds}", "--rounds")
        given = [f"--{name}" for name, default in DISTILL_DEFAULTS.items() if getattr(self, name) != default]
        if given and not self.distilling:
            raise UserError("is for self-training / distillation: add --teacher (a model that labels texts) and/or "
                            "--unlabeled_file (the texts)", given[0])
        if self.unlabeled_file is None and self.teacher is not None:
            self.unlabeled_file = os.path.join(self.data_dir, "data.txt")
            self.unlabeled_file_defaulted = True
        self.prompt_flags_given = [name for name in PROMPT_ENCODER_FLAGS if getattr(self, name) is not None]
        self.soft_encoder = SoftEncoder.LSTM if self.soft_encoder is None else SoftEncoder.parse(self.soft_encoder)
        if self.encoder_hidden_size is None:
            self.encoder_hidden_size = DEFAULT_ENCODER_HIDDEN_SIZE


WINDOW_FLAGS = ("window_stride", "window_aggregation", "max_windows", "window_training")


def check_long_text_flags(args) -> None:
    """--long_text and the window flags, alone (their fit to the prompt's length: ModelSpec.check_lengths)."""
    from ..task.windows import DEFAULT_MAX_WINDOWS

    if args.long_text is not None:
        args.long_text = LongTextMode.from_flag(args.long_text, "--long_text")
    if args.window_aggregation is not None:
        args.window_aggregation = WindowAggregation.from_flag(args.window_aggregation, "--window_aggregation")
    if args.window_training is not None:
        args.window_training = WindowTraining.from_flag(args.window_training, "--window_training")
    for name in ("window_stride", "max_windows"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"must be at least 1, got {value}" + (" (a window or more is read of every text)"
                                                                  if name == "max_windows" else ""), f"--{name}")
    given = [f"--{name}" for name in WINDOW_FLAGS if getattr(args, name) is not None]
    if given and args.long_text != LongTextMode.WINDOW:
        raise UserError(f"shapes the windows of --long_text window; --long_text is {args.long_text or 'truncate'}: "
                        "add --long_text window or drop the flag", given[0])
    if args.long_text is not None:
        args.window_aggregation = args.window_aggregation or WindowAggregation.MEAN
        args.max_windows = args.max_windows or DEFAULT_MAX_WINDOWS


PROMPT_ENCODER_FLAGS = ("soft_encoder", "encoder_hidden_size", "num_virtual_tokens")
DISTILL_DEFAULTS = {"teacher_labels": TeacherLabels.SOFT, "min_confidence": 0.0, "temperature": 1.0,
                    "max_unlabeled": None, "rounds": 1}
DEFAULT_ENCODER_HIDDEN_SIZE = 200


def flag_given(argv: Sequence[str], flag: str) -> bool:
    """Whether `flag` is on the command line, as `--flag value` or `--flag=value`."""
    return any(a == flag or a.startswith(flag + "=") for a in argv)


def flag_value(argv: Sequence[str], flag: str) -> Optional[str]:
    """The value of `flag`'s last occurrence (`--flag value` or `--flag=value`), None when absent."""
    value = None
    for index, arg in enumerate(argv):
        if arg == flag and index + 1 < len(argv):
            value = argv[index + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def parse_args(argv: Sequence[str], training_args_class=None) -> Tuple[ModelArguments, DataArguments, object]:
    """Parse and check train.py's flags into `(model_args, data_args, training_args)` (`TrainFlags`).
    Nothing here loads data or a model."""
    from .parser import Parser
    from .trainer import TrainingArguments

    parser = Parser((ModelArguments, DataArguments, training_args_class or TrainingArguments), prog="train.py",
                    description=TRAIN_DESCRIPTION)
    flags = TrainFlags(*parser.parse(argv, args_file=True))
    flags.training.command_argv = list(argv)  # as given, for the run's record (run.json) and its card
    return flags.model, flags.data, flags.training


TRAIN_DESCRIPTION = ("P-tuning text classification with ERNIE 3.0: train, evaluate, predict, export.\n"
                     "PaddleNLP's few-shot app's flags, then paddlenlp's Trainer flags (TrainingArguments).")


@dataclass
class TrainFlags:
    """train.py's three groups together: the checks that span them (`check_args`), and the values
    resolved from several, read by the run: the task type (--task_type, else the checkpoint's, else
    the --teacher's, else multi-class; then `check_task_args`) and its default metric."""

    model: ModelArguments
    data: DataArguments
    training: object

    def __post_init__(self):
        from .trainer import DEFAULT_MULTI_LABEL_METRIC

        check_args(self.model, self.data, self.training)
        self.model.task_type = task_type = resolve_task_type(self.model, self.training, self.data)
        check_task_args(self.model, self.training, task_type)
        if task_type != TaskType.MULTI_CLASS and self.training.metric_is_default and \
                self.training.metric_for_best_model:
            self.training.metric_for_best_model = DEFAULT_MULTI_LABEL_METRIC  # exact-match accuracy is a poor guide


def resolve_task_type(model_args: ModelArguments, training_args, data_args: DataArguments) -> TaskType:
    """--task_type, else the checkpoint's (--resume_from_checkpoint), else the --teacher's, else
    multi-class: JSON reads, no model."""
    from ..model.spec import peek_task_type

    task_type, checkpoint = model_args.task_type, training_args.resume_from_checkpoint
    if task_type is not None:
        return task_type
    if checkpoint and not os.path.isdir(checkpoint):  # before a flag is judged by a default task type
        raise UserError("checkpoint directory not found", checkpoint)
    teacher = data_args.teacher
    return TaskType.parse(peek_task_type(checkpoint) or (teacher and peek_teacher_task_type(teacher))
                          or TaskType.MULTI_CLASS)


def peek_teacher_task_type(teacher: str) -> Optional[str]:
    """The task type of a --teacher (its model's spec, or its export's manifest), None when it
    cannot be read (utils.training.distill reports that in full)."""
    from ..deploy.bundle import read_manifest
    from ..deploy.format import MANIFEST_FILE
    from ..model.spec import peek_task_type

    export = teacher if os.path.isfile(os.path.join(teacher, MANIFEST_FILE)) else os.path.join(teacher, "export")
    try:
        return peek_task_type(teacher) or (read_manifest(export).get("task_type")
                                           if os.path.isfile(os.path.join(export, MANIFEST_FILE)) else None)
    except UserError:
        return None


def check_args(model_args: ModelArguments, data_args: DataArguments, training_args) -> None:
    """The checks that span several argument groups (each group checks its own flags)."""
    import paddle

    from ..model.head_kinds import get_kind, head_name

    if (training_args.freeze_plm or training_args.freeze_dropout) and not get_kind(
            head_name(model_args.method, model_args.verbalizer)).has_prompt_parameters:
        raise UserError(f"--freeze_plm/--freeze_dropout with --method {model_args.method} would leave nothing to "
                        "train but the classifier's input; drop them or use --method ptuning", "--method")
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
    if model_args.zero_shot:
        if training_args.do_train:
            raise UserError("classifies with the pretrained model as it is; --do_train would train it: drop one "
                            "(train a P-tuning model with --do_train alone)", "--zero_shot")
        if training_args.resume_from_checkpoint:
            raise UserError("builds its model from --model_name_or_path; a checkpoint is evaluated without it "
                            "(a zero-shot checkpoint too)", "--zero_shot")
        if model_args.method == Method.FINETUNE:
            raise UserError("reads the label words with the masked-LM head; --method finetune has no such head",
                            "--zero_shot")
        if data_args.prompt_flags_given:
            raise UserError(f"uses the prompt as hard text; --{data_args.prompt_flags_given[0]} shapes soft tokens, "
                            "which would be random without training", "--zero_shot")
    if model_args.explain and not training_args.do_predict:
        raise UserError("explains --do_predict's texts: add --do_predict (explain.py explains any text)", "--explain")
    if model_args.calibrate and not (training_args.do_train or model_args.zero_shot):
        raise UserError("fits temperature scaling on dev.txt after training and saves it with the model: add "
                        "--do_train or --zero_shot (a trained checkpoint keeps the temperature it was saved with)",
                        "--calibrate")
    if getattr(training_args, "do_export", False):
        check_export_dependencies()
    check_window_training(model_args, training_args)
    if data_args.distilling:
        flag = "--teacher" if data_args.teacher else "--unlabeled_file"
        if not training_args.do_train:
            raise UserError("labels texts for training a student: add --do_train (a trained student is evaluated, "
                            "predicted and exported like any run, without it)", flag)
        if training_args.use_rgl and data_args.teacher_labels == TeacherLabels.SOFT:
            raise UserError("RGL's loss asks whether two examples have the same label, which soft labels do not say: "
                            "drop --use_rgl or use --teacher_labels hard", "--use_rgl")


def check_window_training(model_args: ModelArguments, training_args) -> None:
    """--window_training document: a loss per document, on its windows' aggregated probabilities."""
    if model_args.window_training != WindowTraining.DOCUMENT:
        return
    if not training_args.do_train:
        raise UserError("shapes the training examples; without --do_train nothing is trained: add --do_train or "
                        "drop the flag", "--window_training")
    if getattr(training_args, "use_rgl", False):
        raise UserError("compares two examples' representations given their labels; under --window_training document "
                        "an example is a document, whose windows have one representation each: drop --use_rgl "
                        "(--use_rdrop works) or use --window_training window", "--use_rgl")
    if model_args.manual_loss == ManualLoss.MLM and model_args.verbalizer == VerbalizerKind.MANUAL:
        raise UserError("mlm is the label word's loss at one input's masks; a document's loss is the cross-entropy "
                        "of its windows' aggregated label probabilities: use --manual_loss ce or --window_training "
                        "window", "--manual_loss")


EXPORT_MODULES = ("onnx", "paddle2onnx", "onnxruntime")


def check_export_dependencies() -> None:
    """--do_export needs onnx, paddle2onnx and onnxruntime: say so before training, not after."""
    import importlib.util

    missing = [name for name in EXPORT_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(f"needs {', '.join(missing)}, which this environment lacks; install them first: "
                        "`pip install onnxruntime` (CPU) or `pip install onnxruntime-gpu` (GPU; not both), and "
                        "`pip install -r requirements.txt` for onnx and paddle2onnx", "--do_export")



MULTI_LABEL_ONLY_FLAGS = ("threshold", "threshold_search", "hierarchical_decoding")


def check_task_args(model_args: ModelArguments, training_args, task_type: TaskType) -> None:
    """The flags that depend on the task type (from --task_type, or the checkpoint's), checked
    before any data is read: flags that make no sense for it are refused with the reason."""
    given = [f"--{name}" for name in MULTI_LABEL_ONLY_FLAGS if getattr(model_args, name) is not None
             and not (name == "threshold_search" and model_args.threshold_search == ThresholdSearch.NONE)]
    metric = (getattr(training_args, "metric_for_best_model", None) or "").replace("eval_", "", 1)
    if task_type != TaskType.MULTI_CLASS and getattr(model_args, "zero_shot", False):
        raise UserError(f"compares the label words' scores with each other (a softmax over labels); --task_type "
                        f"{task_type} needs a score per label on its own, which only training gives", "--zero_shot")
    if task_type != TaskType.MULTI_CLASS and model_args.reject_threshold is not None:
        raise UserError(f"is for multi-class models; a --task_type {task_type} model already predicts no label when "
                        "none is above its threshold: raise --threshold or use --threshold_search instead",
                        "--reject_threshold")
    if task_type == TaskType.MULTI_CLASS:
        if given:
            raise UserError("is for --task_type multi-label or hierarchical (a multi-class model predicts its best "
                            "label, no threshold); add --task_type or drop the flag", given[0])
        if metric == "micro_f1":
            raise UserError("micro_f1 is for multi-label tasks (with one label per text it equals accuracy): use "
                            "accuracy or macro_f1", "--metric_for_best_model")
        return
    if task_type == TaskType.MULTI_LABEL and model_args.hierarchical_decoding is not None:
        raise UserError("is for --task_type hierarchical (label paths A##B); multi-label labels have no parents",
                        "--hierarchical_decoding")
    if model_args.method == Method.PTUNING and model_args.verbalizer == VerbalizerKind.MANUAL:
        raise UserError(f"--verbalizer manual gives label scores that are only comparable with each other (PET: "
                        f"a softmax over the labels); --task_type {task_type} needs a score per label on its own "
                        "(a sigmoid each): use --verbalizer soft (the default) or --method finetune", "--verbalizer")
    if getattr(training_args, "use_rgl", False):
        raise UserError(f"RGL's label-consistency loss asks whether two examples have the same label; with label "
                        f"sets (--task_type {task_type}) that is undefined: drop --use_rgl (--use_rdrop works)",
                        "--use_rgl")
    if not training_args.do_train:
        for flag in given:
            raise UserError("is part of a model being trained (saved with it); a checkpoint is evaluated, "
                            "predicted and exported with its own thresholds and decoding: add --do_train or drop "
                            "the flag", flag)
