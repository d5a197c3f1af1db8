"""Checkpoints that are whole or ignored, and verified before use.

A checkpoint (or a run's final model) is a directory with `checkpoint_complete.json` listing
every file with its size and sha256, written last: a `checkpoint-N` without it is a save that was
killed, never resumed from and removed at the next start. Before a checkpoint is used, `verify` checks
the list against the disk: a missing, truncated or altered file is a clear error naming it, never
a traceback or a resume that silently differs (a missing `rng_state.pth` used to change the losses).

Deleting is as crash-safe as saving: a directory is first renamed to `.deleting-*` (one atomic
step), then removed; `clean_leftovers` removes such remains, and staging directories, at the
next start.
"""
from __future__ import annotations

import glob
import logging
import os
import re
import shutil
from typing import Dict, List, Optional

from ..errors import UserError
from ..files import read_json, sha256_file, write_json_atomic, write_text_atomic
from .names import (CHECKPOINT_PREFIX, COMPLETE_MARKER, LOCK_FILE, MODEL_STATE_FILE, OPTIMIZER_FILE, PRETRAINING_FILE,
                    SCHEDULER_FILE, SPEC_FILE, TRAINER_STATE_FILE, rng_file)

logger = logging.getLogger(__name__)

MARKER_FORMAT = 2
CHECKPOINT_PATTERN = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")
DELETING_PREFIX = ".deleting-"
# Partial files a killed run can leave behind: checkpoint staging, deletions, export staging.
LEFTOVER_PATTERNS = (".saving*", DELETING_PREFIX + "*", "export.tmp-*", "export.old-*", ".*.tmp")
MODEL_FILES = (MODEL_STATE_FILE, SPEC_FILE)
RESUME_FILES = (OPTIMIZER_FILE, SCHEDULER_FILE, TRAINER_STATE_FILE)
PAUSE_ENV = "PTUNING_TEST_PAUSE"


def reached(point: str, directory: str) -> None:
    """A named moment of saving, where tests stop a run (kill -9, or an exception in-process):
    `checkpoint-N written` (its files, no marker yet), `checkpoint-N marked` (before rotation),
    `deleting checkpoint-M` (renamed to `.deleting-*`, not removed yet), `checkpoint-N saved`
    (rotation done), `final model written` (no marker yet), `final model saved`; `directory` is
    the run's. With `PTUNING_TEST_PAUSE="<point>=<file>"` the process writes its pid to `<file>`
    when it reaches `<point>` and waits there until it is killed."""
    wanted = os.environ.get(PAUSE_ENV)
    if not wanted:
        return
    name, _, path = wanted.partition("=")
    if name == point and path:
        import threading

        write_text_atomic(path, f"{os.getpid()}\n")
        threading.Event().wait()  # for ever: the test kills the process here


def is_model_file(name: str) -> bool:
    """Files a marker lists: not the marker, not hidden files (the run directory's lock, which the next
    process to lock it rewrites) and not logs (multirun.py's train.log keeps growing after the save)."""
    return name != COMPLETE_MARKER and not name.startswith(".") and not name.endswith(".log")


def write_marker(directory: str, global_step: Optional[int], world_size: int) -> dict:
    """List every model file of `directory` with size and sha256 in the marker (written last, atomically)."""
    files = {}
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if is_model_file(name) and os.path.isfile(path):
            files[name] = {"bytes": os.path.getsize(path), "sha256": sha256_file(path)}
    marker = {"format": MARKER_FORMAT, "global_step": global_step, "world_size": world_size, "files": files}
    write_json_atomic(os.path.join(directory, COMPLETE_MARKER), marker)
    return marker


def read_marker(directory: str) -> Optional[dict]:
    """The marker, or None when absent; a damaged marker is an error."""
    path = os.path.join(directory, COMPLETE_MARKER)
    if not os.path.exists(path):
        return None
    marker = read_json(path, what="checkpoint marker")
    files = marker.get("files") if isinstance(marker, dict) else None
    if isinstance(files, list):  # format 1: names only
        files = {name: {} for name in files if isinstance(name, str)}
    if not isinstance(files, dict) or not all(isinstance(v, dict) for v in files.values()):
        raise UserError("is damaged: expected {\"files\": {name: {bytes, sha256}}}", path)
    return {**marker, "files": files}


