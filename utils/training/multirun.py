"""multirun.py: one train.py configuration over several seeds and/or FewCLUE splits, mean ± std.

Layout of `--output_dir OUT`:

    OUT/data/split_<i>/      train.txt = splits/train_<i>.txt, dev.txt = splits/dev_<i>.txt, plus the
                             task's label.txt (and test.txt, data.txt when present), copied
    OUT/runs/<name>/         train.py's --output_dir for that run, with its log in train.log
    OUT/ensemble/            with --ensemble: ensemble.py over the runs (OUT/ensemble/export averages
                             their probabilities; its log in ensemble.log)
    OUT/summary.json, .md    per-run dev/test metrics, mean, sample std (ddof=1) and n (and the ensemble's)

Each run is a separate `train.py` process, so no state (Paddle's name counters, RNGs, GPU memory)
leaks from one run into the next. Paddle-free.
"""
from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..errors import UserError, debug_enabled
from ..flags.multirun import DEFAULT_SEED, MultirunArguments
from ..flags.train import flag_given, flag_value
from ..files import atomic_path, read_json, write_json_atomic, write_text_atomic
from ..export.card import write_multirun_card
from ..rundir.names import EVAL_RESULTS_FILE, TEST_RESULTS_FILE

logger = logging.getLogger(__name__)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository: train.py
TRAIN_SCRIPT = os.path.join(ROOT, "train.py")
ENSEMBLE_SCRIPT = os.path.join(ROOT, "ensemble.py")
ENSEMBLE_DIR = "ensemble"
# (results file, metric) in table order; headers are the Markdown column names. micro-F1 is written
# by multi-label and hierarchical runs only (whose accuracy is exact-match accuracy).
METRICS = ((EVAL_RESULTS_FILE, "eval_accuracy"), (EVAL_RESULTS_FILE, "eval_micro_f1"),
           (EVAL_RESULTS_FILE, "eval_macro_f1"), (TEST_RESULTS_FILE, "test_accuracy"),
           (TEST_RESULTS_FILE, "test_micro_f1"), (TEST_RESULTS_FILE, "test_macro_f1"))
HEADERS = {"eval_accuracy": "dev acc", "eval_micro_f1": "dev micro-F1", "eval_macro_f1": "dev macro-F1",
           "test_accuracy": "test acc", "test_micro_f1": "test micro-F1", "test_macro_f1": "test macro-F1"}
SPLIT_FILES = {"train.txt": "train_{}.txt", "dev.txt": "dev_{}.txt"}
TASK_FILES = {"label.txt": True, "test.txt": False, "data.txt": False}  # name: required
LOG_TAIL_LINES = 15


@dataclass
class Run:
    """One train.py invocation: its name, seed, split (None: the forwarded --data_dir) and folders."""

    name: str
    seed: int
    split: Optional[int]
    output_dir: str
    data_dir: Optional[str] = None


