"""The main job behind train.py: train, evaluate, predict (and export) a P-tuning classifier."""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
from typing import Any, Dict, List, Optional

import numpy as np
import paddle

from ..rundir import checkpoints
from ..rundir.checkpoints import COMPLETE_MARKER, LOSS_STATE_FILE, remove_tree, rotate, write_marker
from ..rundir.checkpoints import verify as verify_checkpoint
from ..dataset.folder import DatasetDir, load_dataset_dir, split_path
from .distributed import allreduce_gradients, check_in_sync
from ..errors import ENVIRONMENT_ERRNOS, UserError
from ..files import read_json, write_json_atomic, write_text_atomic
from ..dataset.labels import LabelSet
from ..choices import ThresholdSearch
from ..task.decoding import DEFAULT_OTHER_LABEL, MULTI_CLASS, search_thresholds
from ..task.metrics import metrics_fn, task_metrics
from ..deploy.predictions import write_predictions
from ..model.heads import get_head
from ..model.assembly import criterion_for, load_state, rebuild_from_checkpoint, set_state_strictly, unique_state_dict
from ..model.plm import load_plm, load_tokenizer, position_limit, warn_unknown_tokens
from ..progress import Progress as ProgressBar
from ..reporting.reports import plot_training_curves, write_classification_report, write_multilabel_report
from ..rundir.plan import DirLock, OutputPlan, apply_plan, plan_output_dir
from ..model.spec import ModelSpec
from .visualdl import take_visualdl_from_report_to


from paddlenlp.datasets import MapDataset  # noqa: E402
from paddlenlp.prompt import PromptTrainer  # noqa: E402
from paddle.io import DistributedBatchSampler  # noqa: E402
from paddlenlp.trainer import EarlyStoppingCallback, Trainer, TrainerCallback, set_seed  # noqa: E402
from paddlenlp.trainer.trainer_callback import ProgressCallback  # noqa: E402
from paddlenlp.trainer.trainer_utils import has_length  # noqa: E402

logger = logging.getLogger(__name__)

TEST_PREDICTIONS_FILE = "test_predictions.tsv"
DATA_PREDICTIONS_FILE = "data_predictions.tsv"
CURVES_FILE = "training_curves.png"


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


OUTPUT_KIND_FLAGS = (("do_eval", "eval"), ("do_predict", "predict"), ("do_export", "export"))


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
        path = os.path.join(self.args.output_dir, f"checkpoint-{self.state.global_step}")
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
        write_json_atomic(os.path.join(self.args.output_dir, f"{split}_results.json"), metrics)
        if combined:
            write_all_results(self.args.output_dir)

    def save_state(self):
        if self.is_world_process_zero():
            write_text_atomic(os.path.join(self.args.output_dir, "trainer_state.json"),
                              json.dumps(dataclasses.asdict(self.state), indent=2, sort_keys=True) + "\n")


def read_resume_point(checkpoint: str, args) -> dict:
    """`{"global_step", "loss"}` of a checkpoint to resume from: the step its trainer state reached, and
    this process's part of its loss state (None when it has none: saved by an earlier version, or by
    another number of processes)."""
    state = read_json(os.path.join(checkpoint, "trainer_state.json"), what="trainer state")
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

    def __init__(self, *args, spec: ModelSpec, **kwargs):
        self.spec = spec
        super().__init__(*args, **kwargs)

    def _compute_rdrop_loss(self, model, input_dict, labels, outputs, loss):
        """R-Drop: upstream's KL between two dropout passes compares softmax distributions; a
        multi-label head's outputs are independent sigmoids, so there it is the symmetric KL of each
        label's Bernoulli distribution, averaged over examples and labels."""
        if not self.spec.decoder.multi_label:
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
                write_json_atomic(os.path.join(output_dir, "verbalizer_config.json"), self.verbalizer.label_words)
            self.spec.save(output_dir)


def save_template_config(template, directory: str) -> None:
    """upstream's `template_config.json` (the template as two JSON lines), without its weights file:
    they are in model_state.pdparams already."""
    text = json.dumps(template._prompt, ensure_ascii=False) + "\n" + json.dumps(
        {"class": type(template).__name__}, ensure_ascii=False) + "\n"
    write_text_atomic(os.path.join(directory, "template_config.json"), text)


