"""The trainer behind train.py (and pretrain.py's): seeded batches, marked checkpoints, exact resumes.

`PTuningTrainer` is paddlenlp's PromptTrainer with the checkpoints of `MarkedCheckpoints` and each
tensor stored once; `predict` runs it over a list of examples.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from typing import Any, Dict, List, Optional

import numpy as np
import paddle

from ..rundir import checkpoints
from ..rundir.checkpoints import remove_tree, rotate, write_marker
from ..rundir.names import (ALL_RESULTS_FILE, COMPLETE_MARKER, LOSS_STATE_FILE, TEMPLATE_CONFIG_FILE, TRAINER_STATE_FILE,
                            VERBALIZER_CONFIG_FILE, checkpoint_dir_name, results_file)
from .distributed import allreduce_gradients, check_in_sync
from ..files import read_json, write_json_atomic, write_text_atomic
from ..model.assembly import load_state, set_state_strictly, unique_state_dict
from ..model.spec import ModelSpec
from ..task.decoding import SIGMOID
from .callbacks import Progress
from .long_text import WINDOW_COUNTS, WINDOWS_KEY, DocumentScores

from paddlenlp.datasets import MapDataset  # noqa: E402
from paddlenlp.prompt import PromptTrainer  # noqa: E402
from paddle.io import DistributedBatchSampler  # noqa: E402
from paddlenlp.trainer import Trainer  # noqa: E402

logger = logging.getLogger(__name__)


class SeededBatchSampler(DistributedBatchSampler):
    """Shuffles each epoch with `RandomState(f(seed, epoch))`: the order depends on nothing else.

    The Trainer's default single-process sampler draws its permutation from the global RNG when an
    epoch starts; after `--resume_from_checkpoint` that RNG is in another state, so the resumed
    run would see other batches than the uninterrupted one. (The parent class shuffles with
    `RandomState(self.epoch)`, the same for every seed.)

    With gradient accumulation over `accumulation` batches, an epoch ends with its last full
    accumulation group: paddlenlp's loop added the gradients of the batches left over to the next
    epoch's first optimizer step, which no checkpoint holds (a run resumed at an epoch's end lost
    them) and which took more than one step's worth of gradient. The batches skipped differ from
    epoch to epoch, as the order does.
    """

    def __init__(self, *args, seed: int = 0, accumulation: int = 1, **kwargs):
        super().__init__(*args, **kwargs)
        self.seed = seed
        self.accumulation = max(1, int(accumulation))

    def __len__(self) -> int:
        batches = super().__len__()
        # fewer batches than one group: paddlenlp accumulates over the whole epoch instead
        return batches - batches % self.accumulation if batches >= self.accumulation else batches

    def __iter__(self):
        epoch = self.epoch
        self.epoch = (self.seed * 1_000_003 + epoch) % (1 << 32)  # what the parent seeds its shuffle with
        try:
            batches = super().__iter__()
            for _ in range(len(self)):
                yield next(batches)
        finally:
            self.epoch = epoch + 1


class RestoredAtLoopStart:
    """A Trainer attribute that paddlenlp's training loop resets when it starts (`_total_loss_scalar = 0.0`,
    `_globalstep_last_logged = global_step`): in a resumed run, that first assignment stores the value
    saved with the checkpoint instead (`MarkedCheckpoints._restore_at_loop_start`)."""

    def __set_name__(self, owner, name):
        self.name, self.slot = name, "_value" + name

    def __get__(self, trainer, owner=None):
        if trainer is None:
            return self
        try:
            return trainer.__dict__[self.slot]
        except KeyError:
            raise AttributeError(self.name) from None

    def __set__(self, trainer, value):
        restore = trainer.__dict__.get("_restore_at_loop_start") or {}
        trainer.__dict__[self.slot] = restore.pop(self.name, value)


class MarkedCheckpoints:
    """Trainer mixin: checkpoints that are whole, verified and the same on every process (train.py and
    pretrain.py). Combine as `class X(MarkedCheckpoints, paddlenlp Trainer)`.

    * A checkpoint counts once `checkpoint_complete.json` (every file's size and sha256) is written,
      last; old ones are rotated away crash-safely (utils/rundir/checkpoints.py).
    * Each epoch's data order depends on the seed and the epoch alone (`SeededBatchSampler`), so a
      resumed run sees the batches the uninterrupted one saw.
    * A resumed run takes exactly the optimizer steps the uninterrupted run had left (none from its
      last checkpoint), with its random state and its loss bookkeeping (`_inner_training_loop`).
    * Data parallelism: every gradient is averaged explicitly and all processes' weights are
      compared at every save (utils/training/distributed.py).
    """

    sampler_class = SeededBatchSampler        # pretrain.py's hands its dataset epoch-keyed indices
    # the loop's loss bookkeeping: the sum of the losses logged so far, the step of the last log
    _total_loss_scalar = RestoredAtLoopStart()
    _globalstep_last_logged = RestoredAtLoopStart()
    _resumed: Optional[dict] = None           # train(): the checkpoint's global_step and loss state
    _unlogged_loss = None                     # the loop's sum of losses since the last log (a tensor)
    _unlogged_loss_to_restore: Optional[float] = None

    def train(self, resume_from_checkpoint=None, ignore_keys_for_eval=None):
        self._resumed = read_resume_point(resume_from_checkpoint, self.args) if resume_from_checkpoint else None
        try:
            return super().train(resume_from_checkpoint=resume_from_checkpoint,
                                 ignore_keys_for_eval=ignore_keys_for_eval)
        finally:
            self._resumed = self._unlogged_loss_to_restore = None
            self.__dict__.pop("_restore_at_loop_start", None)

    def _inner_training_loop(self, args, model, train_dataloader, len_dataloader, max_steps, num_train_epochs,
                             num_update_steps_per_epoch, num_train_samples, resume_from_checkpoint,
                             ignore_keys_for_eval):
        """paddlenlp's loop, with a resumed run's boundaries made exact:

        * Resumed at max_steps (the run's last checkpoint), paddlenlp re-entered the last epoch,
          skipped the batches already trained and took one more optimizer step before it looked at
          max_steps: here no epoch is left to run, so no step is taken.
        * Resumed at an epoch's end, paddlenlp never restored the random state (it does so after
          skipping the trained batches of a partly trained epoch, and there were none): other dropout
          masks than the uninterrupted run's.
        * The loop starts its loss bookkeeping from zero: the checkpoint's (`LOSS_STATE_FILE`) is put
          back, so every logged loss and train_loss equal the uninterrupted run's.
        """
        epochs = num_train_epochs
        resumed = self._resumed
        if resumed is not None and not args.ignore_load_lr_and_optim:
            step = resumed["global_step"]
            finished = step >= max_steps
            if finished:
                epochs = step // num_update_steps_per_epoch  # = the epochs paddlenlp counts as trained: none left
                logger.info("%s is at step %d of %d: training is complete, no step is taken", resume_from_checkpoint,
                            step, max_steps)
            elif args.ignore_data_skip or step % num_update_steps_per_epoch == 0:
                self._load_rng_state(resume_from_checkpoint)
            loss = resumed.get("loss")
            if loss is not None:
                total, unlogged = loss["total"], loss["unlogged"]
                if finished:  # the loop ends by adding its unlogged sum to the total: here it is the saved one
                    total, unlogged = total + unlogged, None
                self._restore_at_loop_start = {"_total_loss_scalar": total,
                                               "_globalstep_last_logged": loss["last_logged_step"]}
                self._unlogged_loss_to_restore = unlogged
        output = super()._inner_training_loop(args, model, train_dataloader, len_dataloader, max_steps, epochs,
                                              num_update_steps_per_epoch, num_train_samples, resume_from_checkpoint,
                                              ignore_keys_for_eval)
        self.state.num_train_epochs = num_train_epochs
        return output

    def _maybe_log_save_evaluate(self, tr_loss, *args, **kwargs):
        self._unlogged_loss = tr_loss  # saved with a checkpoint (`loss_state`)
        return super()._maybe_log_save_evaluate(tr_loss, *args, **kwargs)

    def loss_state(self) -> dict:
        """What a checkpoint keeps of the loop's loss bookkeeping; every process's unlogged sum (collective)."""
        unlogged = 0.0 if self._unlogged_loss is None else float(self._unlogged_loss.item())
        values = [unlogged]
        if self.args.world_size > 1:
            gathered: List[paddle.Tensor] = []
            paddle.distributed.all_gather(gathered, paddle.to_tensor([unlogged], dtype="float64"))
            values = [float(t.item()) for t in gathered]
        return {"total": self._total_loss_scalar, "last_logged_step": self._globalstep_last_logged,
                "unlogged": values}

    def _get_train_sampler(self):
        if self.train_dataset is None:
            return None
        return self.sampler_class(self.train_dataset, batch_size=self.args.per_device_train_batch_size,
                                  shuffle=True, num_replicas=self.args.dataset_world_size,
                                  rank=self.args.dataset_rank, drop_last=self.args.dataloader_drop_last,
                                  seed=self.args.seed, accumulation=self.args.gradient_accumulation_steps)

    def training_step(self, model, inputs):
        if not isinstance(model, paddle.DataParallel):
            loss = super().training_step(model, inputs)
        else:
            # Paddle's reducer drops strided gradients (see utils/training/distributed.py): reduce them all here.
            with model.no_sync():
                loss = super().training_step(model, inputs)
            allreduce_gradients(self.model.parameters())
        if self._unlogged_loss_to_restore is not None:
            # the loop adds this to its unlogged sum, which it started at zero: it continues the checkpoint's
            loss = loss + paddle.to_tensor(self._unlogged_loss_to_restore, dtype=loss.dtype)
            self._unlogged_loss_to_restore = None
        return loss

    def _load_rng_state(self, checkpoint):
        try:
            super()._load_rng_state(checkpoint)
        except ValueError as exc:  # e.g. saved on a machine with another number of GPUs
            logger.warning("random state of %s not restored (%s): the run continues, not bit-exactly", checkpoint, exc)

    def save_model(self, output_dir: Optional[str] = None, merge_tensor_parallel: Optional[bool] = False):
        final = output_dir is None or os.path.abspath(output_dir) == os.path.abspath(self.args.output_dir)
        marker = os.path.join(self.args.output_dir, COMPLETE_MARKER)
        if final and self.args.should_save and os.path.exists(marker):
            os.remove(marker)  # the final model is being replaced: it is incomplete until the new marker
        super().save_model(output_dir, merge_tensor_parallel)
        if final and self.args.should_save:
            checkpoints.reached("final model written", self.args.output_dir)
            write_marker(self.args.output_dir, self.state.global_step, self.args.world_size)
            checkpoints.reached("final model saved", self.args.output_dir)

    def _save_checkpoint(self, model, metrics=None):
        """The Trainer writes `checkpoint-N`; the marker, written last, makes it a checkpoint.

        One without its marker (a save that was killed) is never resumed from (`verify`) and is
        removed at the next start (`clean_leftovers`); a failed save removes its directory at once.
        """
        check_in_sync(self.model, f"checkpoint at step {self.state.global_step}")
        loss_state = self.loss_state()
        path = os.path.join(self.args.output_dir, checkpoint_dir_name(self.state.global_step))
        writer = self.args.should_save  # under data parallelism only the first process writes
        if writer and os.path.lexists(path):  # the same step saved again: the old one goes first
            remove_tree(path)
        try:
            super()._save_checkpoint(model, metrics)
            if writer:
                write_json_atomic(os.path.join(path, LOSS_STATE_FILE), loss_state)
        except BaseException:
            if writer:
                shutil.rmtree(path, ignore_errors=True)  # never leave a half checkpoint (or a full disk)
            raise
        if writer:
            name = os.path.basename(path)
            checkpoints.reached(f"{name} written", self.args.output_dir)
            write_marker(path, self.state.global_step, self.args.world_size)
            checkpoints.reached(f"{name} marked", self.args.output_dir)
            rotate(self.args.output_dir, self.args.save_total_limit, self.state.best_model_checkpoint)
            checkpoints.reached(f"{name} saved", self.args.output_dir)

    def _rotate_checkpoints(self, use_mtime=False, output_dir=None):
        """Rotation happens after the marker, by step and crash-safely (`_save_checkpoint`)."""

    def save_metrics(self, split, metrics, combined=True):
        if not self.is_world_process_zero():
            return
        write_json_atomic(os.path.join(self.args.output_dir, results_file(split)), metrics)
        if combined:
            write_all_results(self.args.output_dir)

    def save_state(self):
        if self.is_world_process_zero():
            write_text_atomic(os.path.join(self.args.output_dir, TRAINER_STATE_FILE),
                              json.dumps(dataclasses.asdict(self.state), indent=2, sort_keys=True) + "\n")


def read_resume_point(checkpoint: str, args) -> dict:
    """`{"global_step", "loss"}` of a checkpoint to resume from: the step its trainer state reached, and
    this process's part of its loss state (None when it has none: saved by an earlier version, or by
    another number of processes)."""
    state = read_json(os.path.join(checkpoint, TRAINER_STATE_FILE), what="trainer state")
    point = {"global_step": int(state.get("global_step") or 0), "loss": None}
    path = os.path.join(checkpoint, LOSS_STATE_FILE)
    if os.path.isfile(path):
        saved = read_json(path, what="loss state")
        unlogged = saved.get("unlogged") or []
        if len(unlogged) == max(1, args.world_size):
            point["loss"] = {"total": float(saved["total"]), "last_logged_step": int(saved["last_logged_step"]),
                             "unlogged": float(unlogged[max(0, args.process_index)])}
    if point["loss"] is None:
        logger.warning("%s has no loss state for %d process(es): the losses logged after resuming (and train_loss) "
                       "count the resumed steps only", checkpoint, max(1, args.world_size))
    return point


class PTuningTrainer(MarkedCheckpoints, PromptTrainer):
    """PromptTrainer whose checkpoints are whole, verified, deduplicated and the same on every process.

    * Marked, rotated, seeded and data-parallel as `MarkedCheckpoints` says.
    * Every tensor is stored once: the template's copy of the word embeddings and paddle's duplicate
      LSTM names are dropped from `model_state.pdparams`, and the template/verbalizer weights (part
      of it) are not written again beside it.
    """

    def __init__(self, *args, spec: ModelSpec, windows=None, **kwargs):
        self.spec = spec
        self.windows = windows  # utils/training/long_text.py TrainingWindows (--long_text head_tail|window)
        super().__init__(*args, **kwargs)

    @property
    def compute_metrics(self):
        """The metrics function given (by __init__ or a later assignment), over documents: with
        --long_text, the evaluated windows' logits are aggregated per document first."""
        raw = self.__dict__.get("_raw_compute_metrics")
        if raw is None or self.windows is None:
            return raw
        return lambda eval_preds: raw(self.windows.documents(eval_preds))

    @compute_metrics.setter
    def compute_metrics(self, function) -> None:
        self.__dict__["_raw_compute_metrics"] = function

    def _map_dataset(self, dataset):
        """Examples through the template; a training document (--window_training document) is its windows'."""
        if dataset is None or not isinstance(dataset, MapDataset):
            return super()._map_dataset(dataset)

        def encode(example):
            if WINDOWS_KEY in example:
                return {WINDOWS_KEY: [self.template(window) for window in example[WINDOWS_KEY]]}
            return self.template(example)

        return dataset.map(encode)

    def compute_loss(self, model, inputs, return_outputs=False):
        """A batch of documents (--window_training document: `window_counts` in it) is read as its
        windows and scored as its documents (utils/training/long_text.py `DocumentScores`): the loss,
        R-Drop's included, is per document."""
        if WINDOW_COUNTS not in inputs:
            return super().compute_loss(model, inputs, return_outputs)
        inputs = dict(inputs)
        counts = inputs.pop(WINDOW_COUNTS).tolist()
        scores = DocumentScores(model, counts, self.spec.decoder.multi_label, self.spec.long_text.aggregation)
        return super().compute_loss(scores, inputs, return_outputs)

    def _compute_rdrop_loss(self, model, input_dict, labels, outputs, loss):
        """R-Drop: upstream's KL between two dropout passes compares softmax distributions; a
        multi-label head's outputs are independent sigmoids, so there it is the symmetric KL of each
        label's Bernoulli distribution, averaged over examples and labels."""
        if self.spec.decoder.activation != SIGMOID:
            return super()._compute_rdrop_loss(model, input_dict, labels, outputs, loss)
        again = model(**input_dict)
        again = again[0] if isinstance(again, (tuple, list)) else again
        bce = (self.criterion(again, labels) + loss) * 0.5
        p, q = paddle.nn.functional.sigmoid(outputs), paddle.nn.functional.sigmoid(again)
        eps = 1e-7
        p, q = p.clip(eps, 1 - eps), q.clip(eps, 1 - eps)
        kl = (p - q) * (paddle.log(p) - paddle.log(q)) + (q - p) * (paddle.log(1 - p) - paddle.log(1 - q))
        return bce + self.args.alpha_rdrop * 0.5 * kl.mean()

    def _load_from_checkpoint(self, resume_from_checkpoint=None):
        # The model (template included) is rebuilt from the checkpoint before the Trainer exists;
        # PromptTrainer would build the template a second time. Load the weights strictly.
        if resume_from_checkpoint:
            load_state(self.model, resume_from_checkpoint)

    def _set_state_dict_in_model(self, state_dict):
        # The best model reloaded at the end of training: strictly, deduplicated names included.
        set_state_strictly(self.model, state_dict, self.state.best_model_checkpoint or "best checkpoint")

    def _save(self, output_dir: Optional[str] = None, state_dict=None, merge_tensor_parallel=True):
        output_dir = output_dir or self.args.output_dir
        # Each tensor once; upstream's template/verbalizer configs, without their weights files
        # (the weights are in model_state.pdparams); the model spec.
        Trainer._save(self, output_dir, unique_state_dict(self.model), merge_tensor_parallel)
        if self.args.should_save:
            save_template_config(self.template, output_dir)
            if self.verbalizer is not None:
                write_json_atomic(os.path.join(output_dir, VERBALIZER_CONFIG_FILE), self.verbalizer.label_words)
            self.spec.save(output_dir)