def without_flag(argv: Sequence[str], flag: str) -> List[str]:
    """`argv` without `flag VALUE` / `flag=VALUE`."""
    out: List[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == flag:
            skip = True
        elif not arg.startswith(flag + "="):
            out.append(arg)
    return out


def find_split_ids(splits_dir: str) -> List[int]:
    """Every `i` with a `train_<i>.txt` in `splits_dir` (FewCLUE's `train_few_all.txt` is not a split)."""
    if not os.path.isdir(splits_dir):
        raise UserError("splits folder not found", splits_dir)
    ids = sorted(int(m.group(1)) for name in os.listdir(splits_dir)
                 for m in [re.fullmatch(r"train_(\d+)\.txt", name)] if m)
    if not ids:
        raise UserError("no train_<i>.txt split files in it", splits_dir)
    return ids


def check_split_files(splits_dir: str, split_ids: Sequence[int]) -> str:
    """Check every file the splits need before anything runs; return the task folder (the parent)."""
    if not os.path.isdir(splits_dir):
        raise UserError("splits folder not found", splits_dir)
    task_dir = os.path.dirname(os.path.abspath(splits_dir))
    for split in split_ids:
        for pattern in SPLIT_FILES.values():
            path = os.path.join(splits_dir, pattern.format(split))
            if not os.path.isfile(path):
                raise UserError(f"split {split} file not found (--split_ids {split})", path)
    for name, required in TASK_FILES.items():
        path = os.path.join(task_dir, name)
        if required and not os.path.isfile(path):
            raise UserError(f"{name} not found in the task folder above --splits_dir", path)
    return task_dir


def make_split_data_dir(splits_dir: str, task_dir: str, split: int, target: str) -> str:
    """Copy split `split` (train/dev) and the task's label/test/data files into `target`."""
    sources = {name: os.path.join(splits_dir, pattern.format(split)) for name, pattern in SPLIT_FILES.items()}
    sources.update({name: os.path.join(task_dir, name) for name in TASK_FILES})
    os.makedirs(target, exist_ok=True)
    for name, source in sources.items():
        if os.path.isfile(source):
            with atomic_path(os.path.join(target, name)) as tmp:
                shutil.copyfile(source, tmp)  # a copy, not a link: the run's data stays as it was run
    return target


def plan_runs(output_dir: str, seeds: Sequence[int], split_ids: Optional[Sequence[int]]) -> List[Run]:
    """Runs in order: for each split (or once without splits), each seed."""
    runs = []
    for split in (split_ids if split_ids else [None]):
        for seed in seeds:
            name = f"seed{seed}" if split is None else f"split{split}_seed{seed}"
            data_dir = None if split is None else os.path.join(output_dir, "data", f"split_{split}")
            runs.append(Run(name, seed, split, os.path.join(output_dir, "runs", name), data_dir))
    return runs


def check_output_dir(output_dir: str, overwrite: bool) -> None:
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise UserError("exists and is not a folder", output_dir)
    if os.path.isdir(output_dir) and os.listdir(output_dir) and not overwrite:
        raise UserError("is not empty; pass --overwrite_output_dir to replace its runs or choose another "
                        "--output_dir", output_dir)


def clear_previous(output_dir: str, runs: Sequence[Run]) -> None:
    """Remove what this command is about to write, so no stale result is summarised as a new one."""
    for path in ([r.output_dir for r in runs] + [r.data_dir for r in runs if r.data_dir]
                 + [os.path.join(output_dir, ENSEMBLE_DIR)]):
        if os.path.isdir(path):
            shutil.rmtree(path)
    for name in ("summary.json", "summary.md"):
        if os.path.isfile(os.path.join(output_dir, name)):
            os.remove(os.path.join(output_dir, name))


def train_argv(run: Run, forwarded: Sequence[str], overwrite: bool) -> List[str]:
    """train.py's command line for `run`: the forwarded flags plus the run's folders and seed."""
    argv = list(forwarded)
    if run.data_dir:
        argv = without_flag(argv, "--data_dir") + ["--data_dir", run.data_dir]
    argv += ["--output_dir", run.output_dir, "--seed", str(run.seed)]
    if overwrite and not flag_given(argv, "--overwrite_output_dir"):
        argv.append("--overwrite_output_dir")
    return [sys.executable, TRAIN_SCRIPT, *argv]


def run_training(run: Run, command: Sequence[str]) -> float:
    """Run train.py with its output in `run.output_dir/train.log`; return the seconds it took."""
    os.makedirs(run.output_dir, exist_ok=True)
    log_path = os.path.join(run.output_dir, "train.log")
    env = dict(os.environ, PYTHONUNBUFFERED="1")  # the log follows the run (tail -f)
    if debug_enabled():  # run_cli strips --debug before main sees it; pass it on to the runs
        env["PTUNING_DEBUG"] = "1"
    start = time.monotonic()
    with open(log_path, "w", encoding="utf-8") as log:
        log.write("$ " + shlex.join(command) + "\n")
        log.flush()
        code = subprocess.run(list(command), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              env=env).returncode
    if code != 0:
        raise UserError(f"run {run.name} failed (train.py exit code {code}); the end of its log:\n"
                        f"{log_tail(log_path)}", log_path)
    return time.monotonic() - start


def ensemble_argv(runs: Sequence[Run], forwarded: Sequence[str], output_dir: str) -> List[str]:
    """ensemble.py's command line over the runs' final models. Dev metrics only when every run had
    the same dev.txt (seeds of one --data_dir): with splits, a split's dev set is in others' training."""
    data_dir = runs[0].data_dir or flag_value(forwarded, "--data_dir") or "./data/"
    argv = ["--members", *[r.output_dir for r in runs], "--output_dir", os.path.join(output_dir, ENSEMBLE_DIR),
            "--data_dir", data_dir]
    if flag_given(forwarded, "--do_eval") and runs[0].split is None:
        argv.append("--do_eval")
    if flag_given(forwarded, "--do_predict"):
        argv.append("--do_predict")
    return [sys.executable, ENSEMBLE_SCRIPT, *argv]


def run_ensemble(runs: Sequence[Run], forwarded: Sequence[str], output_dir: str) -> dict:
    """ensemble.py over the runs, in a subprocess like the runs; returns its summary's metrics."""
    target = os.path.join(output_dir, ENSEMBLE_DIR)
    command = ensemble_argv(runs, forwarded, output_dir)
    os.makedirs(target, exist_ok=True)
    log_path = os.path.join(target, "ensemble.log")
    with open(log_path, "w", encoding="utf-8") as log:
        log.write("$ " + shlex.join(command) + "\n")
        log.flush()
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              env=dict(os.environ, PYTHONUNBUFFERED="1")).returncode
    if code != 0:
        raise UserError(f"the ensemble failed (ensemble.py exit code {code}); the end of its log:\n"
                        f"{log_tail(log_path)}", log_path)
    summary = read_json(os.path.join(target, "ensemble.json"), "ensemble summary")
    metrics, members_mean = {}, {}
    for prefix, result in summary["metrics"].items():
        for key, value in result["ensemble"].items():
            if f"{prefix}_{key}" in HEADERS:
                metrics[f"{prefix}_{key}"] = value
                members_mean[f"{prefix}_{key}"] = result["members_mean"][key]
    return {"output_dir": target, "export": summary["export"], "members": len(summary["members"]),
            "views": summary["views"], "metrics": metrics, "members_mean": members_mean,
            "dev": "evaluated" if "eval" in summary["metrics"] else
            ("not evaluated: each split has its own dev set, which other runs trained on" if runs[0].split is not None
             else "not evaluated (no --do_eval)")}