def write_all_results(output_dir: str) -> None:
    """`all_results.json`: the union of this directory's train/eval/test results (all of one run)."""
    combined: Dict[str, Any] = {}
    for split in ("train", "eval", "test"):
        path = os.path.join(output_dir, f"{split}_results.json")
        if os.path.isfile(path):
            combined.update(read_json(path))
    write_json_atomic(os.path.join(output_dir, "all_results.json"), combined)


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


def output_kinds(training_args) -> List[str]:
    return [kind for flag, kind in OUTPUT_KIND_FLAGS if getattr(training_args, flag, False)]


def default_max_steps(training_args, num_examples: int) -> int:
    """Steps for `--num_train_epochs`, counted as the Trainer counts them (the prompt-only optimizer of
    --freeze_plm needs max_steps): a process's batches (`SeededBatchSampler`) // accumulation x epochs."""
    world = max(1, training_args.world_size)
    per_process = math.ceil(num_examples / world)
    batch = training_args.per_device_train_batch_size
    batches = per_process // batch if training_args.dataloader_drop_last else math.ceil(per_process / batch)
    per_epoch = max(1, batches // training_args.gradient_accumulation_steps)
    return max(1, int(per_epoch * training_args.num_train_epochs))


def plan_model(model_args, data_args, training_args, dataset: DatasetDir, checkpoint: Optional[str]) -> ModelSpec:
    """The model to build, checked with the tokenizer and configs alone (no weights loaded), with
    the reject option the flags give (decoding, not weights: a checkpoint takes a new one too)."""
    spec = _plan_model(model_args, data_args, training_args, dataset, checkpoint)
    other = model_args.other_label
    if model_args.reject_threshold is not None:
        spec = dataclasses.replace(spec, reject_threshold=float(model_args.reject_threshold),
                                   other_label=other or spec.other_label)
    return spec


def _plan_model(model_args, data_args, training_args, dataset: DatasetDir, checkpoint: Optional[str]) -> ModelSpec:
    if checkpoint:
        spec = ModelSpec.load(checkpoint)
        if spec.labels != dataset.labels.labels:
            raise UserError(f"the checkpoint was trained on labels {spec.labels}, but label.txt has "
                            f"{dataset.labels.labels}", dataset.labels.path)
        if spec.task_type != dataset.task_type:
            raise UserError(f"the checkpoint is a --task_type {spec.task_type} model, and --task_type "
                            f"{dataset.task_type} was given: drop --task_type (the checkpoint's is used)", checkpoint)
        if (training_args.freeze_plm or training_args.freeze_dropout) and not get_head(spec.head).has_prompt_parameters:
            raise UserError(f"is a --method {spec.method.value} checkpoint: --freeze_plm/--freeze_dropout would leave "
                            "nothing to train", checkpoint)
        ignored = [f"--{name}" for name in data_args.prompt_flags_given + (["prompt"] if data_args.prompt else [])]
        if ignored:
            logger.warning("%s ignored: the model is rebuilt from %s with its own template %s", "/".join(ignored),
                           checkpoint, spec.describe())
        # Decoding is no weight: training on from a checkpoint takes a new --threshold/--hierarchical_decoding
        # (utils.flags.train.check_task_args refuses them without --do_train).
        if model_args.threshold is not None:
            spec = dataclasses.replace(spec, thresholds=[float(model_args.threshold)] * len(spec.labels),
                                       threshold_search="none")
        if model_args.hierarchical_decoding is not None:
            spec = dataclasses.replace(spec, consistent_decoding=str(model_args.hierarchical_decoding) == "consistent")
        return spec
    tokenizer = load_tokenizer(model_args.model_name_or_path)
    spec = ModelSpec.from_flags(model_args, data_args, training_args.max_seq_length, dataset.labels, dataset.is_pair,
                                tokenizer, position_limit(model_args.model_name_or_path), task_type=dataset.task_type)
    warn_unknown_tokens(tokenizer, dataset, model_args.model_name_or_path)
    return spec


def build_model(model_args, training_args, dataset: DatasetDir, spec: ModelSpec, checkpoint: Optional[str]):
    """Return `(model, tokenizer, spec)`: from a checkpoint when given, else around the pretrained PLM."""
    freeze = dict(freeze_plm=training_args.freeze_plm, freeze_dropout=training_args.freeze_dropout)
    if checkpoint:
        # The planned spec is the checkpoint's file, with any new decoding flags (plan_model).
        model, tokenizer, _ = rebuild_from_checkpoint(checkpoint, verify=False)
        if freeze["freeze_plm"] or freeze["freeze_dropout"]:
            model.freeze_plm = True
            model.freeze_dropout = freeze["freeze_dropout"]
            for param in model.plm.parameters():
                param.stop_gradient = True
        return model, tokenizer, spec
    plm, tokenizer = load_plm(model_args.model_name_or_path, head=get_head(spec.head).plm_head,
                              num_labels=len(spec.labels))
    if spec.zero_shot:  # its MLM head is the classifier: refused when the weights lack it (random)
        from ..model.zero_shot import check_mlm_head

        check_mlm_head(plm, model_args.model_name_or_path)
    spec = spec.with_plm(plm)
    model = spec.build(tokenizer, plm, **freeze)
    logger.info("Using template: %s", spec.describe())
    return model, tokenizer, spec


def write_prediction_file(path: str, dataset: DatasetDir, examples: List[dict], logits: np.ndarray,
                          spec: ModelSpec, with_gold: bool) -> None:
    """train.py's prediction files, through infer.py's writer: one vocabulary (text, [gold], label,
    confidence; labels above their thresholds for label sets), one atomic writer."""
    decoder = spec.decoder
    gold = dataset.gold_names(examples) if with_gold else None
    write_predictions(path, examples, decoder.probabilities(logits), spec.labels, gold=gold, decoder=decoder)


def write_report(output_dir: str, prefix: str, dataset: DatasetDir, examples: List[dict], logits: np.ndarray,
                 spec: ModelSpec) -> None:
    """Per-label report files of one split, for the model's task type (utils/reporting/reports.py)."""
    decoder = spec.decoder
    if decoder.multi_label:
        write_multilabel_report(output_dir, prefix, np.array([e["labels"] for e in examples]) > 0.5,
                                decoder.decide(decoder.probabilities(logits)), spec.labels,
                                decoder.levels if decoder.hierarchical else None)
    else:
        write_classification_report(output_dir, prefix, [e["labels"] for e in examples], logits.argmax(-1),
                                    spec.labels)
    write_calibration_report(output_dir, prefix, examples, logits, spec)


def write_calibration_report(output_dir: str, prefix: str, examples: List[dict], logits: np.ndarray,
                             spec: ModelSpec) -> None:
    """`{prefix}_reliability.png` (before/after temperature scaling) and, multi-class,
    `{prefix}_coverage.tsv`: per reject threshold, the share of texts answered and their accuracy,
    so users can choose --reject_threshold."""
    from ..task.calibration import coverage_table, format_coverage_table, plot_reliability

    decoder = spec.decoder
    gold = dev_gold(decoder, examples)
    plot_reliability(os.path.join(output_dir, f"{prefix}_reliability.png"), logits, gold, decoder.temperature,
                     decoder.multi_label, title=f"{prefix}: reliability diagram")
    if not decoder.multi_label:
        table = format_coverage_table(coverage_table(decoder.probabilities(logits), gold,
                                                     chosen=decoder.reject_threshold))
        write_text_atomic(os.path.join(output_dir, f"{prefix}_coverage.tsv"), table)
        logger.info("%s coverage and accuracy per --reject_threshold (%s_coverage.tsv):\n%s", prefix, prefix,
                    table.rstrip())


def predict(trainer, examples: List[dict], metric_key_prefix: str = "test"):
    """`(logits, metrics)` of `examples` (metrics only when they carry labels); one pass."""
    output = trainer.predict(MapDataset([dict(e) for e in examples]), metric_key_prefix=metric_key_prefix)
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, Progress):
            callback.finish_prediction()
    logits = output.predictions
    return (logits[0] if isinstance(logits, (tuple, list)) else logits), dict(output.metrics or {})


