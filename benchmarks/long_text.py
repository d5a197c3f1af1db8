"""--long_text: quality of truncate / head_tail / window, and the cost of reading every window.

    python benchmarks/long_text.py quality [--work benchmarks/work/long_text] [--steps 600]
    python benchmarks/long_text.py cost    [--work benchmarks/work/long_text]
    python benchmarks/long_text.py training [--seeds 42 43 44] [--only 128]
    python benchmarks/long_text.py ensembles     # three window models as one (ensemble.py), two trios of seeds
    nice -n 19 python benchmarks/long_text.py quality --model benchmarks/work/proxy/full/proxy \
        --learning_rate 1e-4 --ppt_learning_rate 1e-3 --work benchmarks/work/long_text_proxy \
        --output benchmarks/results_long_text_proxy.json --reuse    # on QUALITY.md section 1's proxy

quality: train.py (train, eval, predict, export) per dataset and mode with the tiny random ERNIE
(2 layers, hidden 64) on the real 40k ERNIE 3.0 vocab, --max_seq_length 128:
  * the hidden-keyword task (utils/testing/synthetic.py write_long_keyword_dataset: the keyword after
    the first 128 tokens, so truncation cannot see it),
  * FewCLUE csldcp (long abstracts, 67 labels) and CAIL2019 divorce (multi-label) from ../shared.
training: --long_text window trained per window (`--window_training window`) against per document
(`document`: the loss on each document's aggregated probabilities, end to end), same steps, same
seed, on the hidden-keyword task at --max_seq_length 128 (600 steps, 300 test documents) and on the
test suite's 40-token copy (tests/conftest.py long_keyword_run and its tiny model: keyword after 32
tokens, 800 steps).
ensembles: ensemble.py over three of `training`'s 128-token window models (seeds 42-44, then 45-47).
cost: texts/s and peak memory (a fresh process per case) of the synthetic task's window export
against its truncate export, on documents of 1, 4 and 16 windows.
Writes benchmarks/results_long_text.json and prints Markdown tables.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from common import read, run  # noqa: E402  (benchmarks/common.py)
SHARED = os.environ.get("PTUNING_SHARED", os.path.join(os.path.dirname(ROOT), "shared"))
VOCAB = os.path.join(SHARED, "vocab", "ernie-3.0-base-zh-vocab.txt")
PY = sys.executable
RESULTS = os.path.join(ROOT, "benchmarks", "results_long_text.json")
MODES = ("truncate", "head_tail", "window")
DATASETS = {  # name: (folder or None for the synthetic task, prompt, extra flags, metric)
    "hidden keyword (synthetic)": (None, "这句话说的水果是", [], "accuracy"),
    "FewCLUE csldcp": (os.path.join(SHARED, "data", "fewclue", "csldcp"), "这篇论文的学科是", [], "macro_f1"),
    "CAIL2019 divorce": (os.path.join(SHARED, "data", "multilabel", "cail2019_divorce"), "这句话包含的要素有",
                         ["--task_type", "multi-label", "--threshold_search", "global"], "micro_f1"),
}


def save(key, value):
    """Set `results[key]` (to `value(old)` when `value` is a function); several benchmark processes may share
    the file, so the read and the write hold a lock."""
    import fcntl

    with open(RESULTS + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = read(RESULTS) if os.path.isfile(RESULTS) else {}
        results[key] = value(results.get(key)) if callable(value) else value
        with open(RESULTS, "w", encoding="utf-8") as fp:
            json.dump(results, fp, ensure_ascii=False, indent=1)


def tiny_model(work):
    model = os.path.join(work, "tiny-ernie-40k")
    if not os.path.isdir(model):
        run([PY, "-m", "utils.tiny_ernie", "--vocab_file", VOCAB, "--output_dir", model],
            os.path.join(work, "build.log"))
    return model


def synthetic_data(work):
    from utils.testing.synthetic import write_long_keyword_dataset

    return write_long_keyword_dataset(os.path.join(work, "hidden-keyword"), hidden=128, tail=40, dev_per_class=16,
                                      test_per_class=100)


def quality(args):
    model = args.model or tiny_model(args.work)
    rows = []
    previous = read(RESULTS).get("quality", {}).get("rows", []) if os.path.isfile(RESULTS) else []
    for name, (data_dir, prompt, flags, metric) in DATASETS.items():
        if args.only and args.only not in name:
            rows += [r for r in previous if r["dataset"] == name]  # kept from the last run
            continue
        data_dir = data_dir or synthetic_data(args.work)
        if not os.path.isdir(data_dir):
            print(f"skipped {name}: {data_dir} missing")
            continue
        for mode in MODES:
            out = os.path.join(args.work, f"{name.split()[0].lower()}-{mode}")
            if args.reuse and os.path.isfile(os.path.join(out, "test_results.json")):
                done = os.path.join(out, "benchmark_seconds.json")   # finished before
                seconds = read(done)["seconds"] if os.path.isfile(done) else 0
            else:
                seconds = run([PY, "train.py", "--model_name_or_path", model, "--data_dir", data_dir, "--output_dir", out,
                               "--overwrite_output_dir", "--prompt", prompt, *flags, "--long_text", mode,
                               "--max_seq_length", "128", "--learning_rate", args.learning_rate,
                               "--ppt_learning_rate", args.ppt_learning_rate,
                               "--max_steps", str(args.steps), "--eval_steps", str(max(1, args.steps // 4)),
                               "--logging_steps", "50", "--per_device_train_batch_size", "8",
                               "--per_device_eval_batch_size", "64", "--do_train", "--do_eval", "--do_predict",
                               "--do_export", "--device", "cpu", "--seed", "42"], os.path.join(out + ".log"))
                with open(os.path.join(out, "benchmark_seconds.json"), "w", encoding="utf-8") as fp:
                    json.dump({"seconds": seconds}, fp)
            test = read(os.path.join(out, "test_results.json"))
            row = {"dataset": name, "mode": mode, "steps": args.steps, "model": model,
                   "learning_rates": [args.learning_rate, args.ppt_learning_rate], "metric": metric, "test": test.get(f"test_{metric}"),
                   "test_accuracy": test.get("test_accuracy"), "texts": test.get("test_samples"),
                   "longer_than_one_window": test.get("test_texts_longer_than_one_window"),
                   "windows_read": test.get("test_windows_read"), "train_eval_predict_export_seconds": round(seconds)}
            rows.append(row)
            print(json.dumps(row, ensure_ascii=False), flush=True)
            save("quality", {"rows": rows, "partial": True})
    save("quality", {"steps": args.steps, "max_seq_length": 128, "rows": rows, "model": model,
                     "date": time.strftime("%Y-%m-%d")})
    print("\n| dataset | metric | " + " | ".join(MODES) + " |\n|---|---|---|---|---|")
    for name in DATASETS:
        by_mode = {r["mode"]: r for r in rows if r["dataset"] == name}
        if by_mode:
            cells = [f"{100 * by_mode[m]['test']:.2f}" if m in by_mode else "" for m in MODES]
            print(f"| {name} | {by_mode[MODES[0]]['metric']} | " + " | ".join(cells) + " |")


TRAINING_TASKS = {  # name: (synthetic data arguments, --max_seq_length, steps, eval steps, eval batch)
    "hidden keyword, 128 tokens": ({"hidden": 128, "tail": 40, "dev_per_class": 16, "test_per_class": 100}, 128, 600,
                                   150, 64),
    "hidden keyword, 40 tokens (the suite's data and model)": ({"hidden": 32, "tail": 12, "test_per_class": 100}, 40,
                                                               800, 80, 32),
}


def suite_model(work):
    """tests/conftest.py's tiny_model_dir: the tiny ERNIE on a vocabulary of the test texts, seed 0."""
    from utils.testing import synthetic
    from utils.testing.tiny_ernie import build_ernie, texts_of_data_dirs, vocab_from_texts

    path = os.path.join(work, "tiny-ernie-suite")
    if not os.path.isdir(path):
        texts = synthetic.vocab_texts() + texts_of_data_dirs([os.path.join(ROOT, "data", "example")]) + [
            "这条新闻标题的主题是这条新闻的主题是"]
        build_ernie(path, vocab_from_texts(texts), seed=0)
    return path