def log_tail(path: str, lines: int = LOG_TAIL_LINES) -> str:
    with open(path, encoding="utf-8", errors="replace") as fp:
        tail = fp.read().splitlines()[-lines:]
    return "\n".join("    " + line for line in tail)


def collect_metrics(run_dir: str) -> Dict[str, float]:
    """The run's dev/test metrics from `eval_results.json` / `test_results.json`, where written."""
    metrics: Dict[str, float] = {}
    for filename, key in METRICS:
        path = os.path.join(run_dir, filename)
        if os.path.isfile(path):
            value = read_json(path, filename).get(key)
            if value is not None:
                metrics[key] = float(value)
    return metrics


def aggregate(values: Sequence[float]) -> Dict[str, object]:
    """Mean and sample standard deviation (ddof=1; None for a single value)."""
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if len(array) > 1 else None,
            "n": int(len(array)), "values": [float(v) for v in array]}


def summarize(runs: Sequence[Run], results: Sequence[Dict[str, float]], seconds: Sequence[float],
              forwarded: Sequence[str]) -> dict:
    """summary.json: per-run metrics and, per metric, mean, sample std and n over the runs that have it."""
    per_run = [{"name": r.name, "seed": r.seed, "split": r.split, "output_dir": r.output_dir,
                "data_dir": r.data_dir, "seconds": round(s, 1), "metrics": m}
               for r, m, s in zip(runs, results, seconds)]
    metrics = {}
    for _, key in METRICS:
        values = [m[key] for m in results if key in m]
        if values:
            metrics[key] = aggregate(values)
    return {"std": "sample standard deviation (ddof=1); null when n == 1", "train_args": list(forwarded),
            "runs": per_run, "metrics": metrics}