def predict_logits(trainer, examples: List[dict]) -> np.ndarray:
    return predict(trainer, examples)[0]


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
        self.distill = None              # utils.training.distill.DistillPlan: a teacher labels unlabeled texts
        self.continue_rounds = False     # a run of several rounds, resumed as a whole

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
        model_dir = self.model_args.model_name_or_path
        several_rounds = data_args.distilling and (data_args.rounds > 1 or not data_args.teacher)
        if several_rounds and args.resume_from_checkpoint:
            if not os.path.isdir(args.output_dir) or not os.path.samefile(args.resume_from_checkpoint,
                                                                          args.output_dir):
                raise UserError("a self-training run of several rounds resumes as a whole: give its --output_dir "
                                "(finished rounds are reused, the interrupted one continues from its last "
                                "checkpoint)", "--resume_from_checkpoint")
            plan = OutputPlan(args.output_dir)  # each round plans its own directory (utils.training.distill)
            self.continue_rounds = True
        else:
            # a zero-shot run writes its model (untrained, from --model_name_or_path) like a training run
            plan = plan_output_dir(args.output_dir, args.do_train or self.model_args.zero_shot, output_kinds(args),
                                   args.overwrite_output_dir, args.resume_from_checkpoint,
                                   model_dir if os.path.isdir(model_dir) else None)
        self.resume = plan.resume
        if self.resume:
            verify_checkpoint(self.resume, purpose="resume" if args.do_train else "model",
                              world_size=max(1, args.world_size))
        self.model_plan = plan_model(self.model_args, data_args, args, self.dataset, self.resume)
        if data_args.distilling:
            from ..training import distill

            self.distill = distill.plan(data_args, self.model_args, self.dataset, self.resume)
        if args.should_save:
            apply_plan(plan)
        return self

    def close(self, failed: bool) -> None:
        if self.lock is not None:
            self.lock.release(failed=failed)
            self.lock = None