def save_template_config(template, directory: str) -> None:
    """upstream's `template_config.json` (the template as two JSON lines), without its weights file:
    they are in model_state.pdparams already."""
    text = json.dumps(template._prompt, ensure_ascii=False) + "\n" + json.dumps(
        {"class": type(template).__name__}, ensure_ascii=False) + "\n"
    write_text_atomic(os.path.join(directory, TEMPLATE_CONFIG_FILE), text)


def write_all_results(output_dir: str) -> None:
    """`all_results.json`: the union of this directory's train/eval/test results (all of one run)."""
    combined: Dict[str, Any] = {}
    for split in ("train", "eval", "test"):
        path = os.path.join(output_dir, results_file(split))
        if os.path.isfile(path):
            combined.update(read_json(path))
    write_json_atomic(os.path.join(output_dir, ALL_RESULTS_FILE), combined)


def predict(trainer, examples: List[dict], metric_key_prefix: str = "test"):
    """`(logits, metrics)` of `examples` (metrics only when they carry labels); one pass. With
    --long_text the model reads each document's windows and the logits are the documents'; the
    metrics count the texts longer than one input and the inputs read."""
    windows = getattr(trainer, "windows", None)
    if windows is None:
        inputs, counts = examples, None
    else:
        inputs, counts, report = windows.split(examples, metric_key_prefix)
        saved, windows.counts = windows.counts, counts
    try:
        output = trainer.predict(MapDataset([dict(e) for e in inputs]), metric_key_prefix=metric_key_prefix)
    finally:
        if windows is not None:
            windows.counts = saved
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, Progress):
            callback.finish_prediction()
    logits = output.predictions
    logits = logits[0] if isinstance(logits, (tuple, list)) else logits
    metrics = dict(output.metrics or {})
    if windows is not None:
        logits = windows.aggregate(logits, counts)
        metrics.update({f"{metric_key_prefix}_{k}": v for k, v in report.as_dict().items()})
    return logits, metrics


def predict_logits(trainer, examples: List[dict]) -> np.ndarray:
    return predict(trainer, examples)[0]
