"""run.json: how a run directory was made: each train.py command line that wrote it, and the data
files it read (bytes and sha256), for the model card and for whoever finds the directory later.

A fresh run starts the record; a run from a checkpoint (resumed, or evaluated into another directory)
carries that checkpoint's commands before its own, so the record tells the whole history of the weights.
"""
from __future__ import annotations

import os
import shlex
import sys
import time
from typing import Dict, List, Optional, Sequence

from ..errors import UserError
from ..files import read_json, sha256_file, write_json_atomic
from .names import RUN_RECORD_FILE

RECORD_VERSION = 1


def command_line(script: str, argv: Sequence[str]) -> str:
    """A runnable shell line: `python SCRIPT ARGS`, each argument quoted where the shell needs it."""
    return shlex.join(["python", script, *argv])


def fingerprint(paths: Dict[str, str]) -> Dict[str, dict]:
    """`{name: {path, bytes, sha256}}` of the files that exist."""
    return {name: {"path": os.path.abspath(path), "bytes": os.path.getsize(path), "sha256": sha256_file(path)}
            for name, path in sorted(paths.items()) if path and os.path.isfile(path)}


def run_history(model_from: Optional[str]) -> List[dict]:
    """The commands that made the model a run starts from (`model_from`: the checkpoint resumed or
    evaluated); read before the run's output directory is cleaned, which may remove that record."""
    if not model_from:
        return []
    found = read_run_record(model_from)
    return list(found["commands"]) if found else [
        {"command": None, "note": f"the model came from {model_from}, which has no readable run.json"}]


def write_run_record(output_dir: str, argv: Sequence[str], data_files: Dict[str, str],
                     history: Sequence[dict] = (), script: str = "train.py") -> dict:
    """Write OUTPUT_DIR/run.json: `history` (see `run_history`), then this command; return the record."""
    entry = {"command": command_line(script, argv), "argv": list(argv), "cwd": os.getcwd(),
             "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "python": sys.executable,
             "data": fingerprint(data_files)}
    record = {"version": RECORD_VERSION, "commands": list(history) + [entry]}
    write_json_atomic(os.path.join(output_dir, RUN_RECORD_FILE), record)
    return record


def discard_lone_record(output_dir: str) -> None:
    """Remove run.json when nothing else of a run is in `output_dir` (its lock aside): a run that failed
    before writing anything leaves the directory as it found it."""
    from .names import LOCK_FILE

    try:
        names = set(os.listdir(output_dir)) - {LOCK_FILE}
    except OSError:
        return
    if names == {RUN_RECORD_FILE}:
        os.remove(os.path.join(output_dir, RUN_RECORD_FILE))


def read_run_record(directory: str) -> Optional[dict]:
    """The record of the run that made `directory` (a run directory, or a checkpoint-N inside one);
    None where there is none or it cannot be read (a card then says the command is unknown)."""
    for candidate in (directory, os.path.dirname(os.path.abspath(directory))):
        path = os.path.join(candidate, RUN_RECORD_FILE)
        if os.path.isfile(path):
            try:
                record = read_json(path, "run record")
            except UserError:
                return None
            return record if isinstance(record, dict) and isinstance(record.get("commands"), list) else None
    return None