def prepare(run: Run):
    """Build the model and the trainer; return the trainer."""
    model_args, data_args, training_args = run.model_args, run.data_args, run.args
    paddle.set_device(training_args.device)
    set_seed(training_args.seed)  # model init (soft prompt, encoder) is seeded too
    logger.info("task_type: %s", run.model_plan.task_type)  # as PaddleNLP's training log prints it
    model, tokenizer, spec = build_model(model_args, training_args, run.dataset, run.model_plan, run.resume)
    training_args.resume_from_checkpoint = None  # the model is already rebuilt from it
    if training_args.do_train and training_args.freeze_plm and training_args.max_steps <= 0:
        training_args.max_steps = default_max_steps(training_args, len(run.dataset.train))

    callbacks = take_visualdl_from_report_to(training_args) + [RebaseBestCheckpoint()]
    evaluating_in_training = training_args.do_train and str(training_args.evaluation_strategy.value) != "no"
    if evaluating_in_training and training_args.load_best_model_at_end and data_args.early_stopping_patience > 0:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=data_args.early_stopping_patience,
                                               early_stopping_threshold=data_args.early_stopping_threshold))
    dataset = run.dataset
    trainer = PTuningTrainer(
        model=model, tokenizer=tokenizer, args=training_args,
        criterion=criterion_for(model, spec.head_options, spec.soft_targets),
        train_dataset=MapDataset(dataset.train) if training_args.do_train else None,
        eval_dataset=MapDataset(dataset.dev) if dataset.dev else None,
        callbacks=callbacks, compute_metrics=metrics_fn(len(dataset.labels.labels), spec.decoder,
                                                         *threshold_search(model_args)), spec=spec)
    trainer.pop_callback(ProgressCallback)
    trainer.add_callback(Progress())
    return trainer


def run(model_args, data_args, training_args) -> Dict[str, Any]:
    """Do what the --do_* flags ask; return the metrics written."""
    current = Run(model_args, data_args, training_args)
    failed = True
    try:
        current.open()
        # Paddle names parameters and optimizer moments from a process-wide counter, and the saved
        # optimizer state is keyed by those names: a fresh name scope makes them the same in every
        # run, so --resume_from_checkpoint finds its state (also when runs share one process).
        with paddle.utils.unique_name.guard():
            if current.distill is not None:
                from .distill import run_rounds

                results = run_rounds(current, _run)
            else:
                results = _run(current)
        failed = False
        return results
    except OSError as exc:
        if exc.errno in ENVIRONMENT_ERRNOS and not exc.filename:  # paddle.save's errors name no file
            raise OSError(exc.errno, exc.strerror, training_args.output_dir) from exc
        raise
    finally:
        current.close(failed)


