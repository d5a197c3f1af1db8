"""The output directory of a run: one run per directory, one process writing it, no leftovers.

Rules (checked before any model loads; README "What is guaranteed"):

* A directory holding outputs of a run is refused, unless `--overwrite_output_dir`, which first
  removes *every* output this tool writes there (checkpoints, final model, results, predictions,
  reports, export), so nothing of the old run survives beside the new one. Other files are left.
* `--do_train --resume_from_checkpoint OUT/checkpoint-N` into `OUT` continues that run: newer
  checkpoints are refused (or discarded with `--overwrite_output_dir`) and the earlier
  continuation's final model and results are removed. `--resume_from_checkpoint OUT` means the
  latest complete checkpoint in `OUT`.
* Evaluating/predicting/exporting without training needs a trained model
  (`--resume_from_checkpoint`). Into the model's own run directory only the requested kinds of
  results are (re)written; a checkpoint of a finished run must be evaluated into another directory,
  so that one directory never mixes results of two models.
* A lock (`.ptuning.lock`, flock) keeps a second process out of a directory in use.
"""
from __future__ import annotations

import errno
import fnmatch
import logging
import os
import tempfile
from dataclasses import dataclass, field
from typing import List, Optional

from .checkpoints import LEFTOVER_PATTERNS, checkpoint_step, complete_checkpoints, latest_checkpoint, remove_tree
from ..errors import UserError
from .names import (CARD_FILE, RUN_RECORD_FILE, is_tool_card, ALL_RESULTS_FILE, CHECKPOINT_PREFIX, COMPLETE_MARKER, CURVES_FILE,
                    DISTILL_SUMMARY_FILE, EVAL_RESULTS_FILE, EXPORT_DIR, LOCK_FILE, MODEL_STATE_FILE, PLM_CONFIG_FILE,
                    PRETRAINING_FILE, ROUNDS_DIR, SPEC_FILE, TEACHER_PREDICTIONS_FILE, TEMPLATE_CONFIG_FILE,
                    TEMPLATE_STATE_FILE, TEST_RESULTS_FILE, TOKENIZER_FILES, TRAIN_RESULTS_FILE,
                    TRAINER_STATE_FILE, TRAINING_ARGS_FILE, VERBALIZER_CONFIG_FILE, VERBALIZER_STATE_FILE)

logger = logging.getLogger(__name__)

# Outputs by kind; every name train.py can write into --output_dir is in exactly one kind.
OUTPUT_KINDS = {
    "train": (CHECKPOINT_PREFIX + "*", MODEL_STATE_FILE, SPEC_FILE, TEMPLATE_CONFIG_FILE, TEMPLATE_STATE_FILE,
              VERBALIZER_CONFIG_FILE, VERBALIZER_STATE_FILE, *TOKENIZER_FILES, TRAINING_ARGS_FILE,
              TRAINER_STATE_FILE, TRAIN_RESULTS_FILE, CURVES_FILE, COMPLETE_MARKER,
              ROUNDS_DIR, DISTILL_SUMMARY_FILE, TEACHER_PREDICTIONS_FILE,  # self-training / distillation
              PLM_CONFIG_FILE, PRETRAINING_FILE,  # pretrain.py's model directory (utils/training/pretraining.py)
              RUN_RECORD_FILE),  # and README.md when it is this tool's card (owned_outputs)
    "eval": (EVAL_RESULTS_FILE, "eval_report.*", "eval_confusion_matrix.*", "eval_top_confusions.*",
             "eval_reliability.png", "eval_coverage.tsv"),
    "predict": (TEST_RESULTS_FILE, "test_predictions.*", "data_predictions.*", "test_report.*",
                "test_confusion_matrix.*", "test_top_confusions.*",
                "test_reliability.png", "test_coverage.tsv", "test_explanations.*", "test_bad_cases.*",
                "data_explanations.*"),
    "export": (EXPORT_DIR,),
    "summary": (ALL_RESULTS_FILE,),
}


def owned_outputs(output_dir: str, kinds=tuple(OUTPUT_KINDS)) -> List[str]:
    """Names in `output_dir` that this tool writes, of the given kinds (and any leftovers)."""
    if not os.path.isdir(output_dir):
        return []
    patterns = [p for kind in kinds for p in OUTPUT_KINDS[kind]] + list(LEFTOVER_PATTERNS)
    owned = [name for name in os.listdir(output_dir)
             if name != LOCK_FILE and any(fnmatch.fnmatchcase(name, p) for p in patterns)]
    if "train" in kinds and is_tool_card(os.path.join(output_dir, CARD_FILE)):  # the user's README.md is theirs
        owned.append(CARD_FILE)
    return sorted(owned)


