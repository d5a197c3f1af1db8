"""select.py against infer.py on the same export: texts per second side by side, and peak memory
(RSS of the whole process) at 20k and 1M texts.

    python benchmarks/select_speed.py --model_path_prefix checkpoints/export           # your export
    python benchmarks/select_speed.py                                                   # builds the tiny one

Without --model_path_prefix it trains and exports the tiny random ERNIE on the keyword task
(utils/testing; hidden 64, 2 layers) in benchmarks/work/select/ (git-ignored). Input: synthetic
keyword-task texts of 3 to 10 characters (utils/testing/synthetic.py), written once. Speed: infer.py and
select.py --strategy entropy (and hybrid) run as separate processes alternately on the same file,
--repeats times each; texts/s = texts / wall time of the process's own scoring (each prints it in
its summary: infer.py's `texts_per_second`, select.py's), median of the repeats. Memory: peak RSS
(os.wait4's ru_maxrss) of select.py on 20k and on 1M texts, per strategy. Writes
benchmarks/results_select.json and prints a Markdown table.
"""
import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
WORK = os.path.join(ROOT, "benchmarks", "work", "select")
PY = sys.executable


def tiny_export() -> str:
    export = os.path.join(WORK, "run", "export")
    if os.path.isfile(os.path.join(export, "manifest.json")):
        return export
    code = ("import sys; sys.path.insert(0, 'benchmarks'); from active_learning import build_tiny, train_export; "
            f"tiny = build_tiny({WORK!r}); from utils.testing.synthetic import write_keyword_dataset; "
            f"data = write_keyword_dataset({os.path.join(WORK, 'data')!r}); "
            f"train_export(tiny, data, {os.path.join(WORK, 'run')!r}, steps=160, seed=42)")
    subprocess.run([PY, "-c", code], cwd=ROOT, check=True)
    return export


def texts_file(n: int) -> str:
    from utils.testing.synthetic import KEYWORDS, make_text

    path = os.path.join(WORK, f"texts_{n}.txt")
    if not os.path.isfile(path):
        rng = random.Random(n)
        words = [w for w, _ in KEYWORDS.values()]
        with open(path + ".tmp", "w", encoding="utf-8") as fp:
            for _ in range(n):
                fp.write(make_text(rng, rng.choice(words)) + "\n")
        os.replace(path + ".tmp", path)
    return path


def run(argv):
    """`(summary, peak RSS in MB)` of one script run."""
    process = subprocess.Popen([PY, *argv], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise SystemExit(f"{argv[0]} failed ({process.returncode})")
    return json.loads(out), round(usage.ru_maxrss / 1024, 1)


def speed(export: str, n: int, repeats: int, threads: int) -> dict:
    path = texts_file(n)
    common = ["--model_path_prefix", export, "--input_file", path, "--device", "cpu", "--num_threads", str(threads)]
    rates = {"infer.py": [], "select.py entropy": [], "select.py hybrid": []}
    for _ in range(repeats):
        rates["infer.py"].append(run(["infer.py", *common, "--output_file", os.path.join(WORK, "out.tsv")])[0]
                                 ["texts_per_second"])
        for strategy in ("entropy", "hybrid"):
            rates[f"select.py {strategy}"].append(run(["select.py", *common, "--k", "100", "--strategy", strategy,
                                                       "--output_file", os.path.join(WORK, "picks.tsv")])[0]
                                                  ["texts_per_second"])
    medians = {name: statistics.median(values) for name, values in rates.items()}
    return {"texts": n, "repeats": repeats, "threads": threads, "texts_per_second": rates, "median": medians,
            "ratio_to_infer": {name: round(v / medians["infer.py"], 3) for name, v in medians.items()}}


def memory(export: str, sizes, threads: int) -> dict:
    out = {}
    for strategy in ("entropy", "hybrid"):
        for n in sizes:
            summary, rss = run(["select.py", "--model_path_prefix", export, "--input_file", texts_file(n), "--k", "100",
                                "--strategy", strategy, "--device", "cpu", "--num_threads", str(threads),
                                "--output_file", os.path.join(WORK, "picks.tsv")])
            out[f"{strategy} {n}"] = {"texts": n, "strategy": strategy, "peak_rss_mb": rss,
                                      "texts_per_second": summary["texts_per_second"],
                                      "candidates_held_peak": summary["candidates_held_peak"]}
            print(json.dumps(out[f"{strategy} {n}"]), flush=True)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_path_prefix")
    parser.add_argument("--texts", type=int, default=20000, help="texts of the speed comparison")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory_sizes", type=int, nargs="*", default=[20000, 1000000])
    parser.add_argument("--only", choices=["speed", "memory"])
    args = parser.parse_args()
    os.makedirs(WORK, exist_ok=True)
    export = args.model_path_prefix or tiny_export()
    path = os.path.join(ROOT, "benchmarks", "results_select.json")
    results = json.load(open(path)) if os.path.isfile(path) else {}
    results.update(export=export, date=time.strftime("%Y-%m-%d"))
    if args.only != "memory":
        results["speed"] = speed(export, args.texts, args.repeats, args.threads)
        print(json.dumps(results["speed"], indent=1), flush=True)
    if args.only != "speed":
        results["memory"] = memory(export, args.memory_sizes, args.threads)
    with open(path, "w") as fp:
        json.dump(results, fp, indent=1)


if __name__ == "__main__":
    main()