def training(args):
    """window vs document training of --long_text window, per task, seed and aggregation (the rows' key)."""
    from utils.testing.synthetic import PROMPT, write_long_keyword_dataset

    for name, (data, length, steps, eval_steps, eval_batch) in TRAINING_TASKS.items():
        if args.only and args.only not in name:
            continue
        model = tiny_model(args.work) if length == 128 else suite_model(args.work)
        data_dir = write_long_keyword_dataset(os.path.join(args.work, f"keyword-{length}"), **data)
        for seed, mode, aggregation in itertools.product(args.seeds, args.trainings, args.aggregations):
            suffix = "" if aggregation == "mean" else f"-{aggregation}"
            out = os.path.join(args.work, f"training-{length}-{mode}-{seed}{suffix}")
            seconds = run([PY, "train.py", "--model_name_or_path", model, "--data_dir", data_dir, "--output_dir", out,
                           "--overwrite_output_dir", "--prompt", PROMPT, "--long_text", "window", "--window_training",
                           mode, "--window_aggregation", aggregation, "--max_seq_length", str(length),
                           "--learning_rate", "1e-3", "--ppt_learning_rate", "3e-3", "--max_steps", str(steps),
                           "--eval_steps", str(eval_steps), "--logging_steps", "50", "--save_total_limit", "1",
                           "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", str(eval_batch),
                           "--do_train", "--do_eval", "--do_predict", "--device", "cpu", "--seed", str(seed)],
                          out + ".log")
            test, state = read(os.path.join(out, "test_results.json")), read(os.path.join(out, "trainer_state.json"))
            row = {"task": name, "training": mode, "aggregation": aggregation, "seed": seed, "steps": steps,
                   "max_seq_length": length, "test_accuracy": test["test_accuracy"], "texts": test.get("test_samples"),
                   "windows_read": test.get("test_windows_read"),
                   "best_checkpoint": os.path.basename(state.get("best_model_checkpoint") or ""),
                   "train_eval_predict_seconds": round(seconds)}
            print(json.dumps(row, ensure_ascii=False), flush=True)
            key = (name, mode, aggregation, seed)
            save("training", lambda old, row=row, key=key: {"rows": [r for r in (old or {}).get("rows", []) if (
                r["task"], r["training"], r.get("aggregation", "mean"), r["seed"]) != key] + [row],
                "date": time.strftime("%Y-%m-%d")})
    print(training_table(read(RESULTS)["training"]["rows"]))