def verify(directory: str, purpose: str = "model", world_size: int = 1, model_files=MODEL_FILES) -> Optional[dict]:
    """Check a checkpoint before use; `purpose` is `model` (weights) or `resume` (continue training).
    `model_files`: what the marker must list besides the resume files (pretrain.py's differ).

    Returns the marker (None for a model directory without one, which only `model` accepts).
    """
    if not os.path.isdir(directory):
        raise UserError("checkpoint directory not found", directory)
    marker = read_marker(directory)
    if marker is None:
        if purpose == "resume":
            raise UserError(f"cannot resume from it: {COMPLETE_MARKER} is missing, so the checkpoint was never "
                            "completed (a run killed while saving?); resume from an earlier checkpoint", directory)
        return None
    listed = marker["files"]
    if SPEC_FILE in model_files and SPEC_FILE not in listed and is_pretrained_language_model(directory):
        raise not_a_classifier(directory)
    needed = list(model_files) + (list(RESUME_FILES) if purpose == "resume" else [])
    for name in needed:
        if name not in listed:
            raise UserError(f"is not a complete checkpoint: {name} is not among its files", directory)
    for name, recorded in listed.items():
        if not is_model_file(name):  # listed by earlier versions; rewritten by design since
            continue
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            raise UserError(f"is missing (listed in {COMPLETE_MARKER}); the checkpoint is damaged, use another one",
                            path)
        size = os.path.getsize(path)
        if recorded.get("bytes") is not None and size != recorded["bytes"]:
            raise UserError(f"differs from what {COMPLETE_MARKER} recorded ({size} bytes, {recorded['bytes']} "
                            "recorded): truncated, damaged or edited; use another checkpoint", path)
        if recorded.get("sha256") and sha256_file(path) != recorded["sha256"]:
            raise UserError(f"differs from what {COMPLETE_MARKER} recorded (sha256): damaged or edited; "
                            "use another checkpoint", path)
    if purpose == "resume":
        saved_world = int(marker.get("world_size") or 1)
        if rng_file(saved_world) not in listed:
            raise UserError(f"is not a complete checkpoint: {rng_file(saved_world)} is not among its files",
                            directory)
        if saved_world != world_size:
            logger.warning("%s was saved by %d process(es) and is resumed by %d: training continues, but not "
                           "exactly as the original run would have (the data order and random state depend on "
                           "the number of processes)", directory, saved_world, world_size)
    return marker


def checkpoint_step(path: str) -> Optional[int]:
    match = CHECKPOINT_PATTERN.match(os.path.basename(os.path.normpath(path)))
    return int(match.group(1)) if match else None


def complete_checkpoints(run_dir: str) -> List[str]:
    """The run's `checkpoint-N` directories that have a marker, by step."""
    found = []
    for path in glob.glob(os.path.join(glob.escape(run_dir), CHECKPOINT_PREFIX + "*")):
        step = checkpoint_step(path)
        if step is not None and os.path.isdir(path) and os.path.isfile(os.path.join(path, COMPLETE_MARKER)):
            found.append((step, path))
    return [path for _, path in sorted(found)]


def latest_checkpoint(run_dir: str) -> Optional[str]:
    checkpoints = complete_checkpoints(run_dir)
    return checkpoints[-1] if checkpoints else None


def is_pretrained_language_model(directory: str) -> bool:
    """pretrain.py's output (utils/training/pretraining.py): a language model, with no classifier spec."""
    return os.path.isfile(os.path.join(directory, PRETRAINING_FILE)) and not os.path.isfile(
        os.path.join(directory, SPEC_FILE))


def not_a_classifier(directory: str) -> UserError:
    return UserError("is a pretrain.py language model, not a classifier: train one on it with "
                     f"--model_name_or_path {directory}", directory)


def refuse_non_final_model(path: str) -> None:
    """A directory that is no final classifier but looks like something near it: a pretrain.py
    language model, or a run whose training did not finish. Raises a UserError naming what to give."""
    if is_pretrained_language_model(path):
        raise not_a_classifier(path)
    latest = latest_checkpoint(path)
    if latest:
        raise UserError(f"holds no final model (training did not finish?); give one of its checkpoints, e.g. "
                        f"{latest}", path)


def remove_tree(path: str) -> None:
    """Delete a directory crash-safely: rename it to `.deleting-*` first, then remove that."""
    if not os.path.lexists(path):
        return
    parent, name = os.path.split(os.path.normpath(path))
    trash = os.path.join(parent, f"{DELETING_PREFIX}{name}-{os.getpid()}")
    if os.path.lexists(trash):
        _remove_any(trash)
    os.replace(path, trash)
    reached(f"deleting {name}", parent)
    _remove_any(trash)


def _remove_any(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.remove(path)


def clean_leftovers(run_dir: str) -> List[str]:
    """Remove what killed runs left in `run_dir`: checkpoints without their marker (a save that
    never finished), half-deleted directories, staging files."""
    removed = []
    for path in glob.glob(os.path.join(glob.escape(run_dir), CHECKPOINT_PREFIX + "*")):
        if checkpoint_step(path) is not None and os.path.isdir(path) and \
                not os.path.isfile(os.path.join(path, COMPLETE_MARKER)):
            remove_tree(path)
            removed.append(os.path.basename(path))
    for pattern in LEFTOVER_PATTERNS:
        for path in glob.glob(os.path.join(glob.escape(run_dir), pattern)):
            if os.path.basename(path) == LOCK_FILE:
                continue
            _remove_any(path)
            removed.append(os.path.basename(path))
    if removed:
        logger.info("removed leftovers of an interrupted run in %s: %s", run_dir, ", ".join(sorted(removed)))
    return removed


def rotate(run_dir: str, keep: Optional[int], best: Optional[str]) -> List[str]:
    """Keep the `keep` newest complete checkpoints (by step, not mtime) and the best one."""
    if not keep or keep <= 0:
        return []
    checkpoints = complete_checkpoints(run_dir)
    best_name = os.path.basename(os.path.normpath(best)) if best else None
    newest = checkpoints[-keep:]
    doomed = [c for c in checkpoints if c not in newest and os.path.basename(c) != best_name]
    for path in doomed:
        logger.info("deleting older checkpoint %s (--save_total_limit %d; the best is kept)", path, keep)
        remove_tree(path)
    return doomed


def describe(marker: Dict) -> str:
    return f"step {marker.get('global_step')}, {len(marker.get('files', {}))} files"
