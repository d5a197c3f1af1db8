"""The main job behind train.py: train, evaluate, predict (and export) a P-tuning classifier.

`Run` is one invocation: `open` checks the flags and data and claims the output directory,
`execute` does the --do_* steps there. A mode of training subclasses it and overrides its hooks
(`plan_output`, `plan_mode`, `execute`): utils/training/distill.py's `DistillationRun`; this module
never imports a mode, train.py chooses the class from the flags.
"""
from __future__ import annotations

import copy
import logging
import os
from typing import Any, Dict, Optional

import paddle

from ..rundir.checkpoints import verify as verify_checkpoint
from ..dataset.folder import DatasetDir, load_dataset_dir, split_path
from .distributed import check_in_sync
from ..errors import ENVIRONMENT_ERRNOS, UserError
from ..choices import ThresholdSearch
from ..task.decoding import MULTI_CLASS
from ..task.metrics import metrics_fn
from ..model.assembly import criterion_for
from ..rundir.plan import DirLock, OutputPlan, apply_plan, plan_output_dir
from ..rundir.record import discard_lone_record, run_history, write_run_record
from ..export.card import write_run_card
from ..dataset.labels import LABEL_FILE
from .callbacks import Progress, RebaseBestCheckpoint
from .outputs import export, plot_curves, predict_and_write, write_explanations_of_predictions, write_report
from .plan import build_model, default_max_steps, output_kinds, plan_model
from .long_text import DocumentCollator, TrainingWindows
from .trainer import PTuningTrainer, predict
from .tuning import calibrate, calibration_metrics, threshold_search, tune_thresholds
from .visualdl import take_visualdl_from_report_to

from paddlenlp.datasets import MapDataset  # noqa: E402
from paddlenlp.prompt.prompt_utils import PromptDataCollatorWithPadding  # noqa: E402
from paddlenlp.trainer import EarlyStoppingCallback, set_seed  # noqa: E402
from paddlenlp.trainer.trainer_callback import ProgressCallback  # noqa: E402

logger = logging.getLogger(__name__)

DEFAULT_WINDOW_TRAINING = "window"  # --window_training (QUALITY.md section 5: what each measured)


def dev_needed_by(model_args, training_args) -> Optional[str]:
    """The flag that reads dev.txt, and what for; None when nothing does: dev.txt is optional for training
    alone (as in upstream's few-shot apps, where --do_eval reads it)."""
    strategy = str(training_args.evaluation_strategy.value)
    if training_args.do_train and strategy != "no":  # (paddlenlp turns --do_eval on with a strategy)
        best = ", --load_best_model_at_end" if training_args.load_best_model_at_end else ""
        return f"evaluation during training (--do_eval, --evaluation_strategy {strategy}{best}) reads it"
    if training_args.do_eval:
        return "--do_eval evaluates on it"
    if model_args.calibrate:
        return "--calibrate fits the temperature on it"
    if model_args.threshold_search not in (None, ThresholdSearch.NONE):
        return "--threshold_search tunes the thresholds on it"
    return None


def load_data(model_args, data_args, training_args, task_type: str = MULTI_CLASS) -> DatasetDir:
    """The dataset directory: train.txt for --do_train, dev.txt where a flag reads it (`dev_needed_by`), else
    when present."""
    dataset = load_dataset_dir(data_args.data_dir, need_train=training_args.do_train, need_dev=False,
                               task_type=str(task_type))
    needed_by = dev_needed_by(model_args, training_args)
    if needed_by and not dataset.dev:
        path = split_path(data_args.data_dir, "dev")
        raise UserError(f"dev file {'has no examples' if os.path.exists(path) else 'not found'}: {needed_by}",
                        path)
    if training_args.do_predict and dataset.test is None and dataset.data is None:
        raise UserError("--do_predict needs test.txt (labelled: metrics + predictions) or data.txt (texts: "
                        "predictions), and the data directory has neither", dataset.path)
    return dataset


