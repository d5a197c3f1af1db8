"""multirun.py's own flags; train.py's come after `--` and go to each run unchanged."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from ..errors import UserError
from ..files import check_output_dir
from .train import flag_given

DEFAULT_SEED = 42
SET_PER_RUN = ("--output_dir", "--seed")
USAGE = ("python multirun.py --output_dir OUT [--seeds 1 2 3] [--splits_dir DATA/splits [--split_ids 0 1 2]] "
         "[--ensemble] [--overwrite_output_dir] -- <train.py flags>")
DESCRIPTION = ("Run one train.py configuration over several seeds and/or data splits and report mean ± sample std "
               "of the dev/test metrics. Everything after `--` goes to train.py.")


@dataclass
class MultirunArguments:
    output_dir: Optional[str] = field(default=None, metadata={
        "required": True, "help": "Folder for the runs, split data and summary."})
    seeds: Optional[List[int]] = field(default=None, metadata={
        "help": f"Seeds to run (default with --splits_dir: {DEFAULT_SEED})."})
    splits_dir: Optional[str] = field(default=None, metadata={
        "help": "FewCLUE-style splits folder with train_<i>.txt and dev_<i>.txt; its parent (the task folder) "
                "provides label.txt, test.txt and data.txt."})
    split_ids: Optional[List[int]] = field(default=None, metadata={
        "help": "Splits to run (default: every i with train_<i>.txt in --splits_dir)."})
    ensemble: bool = field(default=False, metadata={
        "help": "Also combine the runs' final models into one export averaging their probabilities (ensemble.py, "
                "into OUTPUT_DIR/ensemble) and report its metrics beside the runs'. With --splits_dir only test "
                "metrics: each split has its own dev set."})
    overwrite_output_dir: bool = field(default=False, metadata={
        "help": "Reuse a non-empty --output_dir (replaces this command's runs and summary in it)."})
    train_flags: Optional[List[str]] = field(default=None, metadata={"remainder": True})  # after `--`

    def __post_init__(self):
        forwarded = self.train_flags
        if forwarded is None:
            raise UserError("put train.py's flags after `--`, e.g. `multirun.py --output_dir OUT --seeds 1 2 -- "
                            "--data_dir DIR --do_train --do_eval ...`", "multirun.py")
        if not self.seeds and not self.splits_dir:
            raise UserError("nothing to repeat: give --seeds and/or --splits_dir", "multirun.py")
        if self.split_ids and not self.splits_dir:
            raise UserError("needs --splits_dir", "--split_ids")
        for flag in SET_PER_RUN:
            if flag_given(forwarded, flag):
                raise UserError(f"multirun.py sets {flag} for each run; remove it from the flags after `--` "
                                f"({'use --seeds' if flag == '--seed' else 'runs go to OUTPUT_DIR/runs/<name>'})", flag)
        if not (flag_given(forwarded, "--do_eval") or flag_given(forwarded, "--do_predict")):
            raise UserError("no metrics to summarise: add --do_eval and/or --do_predict to the flags after `--`",
                            "multirun.py")
        if self.ensemble and not flag_given(forwarded, "--do_train"):
            raise UserError("combines the runs' trained models: the flags after `--` must include --do_train",
                            "--ensemble")
        for values, flag in ((self.seeds, "--seeds"), (self.split_ids, "--split_ids")):
            if values and len(set(values)) != len(values):
                raise UserError(f"repeats a value: {values}", flag)
        if self.output_dir:
            check_output_dir(self.output_dir)
