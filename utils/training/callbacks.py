"""Trainer callbacks of train.py and pretrain.py: progress bars and log lines, the best checkpoint of a resumed run."""
from __future__ import annotations

import logging
import os

from ..progress import Progress as ProgressBar

from paddlenlp.trainer import TrainerCallback  # noqa: E402
from paddlenlp.trainer.trainer_utils import has_length  # noqa: E402

logger = logging.getLogger(__name__)


class Progress(TrainerCallback):
    """paddlenlp's ProgressCallback with one bar per evaluation or prediction, each ending at its own
    100% (upstream kept one prediction bar across predictions, so data.txt's continued test.txt's
    count), shown in logs and notebooks too (utils/progress.py)."""

    def __init__(self):
        self.training_bar = self.prediction_bar = None
        self.step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_local_process_zero:
            self.training_bar = ProgressBar(state.max_steps, desc="train", unit="steps")
            self.training_bar.update(state.global_step)  # a resumed run starts where it left off
        self.step = state.global_step

    def on_step_end(self, args, state, control, **kwargs):
        if self.training_bar is not None:
            self.training_bar.update(state.global_step - self.step)
        self.step = state.global_step

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        if not state.is_local_process_zero:
            return
        if self.prediction_bar is None:
            total = len(eval_dataloader) if eval_dataloader is not None and has_length(eval_dataloader.dataset) else None
            self.prediction_bar = ProgressBar(total, desc="evaluate" if self.training_bar else "predict",
                                              unit="batches")
        self.prediction_bar.update(1)

    def finish_prediction(self) -> None:
        if self.prediction_bar is not None:
            self.prediction_bar.close(finished=True)
        self.prediction_bar = None

    def on_evaluate(self, args, state, control, **kwargs):
        self.finish_prediction()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_local_process_zero and self.training_bar is not None:
            logs = dict(logs or {})
            logs.pop("total_flos", None)
            logger.info(", ".join(f"{k}: {v}" for k, v in logs.items()))

    def on_train_end(self, args, state, control, **kwargs):
        if self.training_bar is not None:  # early stopping ends short of 100%
            self.training_bar.close(finished=state.global_step >= state.max_steps)
        self.training_bar = None


class RebaseBestCheckpoint(TrainerCallback):
    """A resumed run's best checkpoint lives in *this* output_dir, not where the run was first written
    (a copied run directory used to reload the original's "best" checkpoint)."""

    def on_train_begin(self, args, state, control, **kwargs):
        best = state.best_model_checkpoint
        if not best:
            return
        here = os.path.join(args.output_dir, os.path.basename(os.path.normpath(best)))
        if os.path.isdir(here):
            state.best_model_checkpoint = here
        else:
            logger.warning("the best checkpoint so far (%s) is not in %s; the best is tracked from here on", best,
                           args.output_dir)
            state.best_model_checkpoint = None
