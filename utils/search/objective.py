"""One trial: a configuration run over the seeds or splits by multirun's machinery, judged by mean - std.

    OUTPUT_DIR/trials/<n>/data/            the trial's data folder when it searches label words (label.txt
                                           replaced), or data/split_<i>/ with --splits_dir (as multirun's)
    OUTPUT_DIR/trials/<n>/runs/<name>/     each run: train.py's --output_dir, its log in train.log
    OUTPUT_DIR/trials/<n>/summary.json,.md multirun's summary of the trial's runs

Runs go one after another (`utils.training.multirun`: plan_runs, train_argv, run_training, collect_metrics,
aggregate); after each, its dev metric is reported to the study as the trial's intermediate value at step
i, so a pruner stops a bad trial after its first run. The value is mean - sample std (std of one run: 0).
How a run is executed is the caller's executor (a local subprocess); with --ray the whole trial runs in a Ray
Tune trial on a node of the cluster (`utils.search.ray_tune`), reporting to Tune after each run.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..errors import UserError
from ..files import write_json_atomic, write_text_atomic
from ..rundir.checkpoints import reached
from ..training import multirun
from .candidates import parse_train, write_label_file
from .space import LABEL_WORDS, apply_params

TRIALS_DIR = "trials"
# A run executor: (run, train.py command) -> (seconds, metrics of the run's eval/test results).
Executor = Callable[[multirun.Run, List[str]], Tuple[float, Dict[str, float]]]


class InvalidConfiguration(Exception):
    """A combination of values train.py refuses (each value alone passed): the trial is pruned, not run."""


@dataclass
class TrialSetup:
    """What every trial shares: the flags after `--`, the data, the seeds or splits, the metric."""

    output_dir: str
    train_flags: List[str]
    seeds: List[int]
    split_ids: Optional[List[int]]
    splits_dir: Optional[str]
    task_dir: Optional[str]
    data_dir: Optional[str]  # the forwarded --data_dir (None with splits)
    metric: str

    def trial_dir(self, number: int) -> str:
        return os.path.join(self.output_dir, TRIALS_DIR, str(number))


def local_executor(run: multirun.Run, command: List[str]) -> Tuple[float, Dict[str, float]]:
    """train.py in a subprocess on this machine (multirun's `run_training`)."""
    seconds = multirun.run_training(run, command)
    return seconds, multirun.collect_metrics(run.output_dir)


def objective_value(values: Sequence[float]) -> Dict[str, Any]:
    """mean - sample std (ddof=1) of the runs' dev metric; one run's std counts as 0."""
    stats = multirun.aggregate(values)
    std = stats["std"] or 0.0
    return {**stats, "value": stats["mean"] - std}


def prepare_trial(setup: TrialSetup, number: int, params: Dict[str, Any]) -> Tuple[List[multirun.Run], List[str]]:
    """The trial's runs and train.py flags (params applied, its data folders written); train.py's
    checks on the combination (an `InvalidConfiguration` when refused)."""
    trial_dir = setup.trial_dir(number)
    if os.path.isdir(trial_dir):  # a trial number is used once; a left-over folder is from a killed process
        shutil.rmtree(trial_dir)
    runs = multirun.plan_runs(trial_dir, setup.seeds, setup.split_ids)
    words = json.loads(params[LABEL_WORDS]) if LABEL_WORDS in params else None
    flags = apply_params(setup.train_flags, params)
    if setup.split_ids is None and words is not None:
        data_dir = os.path.join(trial_dir, "data")
        _copy_files(setup.data_dir, data_dir)
        write_label_file(data_dir, words)
        flags = multirun.without_flag(flags, "--data_dir") + ["--data_dir", data_dir]
    for run in runs:
        if run.data_dir:
            multirun.make_split_data_dir(setup.splits_dir, setup.task_dir, run.split, run.data_dir)
            if words is not None:
                write_label_file(run.data_dir, words)
    try:
        parse_train(multirun.train_argv(runs[0], flags, False)[2:], "this configuration")
    except UserError as exc:
        raise InvalidConfiguration(exc.message) from None
    return runs, flags


def _copy_files(source: str, target: str) -> None:
    os.makedirs(target, exist_ok=True)
    for name in sorted(os.listdir(source)):
        if os.path.isfile(os.path.join(source, name)):
            shutil.copyfile(os.path.join(source, name), os.path.join(target, name))


def run_trial(setup: TrialSetup, number: int, params: Dict[str, Any], execute: Executor,
              report: Callable[[float, int, Dict[str, Any]], bool]) -> Dict[str, Any]:
    """Run the trial's runs in order; after each but the last, `report(dev metric, step, record so far)`
    returns True to stop (pruned: the result's `pruned` is True). The trial's summary.json/.md and record
    (value, mean, std, runs, seconds) cover the runs done so far after each run, so a trial stopped from
    outside (a Tune scheduler) has them too. Returns the record."""
    runs, flags = prepare_trial(setup, number, params)
    results, seconds = [], []
    for step, run in enumerate(runs):
        command = multirun.train_argv(run, flags, False)
        sys.stderr.write(f"[trial {number}] run {step + 1}/{len(runs)} {run.name} (log: "
                         f"{os.path.join(run.output_dir, 'train.log')})\n")
        took, metrics = execute(run, command)
        if setup.metric not in metrics:
            raise UserError(f"run {run.name} wrote no {setup.metric} (eval_results.json has "
                            f"{sorted(k for k in metrics if k.startswith('eval_')) or 'nothing'})", run.output_dir)
        seconds.append(took)
        results.append(metrics)
        reached(f"trial {number} run {step + 1} done", run.output_dir)  # where tests kill the search
        record = trial_record(setup, number, runs[:len(results)], results, seconds, flags)
        if step + 1 < len(runs) and report(metrics[setup.metric], step, record):
            record["pruned"] = True
            break
    return record


def trial_record(setup: TrialSetup, number: int, done: List[multirun.Run], results: List[Dict[str, float]],
                 seconds: List[float], flags: List[str]) -> Dict[str, Any]:
    """The record of the runs done (multirun's summary.json/.md written beside them), `pruned` False."""
    summary = multirun.summarize(done, results, seconds, flags)
    write_json_atomic(os.path.join(setup.trial_dir(number), "summary.json"), summary)
    write_text_atomic(os.path.join(setup.trial_dir(number), "summary.md"),
                      multirun.summary_markdown(summary, multirun.markdown_table(summary)))
    record = objective_value([m[setup.metric] for m in results])
    record.update(pruned=False, seconds=round(sum(seconds), 1), train_flags=flags,
                  runs=[{"name": r.name, "seed": r.seed, "split": r.split, "output_dir": r.output_dir,
                         "data_dir": r.data_dir, "argv": multirun.train_argv(r, flags, False)[2:]} for r in done])
    return record