class Run:
    """One train.py invocation: its data, its locked output directory, the model to start from."""

    def __init__(self, model_args, data_args, training_args):
        self.model_args, self.data_args, self.args = model_args, data_args, training_args
        self.lock: Optional[DirLock] = None
        self.dataset: Optional[DatasetDir] = None
        self.resume: Optional[str] = None

    def open(self) -> "Run":
        """Check everything that can be checked before a model loads, then claim the output directory."""
        args, data_args = self.args, self.data_args
        self.task_type = self.model_args.task_type  # resolved with the flags (utils.flags.train.TrainFlags)
        self.dataset = load_data(self.model_args, data_args, args, self.task_type)
        other = self.model_args.other_label
        if other is not None and other in self.dataset.labels.labels:
            raise UserError(f"{other!r} is a label of label.txt; a rejected text needs a name of its own",
                            "--other_label")
        if args.should_save:  # the writing process; under data parallelism the others only read
            self.lock = DirLock(args.output_dir).acquire()
        plan = self.plan_output()
        self.resume = plan.resume
        if self.resume:
            verify_checkpoint(self.resume, purpose="resume" if args.do_train else "model",
                              world_size=max(1, args.world_size))
        self.model_plan = plan_model(self.model_args, data_args, args, self.dataset, self.resume)
        self.plan_mode()
        if args.should_save:
            history = run_history(self.resume)  # before the plan may remove the directory's record
            apply_plan(plan)
            write_run_record(args.output_dir, getattr(args, "command_argv", []), self.data_files(), history)
        return self

    def data_files(self) -> Dict[str, str]:
        """The files this run reads, for run.json: the dataset folder's and the unlabeled texts."""
        files = {split: split_path(self.dataset.path, split) for split in ("train", "dev", "test", "data")}
        files["label"] = os.path.join(self.dataset.path, LABEL_FILE)
        if getattr(self.data_args, "unlabeled_file", None):
            files["unlabeled"] = self.data_args.unlabeled_file
        return files

    def plan_output(self) -> OutputPlan:
        """What the output directory keeps, removes and resumes from (applied once every check passed)."""
        args, model_dir = self.args, self.model_args.model_name_or_path
        # a zero-shot run writes its model (untrained, from --model_name_or_path) like a training run
        return plan_output_dir(args.output_dir, args.do_train or self.model_args.zero_shot, output_kinds(args),
                               args.overwrite_output_dir, args.resume_from_checkpoint,
                               model_dir if os.path.isdir(model_dir) else None)

    def plan_mode(self) -> None:
        """A mode's own checks, before any model loads and before the output directory changes."""

    def execute(self) -> Dict[str, Any]:
        """The --do_* steps in the output directory; the metrics written."""
        return self.run_once()

    def run_once(self) -> Dict[str, Any]:
        """The --do_* steps, once: train (or zero-shot), evaluate, predict, export."""
        model_args, training_args, dataset = self.model_args, self.args, self.dataset
        results: Dict[str, Any] = {}
        if not (training_args.do_train or training_args.do_eval or training_args.do_predict or model_args.zero_shot):
            results["export"] = export(model_args, training_args, dataset, self.resume)
            return results
        self.trainer = trainer = prepare(self)  # (a mode may use it after run_once: utils/audit/oof.py)
        if model_args.zero_shot:
            calibrate(trainer, model_args, dataset)  # --calibrate: only T is fitted, the MLM stays as it is
            # saved as a checkpoint (its spec says zero_shot), so --do_export, export.py and infer.py take it
            trainer.save_model()
            logger.info("--zero_shot: the pretrained masked-LM head over the label words, no training; saved to %s",
                        training_args.output_dir)
        if training_args.do_train:
            train_result = trainer.train(resume_from_checkpoint=self.resume)
            check_in_sync(trainer.model, "end of training")
            calibrate(trainer, model_args, dataset)
            tune_thresholds(trainer, model_args, dataset)
            trainer.save_model()
            trainer.log_metrics("train", train_result.metrics)
            trainer.save_metrics("train", train_result.metrics)
            trainer.save_state()
            results["train"] = train_result.metrics
            if trainer.is_world_process_zero():
                plot_curves(training_args)
        if training_args.do_eval:
            logits, metrics = predict(trainer, dataset.dev, metric_key_prefix="eval")
            metrics.update(calibration_metrics(trainer.spec, logits, dataset.dev, "eval"))
            trainer.log_metrics("eval", metrics)
            trainer.save_metrics("eval", metrics)
            results["eval"] = metrics
            if trainer.is_world_process_zero():
                write_report(training_args.output_dir, "eval", dataset, dataset.dev, logits, trainer.spec)
        if training_args.do_predict:
            results.update(predict_and_write(trainer, dataset, dataset.labels, training_args.output_dir))
            if model_args.explain and trainer.is_world_process_zero():
                write_explanations_of_predictions(trainer, dataset, training_args.output_dir)
        if training_args.do_export and trainer.is_world_process_zero():
            trained_here = training_args.do_train or model_args.zero_shot
            results["export"] = export(model_args, training_args, dataset,
                                       training_args.output_dir if trained_here else self.resume)
        return results

    def close(self, failed: bool) -> None:
        if self.lock is not None:
            if failed:  # a run that wrote nothing but its record leaves nothing (the lock removes a dir it made)
                discard_lone_record(self.args.output_dir)
            self.lock.release(failed=failed)
            self.lock = None


