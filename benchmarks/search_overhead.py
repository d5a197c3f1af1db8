"""search.py's cost: its overhead over plain train.py runs of the same configurations, and pruning's saving.

    python benchmarks/search_overhead.py [--work benchmarks/work/search] [--n_trials 6] [--seeds 1 2]

On the keyword task (utils/testing/synthetic.py) with the tiny random ERNIE, CPU:

1. `search.py --pruning false --n_trials N` over a small space (learning rates and steps as choices): its
   wall time, start to exit, including the checks, the study and the plots;
2. the same configurations as plain train.py runs, one after another: each run's own command, read back
   from the search's trial folders (train.log's first line), into fresh folders;
3. `search.py` with pruning (MedianPruner), same space, sampler seed and budget: its wall time and the
   runs it started, against 1.

Overhead = (1) / (2): target <= 1.1. Writes benchmarks/results_search.json and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SPACE = """learning_rate: {choices: [1.0e-5, 1.0e-3, 3.0e-3]}
ppt_learning_rate: {choices: [1.0e-4, 3.0e-3, 3.0e-2]}
max_steps: {choices: [20, 120]}
"""
TRAIN = ["--prompt", "这句话说的水果是", "--do_train", "--eval_steps", "20", "--logging_steps", "20",
         "--save_total_limit", "1", "--max_seq_length", "40", "--per_device_train_batch_size", "8",
         "--per_device_eval_batch_size", "32"]


def build(work: str):
    from utils.testing import synthetic
    from utils.testing.tiny_ernie import build_ernie, vocab_from_texts

    model = build_ernie(os.path.join(work, "tiny"), vocab_from_texts(synthetic.vocab_texts()), seed=0)
    data = synthetic.write_keyword_dataset(os.path.join(work, "keyword"))
    space = os.path.join(work, "space.yaml")
    with open(space, "w", encoding="utf-8") as fp:
        fp.write(SPACE)
    return model, data, space


def search(work: str, name: str, model: str, data: str, space: str, args, pruning: bool) -> dict:
    out = os.path.join(work, name)
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "search.py", "--output_dir", out, "--n_trials", str(args.n_trials), "--seeds",
               *map(str, args.seeds), "--space", space, "--pruning", str(pruning).lower(), "--",
               "--model_name_or_path", model, "--data_dir", data, *TRAIN]
    start = time.monotonic()
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.monotonic() - start
    record = json.load(open(os.path.join(out, "search.json"), encoding="utf-8"))
    logs = sorted(os.path.join(root, "train.log") for root, _, files in os.walk(os.path.join(out, "trials"))
                  if "train.log" in files)
    return {"wall_seconds": round(wall, 1), "runs": len(logs), "train_seconds": record["train_seconds"],
            "best_value": record["value"], "trials": record["trials"], "logs": logs}


def plain_runs(work: str, logs) -> dict:
    """Each run's own train.py command (train.log's first line), into a fresh folder, one after another."""
    out = os.path.join(work, "plain")
    shutil.rmtree(out, ignore_errors=True)
    start = time.monotonic()
    for index, log in enumerate(logs):
        with open(log, encoding="utf-8") as fp:
            command = shlex.split(fp.readline()[len("$ "):])
        at = command.index("--output_dir")
        command[at + 1] = os.path.join(out, str(index))
        subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return {"wall_seconds": round(time.monotonic() - start, 1), "runs": len(logs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default=os.path.join(ROOT, "benchmarks", "work", "search"))
    parser.add_argument("--n_trials", type=int, default=6)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    model, data, space = build(args.work)
    full = search(args.work, "search-no-pruning", model, data, space, args, pruning=False)
    plain = plain_runs(args.work, full.pop("logs"))
    pruned = search(args.work, "search-pruning", model, data, space, args, pruning=True)
    pruned.pop("logs")
    result = {"date": time.strftime("%Y-%m-%d"), "n_trials": args.n_trials, "seeds": args.seeds, "space": SPACE,
              "search_no_pruning": full, "plain_train_runs": plain, "search_pruning": pruned,
              "overhead": round(full["wall_seconds"] / plain["wall_seconds"], 3),
              "pruning_saving_wall": round(1 - pruned["wall_seconds"] / full["wall_seconds"], 3),
              "pruning_saving_runs": round(1 - pruned["runs"] / full["runs"], 3)}
    with open(os.path.join(ROOT, "benchmarks", "results_search.json"), "w", encoding="utf-8") as fp:
        json.dump(result, fp, indent=2, ensure_ascii=False)
    print("| | runs | wall s | best mean - std |\n|---|---|---|---|")
    print(f"| {args.n_trials} plain train.py runs x {len(args.seeds)} seeds | {plain['runs']} | "
          f"{plain['wall_seconds']} | |")
    print(f"| search.py --pruning false | {full['runs']} | {full['wall_seconds']} | {full['best_value']:.4f} |")
    print(f"| search.py (MedianPruner) | {pruned['runs']} | {pruned['wall_seconds']} | {pruned['best_value']:.4f} |")
    print(f"overhead {result['overhead']}x; pruning saves {100 * result['pruning_saving_runs']:.0f}% of the runs, "
          f"{100 * result['pruning_saving_wall']:.0f}% of the wall time")


if __name__ == "__main__":
    main()
