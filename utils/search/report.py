"""What a search leaves: the best configuration as a train.py command, the trials table, plots, search.json.

    OUTPUT_DIR/best_command.txt           train.py with the best trial's flags and its first run's seed and
                                          data folder, into OUTPUT_DIR/best: it reproduces that run's dev metric
    OUTPUT_DIR/best_multirun_command.txt  multirun.py over the same seeds or splits: mean ± std again
    OUTPUT_DIR/trials.tsv                 one row per trial: number, state, value, mean, std, runs, parameters,
                                          seconds, folder, note
    OUTPUT_DIR/optimization_history.png   Optuna's optimisation history; param_importances.png (fANOVA) once
                                          two trials completed with different values
    OUTPUT_DIR/search.json                the study, the best trial and the search's cost
    <best trial's run>/search.json        the same record, so that run's model card names the search that chose it
"""
from __future__ import annotations

import json
import logging
import os
import shlex
import warnings
from typing import Any, Dict, List, Optional

from ..errors import UserError
from ..export.card import SEARCH_RECORD_FILE, write_run_card
from ..files import write_json_atomic, write_text_atomic
from ..rundir.record import command_line
from .objective import TRIALS_DIR
from .space import LABEL_WORDS, Space

logger = logging.getLogger(__name__)

BEST_COMMAND_FILE = "best_command.txt"
BEST_MULTIRUN_FILE = "best_multirun_command.txt"
TRIALS_FILE = "trials.tsv"
HISTORY_PLOT = "optimization_history.png"
IMPORTANCE_PLOT = "param_importances.png"
BEST_DIR = "best"
# What a chosen run's search.json (and so its model card) says: the search, not its whole space.
RUN_RECORD_KEYS = ("study", "storage", "search_dir", "objective", "best_trial", "value", "mean", "std", "params",
                   "trials")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value).replace("\t", " ").replace("\n", " ")


def trials_table(study, space: Space) -> str:
    """trials.tsv: every trial of the study, in number order."""
    names = space.names()
    header = ["trial", "state", "value", "mean", "std", "runs", *names, "seconds", "folder", "note"]
    lines = ["\t".join(header)]
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        attrs = t.user_attrs
        row = [t.number, t.state.name.lower(), t.value, attrs.get("mean"), attrs.get("std"), attrs.get("n"),
               *[t.params.get(n) for n in names], attrs.get("seconds"),
               attrs.get("runs") and os.path.dirname(os.path.dirname(attrs["runs"][0]["output_dir"])),
               attrs.get("note", "")]
        lines.append("\t".join(_cell(v) for v in row))
    return "\n".join(lines) + "\n"


def best_trial(study):
    """The completed trial with the highest value, None before any completed."""
    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    return max(done, key=lambda t: (t.value, -t.number)) if done else None


def best_command(output_dir: str, trial) -> str:
    """train.py's command line of the best trial's first run, into OUTPUT_DIR/best."""
    from ..training.multirun import without_flag

    argv = without_flag(trial.user_attrs["runs"][0]["argv"], "--output_dir")
    return command_line("train.py", argv + ["--output_dir", os.path.join(output_dir, BEST_DIR)])


def best_multirun_command(output_dir: str, trial, args) -> str:
    flags = trial.user_attrs["train_flags"]
    runs = trial.user_attrs["runs"]
    head = ["--output_dir", os.path.join(output_dir, "best_multirun")]
    if args.splits_dir:
        head += ["--splits_dir", args.splits_dir, "--split_ids", *[str(i) for i in sorted({r["split"] for r in runs})]]
    head += ["--seeds", *[str(s) for s in args.seeds]]
    if LABEL_WORDS in trial.params and args.splits_dir:
        return ("# the label words searched are in each split's label.txt; multirun.py copies the task's own "
                f"label.txt: write {json.dumps(json.loads(trial.params[LABEL_WORDS]), ensure_ascii=False)} into "
                f"{os.path.dirname(os.path.abspath(args.splits_dir))}/label.txt first\n"
                + shlex.join(["python", "multirun.py", *head, "--", *flags]))
    return shlex.join(["python", "multirun.py", *head, "--", *flags])