def trainer_arguments(run: Run, num_examples: Optional[int] = None):
    """The Trainer's arguments, derived from the parsed flags (which stay as the user gave them), and
    the callbacks they imply: the model is already rebuilt from --resume_from_checkpoint; the
    prompt-only optimizer of --freeze_plm needs max_steps; VisualDL goes through a callback that
    cannot end the run. `num_examples`: the training examples (with --long_text, the windows), default
    the documents of train.txt."""
    args = copy.copy(run.args)
    args.resume_from_checkpoint = None
    if args.do_train and args.freeze_plm and args.max_steps <= 0:
        args.max_steps = default_max_steps(args, len(run.dataset.train) if num_examples is None else num_examples)
    args.report_to = list(args.report_to or [])
    callbacks = take_visualdl_from_report_to(args) + [RebaseBestCheckpoint()]
    return args, callbacks


def document_training(model_args, spec) -> bool:
    """--window_training document (default: window), for a model that reads windows (its spec: the
    flags' or the checkpoint's)."""
    from ..choices import WindowTraining
    from ..task.windows import WINDOW

    chosen = getattr(model_args, "window_training", None) or DEFAULT_WINDOW_TRAINING
    return spec.long_text.mode == WINDOW and WindowTraining.parse(chosen) == WindowTraining.DOCUMENT


def prepare(run: Run):
    """Build the model and the trainer; return the trainer."""
    model_args, data_args, training_args = run.model_args, run.data_args, run.args
    paddle.set_device(training_args.device)
    set_seed(training_args.seed)  # model init (soft prompt, encoder) is seeded too
    logger.info("task_type: %s", run.model_plan.task_type)  # as PaddleNLP's training log prints it
    model, tokenizer, spec = build_model(model_args, training_args, run.dataset, run.model_plan, run.resume)
    dataset = run.dataset
    windows = TrainingWindows.of(spec, tokenizer)  # --long_text: each window an example with its document's labels
    train, dev, collator = dataset.train, dataset.dev, None
    if windows is not None:
        if training_args.do_train and document_training(model_args, spec):  # each document an example
            train = windows.training_documents(train, "train")
            collator = DocumentCollator(PromptDataCollatorWithPadding(tokenizer, padding=True, return_tensors="pd"))
        elif training_args.do_train:
            train = windows.split(train, "train")[0]
        dev, windows.counts, _ = windows.split(dev, "dev") if dev else (dev, None, None)
    training_args, callbacks = trainer_arguments(run, len(train))  # epochs count the examples trained on
    evaluating_in_training = training_args.do_train and str(training_args.evaluation_strategy.value) != "no"
    if evaluating_in_training and training_args.load_best_model_at_end and data_args.early_stopping_patience > 0:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=data_args.early_stopping_patience,
                                               early_stopping_threshold=data_args.early_stopping_threshold))
    trainer = PTuningTrainer(
        model=model, tokenizer=tokenizer, args=training_args,
        criterion=criterion_for(model, spec.head_options, spec.soft_targets),
        train_dataset=MapDataset(train) if training_args.do_train else None,
        eval_dataset=MapDataset(dev) if dev else None,
        data_collator=collator, callbacks=callbacks,
        compute_metrics=metrics_fn(len(dataset.labels.labels), spec.decoder, *threshold_search(model_args)),
        spec=spec, windows=windows)
    trainer.pop_callback(ProgressCallback)
    trainer.add_callback(Progress())
    return trainer


def run(model_args, data_args, training_args, kind: type = Run) -> Dict[str, Any]:
    """Do what the --do_* flags ask as a `kind` run (`Run` or a mode's subclass); return the metrics written."""
    current = kind(model_args, data_args, training_args)
    failed = True
    try:
        current.open()
        # Paddle names parameters and optimizer moments from a process-wide counter, and the saved
        # optimizer state is keyed by those names: a fresh name scope makes them the same in every
        # run, so --resume_from_checkpoint finds its state (also when runs share one process).
        with paddle.utils.unique_name.guard():
            results = current.execute()
        if training_args.should_save:
            trained_here = training_args.do_train or model_args.zero_shot
            write_run_card(training_args.output_dir, training_args.output_dir if trained_here else current.resume)
        failed = False
        return results
    except OSError as exc:
        if exc.errno in ENVIRONMENT_ERRNOS and not exc.filename:  # paddle.save's errors name no file
            raise OSError(exc.errno, exc.strerror, training_args.output_dir) from exc
        raise
    finally:
        current.close(failed)