def markdown_table(summary: dict) -> str:
    """One row per run, then `mean ± std`; values in percent with 2 decimals."""
    keys = list(summary["metrics"])
    with_split = any(run["split"] is not None for run in summary["runs"])
    header = ["run"] + (["split"] if with_split else []) + ["seed"] + [HEADERS[k] for k in keys]
    rows = [header, ["---"] * len(header)]
    for run in summary["runs"]:
        row = [run["name"]] + ([str(run["split"])] if with_split else []) + [str(run["seed"])]
        rows.append(row + [_percent(run["metrics"].get(k)) for k in keys])
    mean_row = ["mean ± std"] + ([""] if with_split else []) + [""]
    for key in keys:
        stats = summary["metrics"][key]
        std = "–" if stats["std"] is None else f"{100 * stats['std']:.2f}"
        mean_row.append(f"{100 * stats['mean']:.2f} ± {std}")
    rows.append(mean_row)
    ensemble = summary.get("ensemble")
    if ensemble:
        rows.append([f"ensemble of {ensemble['members']}"] + ([""] if with_split else []) + [""]
                    + [_percent(ensemble["metrics"].get(k)) for k in keys])
    return "\n".join("| " + " | ".join(row) + " |" for row in rows) + "\n"


def _percent(value: Optional[float]) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def summary_markdown(summary: dict, table: str) -> str:
    counts = ", ".join(f"{HEADERS[k]} n={v['n']}" for k, v in summary["metrics"].items())
    text = ("# multirun summary\n\n" + table + "\nValues in %; std is the sample standard deviation (ddof=1) over "
            f"the runs ({counts}).\n")
    ensemble = summary.get("ensemble")
    if ensemble:
        gains = ", ".join(f"{HEADERS[k]} {100 * (v - ensemble['members_mean'][k]):+.2f}"
                          for k, v in ensemble["metrics"].items())
        text += (f"\nensemble: the {ensemble['members']} runs' probabilities averaged by one export "
                 f"({ensemble['export']}); against the mean of its members: {gains or 'no metrics'}; dev "
                 f"{ensemble['dev']}.\n")
    return text + f"\ntrain.py flags: `{' '.join(summary['train_args'])}`\n"


def run_all(args: MultirunArguments, forwarded: Sequence[str]) -> dict:
    """Check everything, run every (split, seed), write summary.json/.md; return the summary."""
    output_dir = os.path.abspath(args.output_dir)
    check_output_dir(output_dir, args.overwrite_output_dir)
    seeds = args.seeds or [DEFAULT_SEED]
    split_ids, task_dir = None, None
    if args.splits_dir:
        split_ids = args.split_ids or find_split_ids(args.splits_dir)
        task_dir = check_split_files(args.splits_dir, split_ids)
        if flag_given(forwarded, "--data_dir"):
            logger.warning("--data_dir after `--` is replaced by each split's data folder in %s/data", output_dir)
    runs = plan_runs(output_dir, seeds, split_ids)
    if args.ensemble and len(runs) < 2:
        raise UserError("needs at least two runs to combine (more --seeds or splits)", "--ensemble")
    if args.overwrite_output_dir:
        clear_previous(output_dir, runs)

    results, seconds = [], []
    for index, run in enumerate(runs, start=1):
        if run.data_dir:
            make_split_data_dir(args.splits_dir, task_dir, run.split, run.data_dir)
        log_path = os.path.join(run.output_dir, "train.log")
        sys.stderr.write(f"[{index}/{len(runs)}] {run.name}: running train.py (log: {log_path})\n")
        sys.stderr.flush()
        seconds.append(run_training(run, train_argv(run, forwarded, args.overwrite_output_dir)))
        results.append(collect_metrics(run.output_dir))
        shown = ", ".join(f"{HEADERS[k]} {_percent(v)}%" for k, v in results[-1].items()) or "no metrics written"
        sys.stderr.write(f"[{index}/{len(runs)}] {run.name}: done in {seconds[-1]:.0f} s: {shown}\n")

    summary = summarize(runs, results, seconds, forwarded)
    if args.ensemble and summary["metrics"]:
        sys.stderr.write(f"[ensemble] combining the {len(runs)} runs (log: "
                         f"{os.path.join(output_dir, ENSEMBLE_DIR, 'ensemble.log')})\n")
        summary["ensemble"] = run_ensemble(runs, forwarded, output_dir)
    if not summary["metrics"]:
        raise UserError("no run wrote eval_results.json or test_results.json; check --do_eval/--do_predict "
                        "(and test.txt) in the train.py flags", os.path.join(output_dir, "runs"))
    table = markdown_table(summary)
    write_json_atomic(os.path.join(output_dir, "summary.json"), summary)
    write_text_atomic(os.path.join(output_dir, "summary.md"), summary_markdown(summary, table))
    write_multirun_card(output_dir, summary)
    sys.stdout.write(table)
    return summary