def _same_path(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def _inside(path: str, directory: str) -> bool:
    path, directory = os.path.realpath(path), os.path.realpath(directory)
    return path != directory and os.path.commonpath([path, directory]) == directory


@dataclass
class OutputPlan:
    """What a run may do to its output directory, decided before it starts."""

    output_dir: str
    resume: Optional[str] = None      # checkpoint or model directory to start from
    remove: List[str] = field(default_factory=list)  # names in output_dir to delete before the run


def plan_output_dir(output_dir: str, do_train: bool, kinds: List[str], overwrite: bool,
                    resume: Optional[str], model_dir: Optional[str] = None) -> OutputPlan:
    """Apply the module's rules; raise `UserError` when the run must not start. Changes nothing."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise UserError("exists and is not a directory; choose another --output_dir", output_dir)
    if model_dir and os.path.isdir(model_dir) and _same_path(model_dir, output_dir):
        raise UserError("is the pretrained model's directory (--model_name_or_path); write runs elsewhere",
                        output_dir)
    existing = owned_outputs(output_dir)
    if existing == [RUN_RECORD_FILE]:  # a run that failed or was killed before writing anything: nothing to keep
        existing = []
    if MODEL_STATE_FILE in existing and SPEC_FILE not in existing and PRETRAINING_FILE not in existing:
        raise UserError(f"holds a model that this tool did not write ({MODEL_STATE_FILE} without {SPEC_FILE}); "
                        "choose another --output_dir so it is never overwritten", output_dir)
    refuse = ("already holds results of an earlier run ({names}); pass --overwrite_output_dir to replace them "
              "(everything this tool wrote there is removed first) or choose another --output_dir")
    plan = OutputPlan(output_dir=output_dir, resume=resume)
    if resume and _same_path(resume, output_dir) and do_train:
        plan.resume = latest_checkpoint(output_dir)
        if plan.resume is None:
            raise UserError("holds no complete checkpoint-N to resume training from (a final model alone has no "
                            "optimizer state); pass a checkpoint directory", resume)
    if do_train:
        if plan.resume and _inside(plan.resume, output_dir) and checkpoint_step(plan.resume) is not None:
            step = checkpoint_step(plan.resume)
            newer = [os.path.basename(c) for c in complete_checkpoints(output_dir) if checkpoint_step(c) > step]
            if newer and not overwrite:
                raise UserError(f"holds checkpoints newer than the one you resume from ({', '.join(newer)}); pass "
                                "--overwrite_output_dir to discard them, or resume from the latest", output_dir)
            resumed = os.path.basename(os.path.normpath(plan.resume))
            # The earlier continuation of this run: its later checkpoints, final model, results.
            plan.remove = [n for n in existing if n != resumed and not (
                checkpoint_step(n) is not None and checkpoint_step(n) <= step)]
        elif existing:
            if not overwrite:
                raise UserError(refuse.format(names=", ".join(existing[:6])), output_dir)
            plan.remove = existing
        return plan
    if not plan.resume:
        raise UserError("needs a trained model: add --do_train, or --resume_from_checkpoint DIR (a train.py "
                        "--output_dir or one of its checkpoint-N); without one the classifier head would be "
                        "untrained and its predictions meaningless", "--resume_from_checkpoint")
    if _same_path(plan.resume, output_dir):
        clash = owned_outputs(output_dir, kinds)
        if clash and not overwrite:
            raise UserError(refuse.format(names=", ".join(clash[:6])), output_dir)
        plan.remove = clash
    elif _inside(plan.resume, output_dir):
        results = [n for n in existing if checkpoint_step(n) is None and n not in (EXPORT_DIR,)
                   and not any(fnmatch.fnmatchcase(n, p) for p in LEFTOVER_PATTERNS)]
        if results:
            raise UserError(f"is inside a run directory that holds that run's own results ({', '.join(results[:4])}); "
                            "write this checkpoint's results to another --output_dir so they do not mix",
                            plan.resume)
        clash = owned_outputs(output_dir, kinds)
        if clash and not overwrite:
            raise UserError(refuse.format(names=", ".join(clash[:6])), output_dir)
        plan.remove = clash
    elif existing:
        if not overwrite:
            raise UserError(refuse.format(names=", ".join(existing[:6])), output_dir)
        plan.remove = existing
    return plan


def apply_plan(plan: OutputPlan) -> None:
    """Delete what the plan says (each name crash-safely), then the leftovers of killed runs."""
    from .checkpoints import clean_leftovers

    if plan.remove:
        logger.info("removing the earlier outputs in %s: %s", plan.output_dir, ", ".join(plan.remove))
    for name in plan.remove:
        remove_tree(os.path.join(plan.output_dir, name))
    clean_leftovers(plan.output_dir)


class DirLock:
    """An exclusive, non-blocking lock on a directory for the life of this process (flock).

    The lock file stays (removing a flock'ed file races with a second locker); the kernel
    releases the lock when the process ends, however it ends.
    """

    def __init__(self, directory: str, lock_name: str = LOCK_FILE, what: str = "train.py"):
        self.directory = directory
        self.path = os.path.join(directory, lock_name)
        self.what = what
        self.created_dir = False
        self._fp = None

    def acquire(self) -> "DirLock":
        import fcntl

        self.created_dir = not os.path.exists(self.directory)
        ensure_writable_dir(self.directory)
        self._fp = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(self._fp.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            self._fp.seek(0)
            holder = self._fp.read().strip() or "another process"
            self._fp.close()
            self._fp = None
            raise UserError(f"is in use by {holder}; two runs must not write one directory at once: wait for it to "
                            "finish or choose another --output_dir", self.directory) from None
        self._fp.seek(0)
        self._fp.truncate()
        self._fp.write(f"{self.what} (pid {os.getpid()})\n")
        self._fp.flush()
        return self

    def release(self, failed: bool = False) -> None:
        """Unlock; after a failure, remove the directory again if this run created it and left it empty."""
        if self._fp is not None:
            self._fp.close()
            self._fp = None
        if failed and self.created_dir:
            try:
                os.remove(self.path)
                os.rmdir(self.directory)
            except OSError:
                pass

    def __enter__(self):
        return self.acquire()

    def __exit__(self, exc_type, exc, tb):
        self.release(failed=exc_type is not None)


def ensure_writable_dir(directory: str, flag: str = "--output_dir") -> None:
    """Create `directory` if needed and prove a file can be written there (root ignores modes)."""
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise UserError(f"exists and is not a directory ({flag})", directory)
    try:
        os.makedirs(directory, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=directory)
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        raise UserError(f"cannot write here ({flag}): {exc.strerror or exc}", directory) from None