def search_record(study, trial, args, storage_url: str, space: Space) -> Dict[str, Any]:
    """search.json: what chose the configuration, and what the search cost."""
    trials = study.get_trials(deepcopy=False)
    seconds = sum(t.user_attrs.get("seconds") or 0 for t in trials)
    return {"study": args.study_name, "storage": storage_url, "search_dir": os.path.abspath(args.output_dir),
            "objective": f"{args.metric} mean - std over " + (f"splits {args.split_ids or 'all'} x seeds {args.seeds}"
                                                              if args.splits_dir else f"seeds {args.seeds}"),
            "best_trial": trial.number, "value": trial.value, "mean": trial.user_attrs.get("mean"),
            "std": trial.user_attrs.get("std"), "params": trial.params,
            "trials": {state: sum(1 for t in trials if t.state.name == state)
                       for state in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")},
            "train_seconds": round(seconds, 1), "space": json.loads(space.fingerprint())}


def mark_best_runs(output_dir: str, study, best, record: Dict[str, Any]) -> None:
    """search.json beside each of the best trial's runs (its card rewritten to name the search); removed
    from the runs of every other trial (a resumed search may have found a better one)."""
    chosen = {run["output_dir"] for run in best.user_attrs.get("runs") or []} if best is not None else set()
    for trial in study.get_trials(deepcopy=False):
        for run in trial.user_attrs.get("runs") or []:
            path = os.path.join(run["output_dir"], SEARCH_RECORD_FILE)
            if best is not None and trial.number == best.number:
                write_json_atomic(path, {key: record[key] for key in RUN_RECORD_KEYS})
            elif run["output_dir"] in chosen:
                continue  # a repeat of the best configuration names the best trial's runs: they stay marked
            elif os.path.isfile(path):
                os.remove(path)
            else:
                continue
            if os.path.isdir(run["output_dir"]):
                write_run_card(run["output_dir"], run["output_dir"])


def plot(study, output_dir: str) -> List[str]:
    """Optimisation history and parameter importances as PNG (what Optuna can draw yet)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    written = []
    for name, draw in ((HISTORY_PLOT, ovm.plot_optimization_history), (IMPORTANCE_PLOT, ovm.plot_param_importances)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna's "experimental" warnings
                axes = draw(study)
            figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
            figure.tight_layout()
            figure.savefig(os.path.join(output_dir, name), dpi=100)
            plt.close(figure)
            written.append(name)
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:  # too few completed trials to draw
            logger.info("%s not drawn yet: %s", name, exc)
    return written


def write_outputs(study, space: Space, args, storage_url: str) -> Optional[Dict[str, Any]]:
    """Every output file, from the study as it is now (any worker's trials); the record, or None before a
    trial completed."""
    output_dir = os.path.abspath(args.output_dir)
    write_text_atomic(os.path.join(output_dir, TRIALS_FILE), trials_table(study, space))
    best = best_trial(study)
    if best is None:
        mark_best_runs(output_dir, study, None, {})
        return None
    record = search_record(study, best, args, storage_url, space)
    record["plots"] = plot(study, output_dir)
    record["best_command"] = best_command(output_dir, best)
    write_text_atomic(os.path.join(output_dir, BEST_COMMAND_FILE), record["best_command"] + "\n")
    write_text_atomic(os.path.join(output_dir, BEST_MULTIRUN_FILE), best_multirun_command(output_dir, best, args)
                      + "\n")
    write_json_atomic(os.path.join(output_dir, SEARCH_RECORD_FILE), record)
    mark_best_runs(output_dir, study, best, record)
    return record


def summary_text(record: Optional[Dict[str, Any]], output_dir: str) -> str:
    if record is None:
        raise UserError("no trial completed (see trials.tsv for why each stopped)", os.path.join(output_dir,
                                                                                                 TRIALS_FILE))
    std = record["std"] or 0.0
    return (f"best trial {record['best_trial']}: mean - std {record['value']:.4f} (mean {record['mean']:.4f}, "
            f"std {std:.4f}); trials {record['trials']}; training {record['train_seconds']:.0f} s\n"
            f"best command ({os.path.join(output_dir, BEST_COMMAND_FILE)}):\n  {record['best_command']}\n")


__all__ = ["write_outputs", "summary_text", "TRIALS_DIR"]