def _run(current: Run) -> Dict[str, Any]:
    model_args, training_args, dataset = current.model_args, current.args, current.dataset
    results: Dict[str, Any] = {}
    if not (training_args.do_train or training_args.do_eval or training_args.do_predict or model_args.zero_shot):
        results["export"] = export(model_args, training_args, dataset, current.resume)
        return results
    trainer = prepare(current)
    if model_args.zero_shot:
        calibrate(trainer, model_args, dataset)  # --calibrate: only T is fitted, the MLM stays as it is
        # saved as a checkpoint (its spec says zero_shot), so --do_export, export.py and infer.py take it
        trainer.save_model()
        logger.info("--zero_shot: the pretrained masked-LM head over the label words, no training; saved to %s",
                    training_args.output_dir)
    if training_args.do_train:
        train_result = trainer.train(resume_from_checkpoint=current.resume)
        check_in_sync(trainer.model, "end of training")
        calibrate(trainer, model_args, dataset)
        tune_thresholds(trainer, model_args, dataset)
        trainer.save_model()
        trainer.log_metrics("train", train_result.metrics)
        trainer.save_metrics("train", train_result.metrics)
        trainer.save_state()
        results["train"] = train_result.metrics
        if trainer.is_world_process_zero():
            metric = training_args.metric_for_best_model or "accuracy"
            plot_training_curves(os.path.join(training_args.output_dir, "trainer_state.json"),
                                 os.path.join(training_args.output_dir, CURVES_FILE),
                                 metric=metric if metric.startswith("eval_") else f"eval_{metric}")
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
                                   training_args.output_dir if trained_here else current.resume)
    return results


def threshold_search(model_args) -> tuple:
    """`(mode, default)` of --threshold_search: evaluations during training tune their thresholds on
    dev the same way, so the best checkpoint is the best one at tuned thresholds (at 0.5 an early,
    sparse-output model can score 0 at every evaluation, and the first would count as best)."""
    mode = model_args.threshold_search
    return (None if mode is None else mode.value), model_args.threshold


def tune_thresholds(trainer, model_args, dataset: DatasetDir) -> None:
    """--threshold_search global|per-label: thresholds tuned on dev.txt for the final model (the
    best one when it was reloaded), saved in its spec, so evaluation, prediction, the export,
    infer.py and the service use them. Checkpoints keep the thresholds they were trained with."""
    mode = model_args.threshold_search
    if mode is None or mode == ThresholdSearch.NONE or not trainer.spec.decoder.multi_label:
        return
    decoder = trainer.spec.decoder
    logits = predict_logits(trainer, dataset.dev)
    gold = np.array([e["labels"] for e in dataset.dev]) > 0.5
    thresholds = search_thresholds(decoder, decoder.probabilities(logits), gold, mode.value,
                                   default=model_args.threshold)
    trainer.spec = dataclasses.replace(trainer.spec, thresholds=list(thresholds), threshold_search=mode.value)
    trainer.compute_metrics = metrics_fn(len(trainer.spec.labels), trainer.spec.decoder)
    shown = (f"{thresholds[0]:.2f}" if mode == ThresholdSearch.GLOBAL
             else f"{min(thresholds):.2f}..{max(thresholds):.2f} over {len(thresholds)} labels")
    logger.info("--threshold_search %s on dev.txt: threshold %s (saved in %s)", mode.value, shown,
                trainer.args.output_dir)


def calibrate(trainer, model_args, dataset: DatasetDir) -> None:
    """--calibrate: temperature scaling fitted on dev.txt for the final model (the best one when it
    was reloaded), saved in its spec, so evaluation, prediction, the export, infer.py and the
    service report calibrated probabilities. Before the threshold search: thresholds are chosen on
    the probabilities the model will report."""
    from ..task.calibration import calibration_report, fit_temperature

    if not model_args.calibrate:
        return
    decoder = trainer.spec.decoder
    logits = predict_logits(trainer, dataset.dev)
    gold = dev_gold(decoder, dataset.dev)
    temperature = fit_temperature(logits, gold, decoder.multi_label)
    trainer.spec = dataclasses.replace(trainer.spec, temperature=temperature)
    report = calibration_report(logits, gold, temperature, decoder.multi_label)
    logger.info("--calibrate on dev.txt: temperature %.4g, expected calibration error %.4f -> %.4f (saved in %s)",
                temperature, report.get("ece_uncalibrated", report["ece"]), report["ece"], trainer.args.output_dir)


def dev_gold(decoder, examples: List[dict]) -> np.ndarray:
    """Gold ids (multi-class) or a bool multi-hot matrix (label sets)."""
    if decoder.multi_label:
        return np.array([e["labels"] for e in examples]) > 0.5
    return np.array([e["labels"] for e in examples]).reshape(-1)


