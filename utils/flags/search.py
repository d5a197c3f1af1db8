"""search.py's own flags; train.py's come after `--` and are the base every trial changes."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from ..errors import UserError
from .multirun import SET_PER_RUN
from .train import flag_given

USAGE = ("python search.py --output_dir DIR --n_trials N [--storage URL] [--study_name NAME] "
         "[--seeds 1 2 | --splits_dir DATA/splits [--split_ids 0 1]] [--space FILE] [--metric eval_accuracy] "
         "[--ray ADDRESS] -- <train.py flags>")
DESCRIPTION = ("Search train.py's hyperparameters (learning rates, prompt encoder, prompts, label words, freezing, "
               "method, steps) with Optuna. A trial is one configuration run over --seeds or FewCLUE splits (as "
               "multirun.py runs it); its value is the dev metric's mean - std, so a lucky seed does not win. Writes "
               "DIR/best_command.txt, DIR/trials.tsv and plots; the study lives in --storage and resumes after a kill. "
               "Everything after `--` goes to train.py.")
# The dev metrics a trial can be judged by (train.py's eval_results.json; micro-F1: label sets only).
METRICS = ("eval_accuracy", "eval_macro_f1", "eval_micro_f1")
DEFAULT_METRIC = "eval_accuracy"
DEFAULT_SEEDS = [1, 2]


@dataclass
class SearchArguments:
    output_dir: Optional[str] = field(default=None, metadata={
        "required": True, "help": "Folder of the search: trials/<n>/ (each trial's runs), study.db (the default "
                                  "storage), best_command.txt, trials.tsv, the plots."})
    n_trials: int = field(default=20, metadata={
        "help": "Finished trials (complete or pruned) the study should have; a resumed search runs only the rest."})
    storage: Optional[str] = field(default=None, metadata={
        "help": "Where the study lives: an SQLAlchemy URL (sqlite:///PATH, postgresql://..., mysql://...) or a "
                "journal file (a path ending .journal or .log: several workers on a shared file system). Default: "
                "sqlite:///OUTPUT_DIR/study.db."})
    study_name: str = field(default="search", metadata={
        "help": "The study's name in --storage (several searches can share one storage)."})
    seeds: Optional[List[int]] = field(default=None, metadata={
        "help": f"Seeds each trial runs (default {' '.join(map(str, DEFAULT_SEEDS))}; with --splits_dir: 42)."})
    splits_dir: Optional[str] = field(default=None, metadata={
        "help": "FewCLUE-style splits (train_<i>.txt, dev_<i>.txt; label.txt in the folder above): each trial runs "
                "every split, as multirun.py --splits_dir."})
    split_ids: Optional[List[int]] = field(default=None, metadata={
        "help": "Splits to run (default: every i with train_<i>.txt in --splits_dir)."})
    space: Optional[str] = field(default=None, metadata={
        "help": "The search space, YAML or JSON (docs/how-to/search.md). Default: learning rates, soft encoder, "
                "--freeze_plm and label words from the label-word checker's ranking."})
    metric: str = field(default=DEFAULT_METRIC, metadata={
        "help": f"The dev metric to maximise: {', '.join(METRICS)} (micro-F1: multi-label and hierarchical)."})
    pruning: bool = field(default=True, metadata={
        "help": "Stop a trial after a run whose dev metric is below the median of earlier trials at that run "
                "(Optuna's MedianPruner); --pruning false runs every trial to the end."})
    sampler_seed: int = field(default=0, metadata={"help": "Seed of the TPE sampler."})
    ray: Optional[str] = field(default=None, metadata={
        "help": "A Ray cluster's address (HOST:PORT, or auto): each trial is a Ray Tune trial on the cluster, "
                "into the same Optuna study (OUTPUT_DIR must be on a file system every node sees). Requires "
                "requirements-ray.txt."})
    parallel: int = field(default=0, metadata={
        "help": "With --ray: trials run at once (default: the cluster's CPUs)."})
    train_flags: Optional[List[str]] = field(default=None, metadata={"remainder": True})  # after `--`

    def __post_init__(self):
        if self.train_flags is None:
            raise UserError("put train.py's flags after `--`, e.g. `search.py --output_dir DIR --n_trials 20 -- "
                            "--model_name_or_path M --data_dir D --prompt P --max_steps 200 --eval_steps 50`",
                            "search.py")
        if self.n_trials < 1:
            raise UserError(f"must be 1 or more, got {self.n_trials}", "--n_trials")
        if self.metric not in METRICS:
            raise UserError(f"no such dev metric {self.metric!r}: the trials' eval_results.json give "
                            f"{', '.join(METRICS)}", "--metric")
        if self.metric == "eval_micro_f1" and not flag_given(self.train_flags, "--task_type"):
            raise UserError("micro-F1 is written by multi-label and hierarchical runs: add --task_type after `--`, "
                            "or use eval_accuracy / eval_macro_f1", "--metric")
        if self.split_ids and not self.splits_dir:
            raise UserError("needs --splits_dir", "--split_ids")
        for values, flag in ((self.seeds, "--seeds"), (self.split_ids, "--split_ids")):
            if values and len(set(values)) != len(values):
                raise UserError(f"repeats a value: {values}", flag)
        for flag in SET_PER_RUN:
            if flag_given(self.train_flags, flag):
                raise UserError(f"search.py sets {flag} for each run; remove it from the flags after `--`", flag)
        if self.splits_dir is None and not flag_given(self.train_flags, "--data_dir"):
            raise UserError("give --data_dir after `--` (or --splits_dir)", "search.py")
        if not flag_given(self.train_flags, "--do_train"):
            raise UserError("a trial trains: add --do_train to the flags after `--`", "search.py")
        if self.parallel < 0:
            raise UserError(f"must be 0 or more, got {self.parallel}", "--parallel")
        if self.parallel and not self.ray:
            raise UserError("is for --ray (locally trials run one after another; start several search.py "
                            "processes on one --storage to run more)", "--parallel")
        if self.seeds is None:
            self.seeds = [42] if self.splits_dir else list(DEFAULT_SEEDS)