def training_table(rows) -> str:
    """The Markdown table of the training rows: test accuracy per task and seed, a column per training
    mode and aggregation, and the mean over the seeds every column has."""
    columns = sorted({(r["training"], r.get("aggregation", "mean")) for r in rows},
                     key=lambda c: (c[0] != "window", c[1] != "mean", c))
    lines = ["| task | seed | " + " | ".join(f"{t} ({a})" for t, a in columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    for task in dict.fromkeys(r["task"] for r in rows):
        cells = {(r["training"], r.get("aggregation", "mean"), r["seed"]): r["test_accuracy"] for r in rows
                 if r["task"] == task}
        seeds = sorted({seed for _, _, seed in cells})
        for seed in seeds:
            values = [cells.get((*c, seed)) for c in columns]
            lines.append(f"| {task} | {seed} | " + " | ".join("" if v is None else f"{100 * v:.2f}" for v in values)
                         + " |")
        means = [[cells[(*c, seed)] for seed in seeds if (*c, seed) in cells] for c in columns]
        if len(seeds) > 1:
            lines.append(f"| {task} | mean of {len(seeds)} | " + " | ".join(
                f"**{100 * sum(v) / len(v):.2f}**" if len(v) == len(seeds) else "" for v in means) + " |")
    return "\n".join(lines)


def window_agreement(export, data_dir):
    """How the members read the test documents' windows, those with the keyword and those without (filler
    only): how often all members choose the same label, their mean top probability, the ensemble's."""
    import numpy as np

    from utils.deploy.format import MEMBER_OUTPUT
    from utils.deploy.predictor import ExportedClassifier
    from utils.testing.synthetic import KEYWORDS

    model = ExportedClassifier(export, num_threads=2)
    with open(os.path.join(data_dir, "test.txt"), encoding="utf-8") as fp:
        documents = [{"text_a": line.split("\t")[0]} for line in fp.read().splitlines() if line]
    inputs, _ = model.preprocessor.split(documents)
    logits = model.run_outputs(model.preprocessor.encode(inputs), (MEMBER_OUTPUT,))[MEMBER_OUTPUT]
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)                                  # [windows, members, labels]
    keyword = np.array([any(word in x["text_a"] for word, _ in KEYWORDS.values()) for x in inputs])
    choice = probs.argmax(-1)
    agree, member_top, ensemble_top = (choice == choice[:, :1]).all(1), probs.max(-1).mean(1), probs.mean(1).max(-1)
    return {"test_windows": len(inputs), "windows_with_keyword": int(keyword.sum()), "members_agree": {
        "keyword": float(agree[keyword].mean()), "filler": float(agree[~keyword].mean())},
        "members_top_probability": {"keyword": float(member_top[keyword].mean()),
                                    "filler": float(member_top[~keyword].mean())},
        "ensemble_top_probability": {"keyword": float(ensemble_top[keyword].mean()),
                                     "filler": float(ensemble_top[~keyword].mean())}}


# Fixed before the first ensemble ran (QUALITY.md section 5): the table's seeds, then three fresh ones.
ENSEMBLE_TRIOS = ((42, 43, 44), (45, 46, 47))


def ensembles(args):
    """ensemble.py over three --long_text window models of the 128-token hidden-keyword task (trained per
    window, mean aggregation, the training table's setting and 600 steps; the members are `training`'s runs,
    trained here when missing), each trio of ENSEMBLE_TRIOS: the ensemble's test accuracy beside its members'."""
    name = "hidden keyword, 128 tokens"
    def member(seed):
        return os.path.join(args.work, f"training-128-window-{seed}")

    seeds = sorted({seed for trio in ENSEMBLE_TRIOS for seed in trio})
    missing = [seed for seed in seeds if not os.path.isfile(os.path.join(member(seed), "test_results.json"))]
    if missing:
        training(argparse.Namespace(**{**vars(args), "only": "128", "seeds": missing, "trainings": ["window"],
                                       "aggregations": ["mean"]}))
    rows = []
    for trio in ENSEMBLE_TRIOS:
        out = os.path.join(args.work, "ensemble-128-" + "-".join(map(str, trio)))
        seconds = run([PY, "ensemble.py", "--members", *[member(seed) for seed in trio], "--output_dir", out,
                       "--overwrite_output_dir", "--data_dir", os.path.join(args.work, "keyword-128"),
                       "--do_eval", "--do_predict"], out + ".log")
        metrics = read(os.path.join(out, "ensemble.json"))["metrics"]
        row = {"task": name, "seeds": list(trio), "test_accuracy": metrics["test"]["ensemble"]["accuracy"],
               "members_test_accuracy": [m["accuracy"] for m in metrics["test"]["members"]],
               "dev_accuracy": metrics["eval"]["ensemble"]["accuracy"],
               "members_dev_accuracy": [m["accuracy"] for m in metrics["eval"]["members"]],
               "export_and_evaluate_seconds": round(seconds), **window_agreement(os.path.join(out, "export"),
                                                                                 os.path.join(args.work, "keyword-128"))}
        rows.append(row)
        print(json.dumps(row), flush=True)
        save("ensembles", {"rows": rows, "date": time.strftime("%Y-%m-%d")})


COST_CASE = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
from utils.deploy.predictor import ExportedClassifier
model = ExportedClassifier({export!r}, num_threads=1)
texts = [{{"text_a": t}} for t in json.load(open({texts!r}, encoding="utf-8"))]
model.logits(texts[:2], batch_size=32, progress=False)
best = 0.0
for _ in range(3):
    start = time.perf_counter()
    model.logits(texts, batch_size=32, progress=False)
    best = max(best, len(texts) / (time.perf_counter() - start))
print(json.dumps({{"texts_per_second": round(best, 1), "peak_rss_mb": round(resource.getrusage(
    resource.RUSAGE_SELF).ru_maxrss / 1024), "inputs_per_text": model.window_counts.windows / max(1, model.window_counts.texts)}}))
"""


def cost(args):
    import random

    from utils.testing.synthetic import FILLER

    exports = {mode: os.path.join(args.work, f"hidden-{mode}", "export") for mode in ("truncate", "window")}
    for path in exports.values():
        if not os.path.isdir(path):
            raise SystemExit(f"{path} missing: run `python benchmarks/long_text.py quality` first")
    window, stride = 128 - 11, (128 - 11) // 2     # text tokens per input beside the prompt; the default stride
    rng = random.Random(0)
    rows = []
    for windows in (1, 4, 16):
        length = window if windows == 1 else window + (windows - 1) * stride
        texts_path = os.path.join(args.work, f"cost-{windows}.json")
        with open(texts_path, "w", encoding="utf-8") as fp:
            json.dump(["".join(rng.choice(FILLER) for _ in range(length)) for _ in range(args.texts)], fp,
                      ensure_ascii=False)
        for mode, export in exports.items():
            out = subprocess.run([PY, "-c", COST_CASE.format(root=ROOT, export=export, texts=texts_path)],
                                 capture_output=True, text=True, cwd=ROOT)
            if out.returncode:
                raise SystemExit(out.stderr)
            row = {"document_windows": windows, "tokens": length, "mode": mode, **json.loads(out.stdout.splitlines()[-1])}
            rows.append(row)
            print(json.dumps(row), flush=True)
    save("cost", {"texts": args.texts, "threads": 1, "max_seq_length": 128, "rows": rows,
                  "date": time.strftime("%Y-%m-%d")})


def main() -> int:
    global RESULTS
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=("quality", "cost", "training", "ensembles"))
    parser.add_argument("--work", default=os.path.join(ROOT, "benchmarks", "work", "long_text"))
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--texts", type=int, default=128)
    parser.add_argument("--output", default=RESULTS, help="the results JSON (default benchmarks/results_long_text.json)")
    parser.add_argument("--only", help="run only the datasets (tasks) whose name contains this (keep the others' rows)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42], help="training: the seeds (default 42)")
    parser.add_argument("--trainings", nargs="+", default=["window", "document"], choices=("window", "document"),
                        help="training: the --window_training modes (default both)")
    parser.add_argument("--aggregations", nargs="+", default=["mean"], choices=("mean", "max", "vote"),
                        help="training: the --window_aggregation of each model (default mean)")
    parser.add_argument("--model", help="quality: the model to train from (default: the tiny random ERNIE on the "
                                        "40k vocab, built in --work); e.g. section 1's proxy, "
                                        "benchmarks/work/proxy/full/proxy, with --output and --work of its own")
    parser.add_argument("--learning_rate", default="1e-3", help="quality: train.py's (default 1e-3: the tiny model's)")
    parser.add_argument("--ppt_learning_rate", default="3e-3", help="quality: train.py's (default 3e-3)")
    parser.add_argument("--reuse", action="store_true",
                        help="quality: keep a run whose test_results.json exists (an interrupted run continues)")
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    RESULTS = args.output
    {"quality": quality, "cost": cost, "training": training, "ensembles": ensembles}[args.part](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