def calibration_metrics(spec: ModelSpec, logits: np.ndarray, examples: List[dict], prefix: str) -> Dict[str, Any]:
    """Expected calibration error (and NLL) at the model's temperature, and before it when it was
    calibrated; with a reject threshold, the coverage and the accuracy of the answered texts."""
    from ..task.calibration import calibration_report

    decoder = spec.decoder
    if not examples:
        return {}
    gold = dev_gold(decoder, examples)
    out = {f"{prefix}_{k}": v for k, v in calibration_report(logits, gold, decoder.temperature,
                                                              decoder.multi_label).items()}
    if decoder.reject_threshold is not None:
        probs = decoder.probabilities(logits)
        answered = ~decoder.rejected(probs)
        out[f"{prefix}_reject_threshold"] = decoder.reject_threshold
        out[f"{prefix}_coverage"] = float(answered.mean())
        if answered.any():  # (no key when nothing is answered: the Trainer's logger cannot print None)
            out[f"{prefix}_accuracy_answered"] = float((probs.argmax(1) == gold)[answered].mean())
    return out


def export(model_args, training_args, dataset: DatasetDir, checkpoint: str) -> dict:
    """--do_export: the saved model (or --resume_from_checkpoint) -> output_dir/export."""
    from ..export.pipeline import export_checkpoint

    manifest = export_checkpoint(checkpoint, os.path.join(training_args.output_dir, "export"),
                                 examples=dataset.dev or dataset.test or dataset.train or dataset.data,
                                 export_type=model_args.export_type, overwrite=True,
                                 export_fp16=model_args.export_fp16, quantize=model_args.quantize, locked=True,
                                 reject_option=None if model_args.reject_threshold is None else (
                                     float(model_args.reject_threshold), model_args.other_label or DEFAULT_OTHER_LABEL))
    return manifest["parity"]


EXPLAIN_LIMIT = 50      # texts explained per file by --explain (integrated gradients: 32 passes each)
BAD_CASE_LIMIT = 20


def write_explanations_of_predictions(trainer, dataset: DatasetDir, output_dir: str) -> None:
    """--explain: attributions of the first test/data texts and the test bad-case report (utils/reporting/explain.py)."""
    from ..reporting.explain import Explainer, bad_cases, write_explanations

    explainer = Explainer(trainer.model, trainer.tokenizer, trainer.spec)
    if dataset.test:
        examples = dataset.test[:EXPLAIN_LIMIT]
        gold = dataset.gold_names(examples)
        write_explanations(output_dir, "test_explanations", explainer.explain_all(examples, gold),
                           f"Token attributions: test.txt (first {len(examples)})")
        if not trainer.spec.decoder.multi_label:
            split_gold = dataset.gold_names(dataset.test)
            cases = bad_cases(explainer, dataset.test, split_gold, explainer.probabilities(dataset.test),
                              BAD_CASE_LIMIT)
            write_explanations(output_dir, "test_bad_cases", cases,
                               f"Bad cases on test.txt: errors, most confident first ({len(cases)})")
    if dataset.data:
        examples = dataset.data[:EXPLAIN_LIMIT]
        write_explanations(output_dir, "data_explanations", explainer.explain_all(examples),
                           f"Token attributions: data.txt (first {len(examples)})")
    logger.info("--explain: token attributions written to %s (*_explanations.html, test_bad_cases.html)", output_dir)


def predict_and_write(trainer, dataset: DatasetDir, label_set: LabelSet, output_dir: str) -> Dict[str, Any]:
    """Test metrics + per-example predictions for test.txt, and predictions for data.txt.

    Under data parallelism every process predicts (the Trainer gathers the logits of all of
    them); only the first writes files.
    """
    results: Dict[str, Any] = {}
    spec = trainer.spec
    writer = trainer.is_world_process_zero()
    if dataset.test:
        logits = predict_logits(trainer, dataset.test)
        gold = [e["labels"] for e in dataset.test]
        metrics = {f"test_{k}": v for k, v in task_metrics(spec.decoder, logits, gold).items()}
        metrics.update(calibration_metrics(spec, logits, dataset.test, "test"))
        metrics["test_samples"] = len(gold)
        trainer.log_metrics("test", metrics)
        trainer.save_metrics("test", metrics)
        if writer:
            write_prediction_file(os.path.join(output_dir, TEST_PREDICTIONS_FILE), dataset, dataset.test, logits,
                                  spec, True)
            write_report(output_dir, "test", dataset, dataset.test, logits, spec)
        results["test"] = metrics
    else:
        logger.warning("--do_predict: no test.txt in %s, skipping test metrics", dataset.path)
    if dataset.data:
        logits = predict_logits(trainer, dataset.data)
        if writer:
            write_prediction_file(os.path.join(output_dir, DATA_PREDICTIONS_FILE), dataset, dataset.data, logits,
                                  spec, False)
        results["data_predictions"] = len(dataset.data)
    return results
