"""The knowledge-bearing proxy (issue 12, part 4): a small ERNIE-3.0 pretrained from scratch with
pretrain.py on FewCLUE tnews texts, then every training variant over tnews' five few-shot splits.

    python benchmarks/proxy_quality.py                 # the full measurement (hours on 2 CPU cores)
    python benchmarks/proxy_quality.py --smoke         # the same pipeline with tiny step counts (minutes)
    nice -n 19 python benchmarks/proxy_quality.py --build_only   # steps 1-3 only: the proxy model, for the
                                                                 # other benchmarks' --model flags

Steps (each cached in --work_dir, so an interrupted run continues where it stopped; pretraining
resumes from its last checkpoint):

1. corpus: tnews unlabeled.txt + the texts of test.txt (labels cut off), dev.txt texts held out;
2. the random model: `python -m utils.tiny_ernie --preset PRESET --vocab_file <real 40k vocab>`;
3. the proxy: `pretrain.py` on the corpus from the random model (whole-word masking);
4. on the proxy, over splits 0-4 (multirun.py --splits_dir): `--method finetune`, P-tuning (the
   default), P-tuning `--freeze_plm`, and the 5-split ensemble of the P-tuning runs (--ensemble);
   the random model with P-tuning as the floor;
5. self-training from the ensemble: per split, a student on the proxy with the ensemble as
   --teacher on unlabeled.txt (--min_confidence);
6. QUALITY.md's table: test accuracy and macro-F1, mean ± sample std over the splits
   (benchmarks/results_proxy.json holds every number).
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("PTUNING_SHARED", os.path.join(os.path.dirname(ROOT), "shared"))
TNEWS = os.path.join(SHARED, "data", "fewclue", "tnews")
VOCAB = os.path.join(SHARED, "vocab", "ernie-3.0-base-zh-vocab.txt")
PY = sys.executable
PROMPT = "这条新闻标题的主题是"


def run(command, log):
    os.makedirs(os.path.dirname(log), exist_ok=True)
    sys.stderr.write(f"$ {' '.join(command)}\n  (log: {log})\n")
    start = time.time()
    with open(log, "w", encoding="utf-8") as fp:
        code = subprocess.run(command, cwd=ROOT, stdout=fp, stderr=subprocess.STDOUT,
                              env=dict(os.environ, PTUNING_OFFLINE="1")).returncode
    if code != 0:
        raise SystemExit(f"failed ({code}); see {log}")
    return round(time.time() - start, 1)


def run_all(jobs, workers):
    """`{name: (command, log)}` run `workers` at a time; `{name: seconds}`. The first failure stops it."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max(1, workers)) as pool:
        futures = {name: pool.submit(run, command, log) for name, (command, log) in jobs.items()}
        return {name: future.result() for name, future in futures.items()}


def texts_of(path):
    with open(path, encoding="utf-8") as fp:
        return [line.rstrip("\n").split("\t")[0] for line in fp if line.strip()]


def settings(smoke):
    if smoke:
        return {"pretrain_steps": 20, "train_steps": 20, "eval_steps": 10, "student_steps": 20, "unlabeled": 300,
                "student_unlabeled": 300}
    # ~1 h of pretraining on an idle 2-core machine (ERNIE-3.0-micro, batch 32 x 64 tokens: ~3 s a
    # step); 200 steps of batch 16 are 13 epochs of a 240-text tnews split; students see 5000 of the
    # first unlabeled texts with the gold ones for 200 steps (the runs after pretraining: ~1.3 h with --jobs 2)
    return {"pretrain_steps": 1200, "train_steps": 200, "eval_steps": 50, "student_steps": 200, "unlabeled": 20000,
            "student_unlabeled": 5000}


def train_flags(steps, eval_steps):
    return ["--prompt", PROMPT, "--max_seq_length", "64", "--learning_rate", "1e-4", "--ppt_learning_rate", "1e-3",
            "--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "64", "--max_steps", str(steps),
            "--eval_steps", str(eval_steps), "--logging_steps", str(eval_steps), "--do_train", "--do_eval",
            "--do_predict", "--device", "cpu"]


def summary_of(out):
    with open(os.path.join(out, "summary.json"), encoding="utf-8") as fp:
        return json.load(fp)


def stats(values):
    values = np.asarray(values, dtype=np.float64)
    return {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else None,
            "n": int(len(values)), "values": values.tolist()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="ernie-3.0-micro-zh")
    parser.add_argument("--work_dir", default=os.path.join(ROOT, "benchmarks", "work", "proxy"))
    parser.add_argument("--smoke", action="store_true", help="tiny step counts: checks the pipeline, measures nothing")
    parser.add_argument("--min_confidence", type=float, default=0.0,
                        help="self-training's filter (default 0: every text, its soft label carries the teacher's "
                             "doubt, as in PET; a 15-class few-shot teacher is rarely above 0.5)")
    parser.add_argument("--split_ids", type=int, nargs="+", help="default: 0 1 2 3 4 (with --smoke: 0 1)")
    parser.add_argument("--jobs", type=int, default=2,
                        help="variants (and students) trained at once; a CPU run of this size keeps one core busy")
    parser.add_argument("--build_only", action="store_true",
                        help="stop after step 3 (the proxy at WORK_DIR/full/proxy); other benchmarks take it as "
                             "their model (run under `nice -n 19` on a shared machine: children inherit it)")
    args = parser.parse_args()
    split_ids = args.split_ids or ([0, 1] if args.smoke else [0, 1, 2, 3, 4])
    cfg = settings(args.smoke)
    work = os.path.join(args.work_dir, "smoke" if args.smoke else "full")
    os.makedirs(work, exist_ok=True)
    seconds = {}

    corpus, held_out = os.path.join(work, "corpus.txt"), os.path.join(work, "dev_texts.txt")
    unlabeled = os.path.join(work, "unlabeled.txt")  # self-training labels these only (no test texts)
    if not os.path.isfile(corpus):
        texts = texts_of(os.path.join(TNEWS, "unlabeled.txt"))[:cfg["unlabeled"]]
        with open(unlabeled, "w", encoding="utf-8") as fp:
            fp.write("\n".join(texts) + "\n")
        with open(corpus, "w", encoding="utf-8") as fp:
            fp.write("\n".join(texts + texts_of(os.path.join(TNEWS, "test.txt"))) + "\n")
        with open(held_out, "w", encoding="utf-8") as fp:
            fp.write("\n".join(texts_of(os.path.join(TNEWS, "dev.txt"))) + "\n")
    random_model = os.path.join(work, "random")
    if not os.path.isdir(random_model):
        run([PY, "-m", "utils.tiny_ernie", "--output_dir", random_model, "--preset", args.preset, "--vocab_file",
             VOCAB],
            os.path.join(work, "logs", "random.log"))
    proxy = os.path.join(work, "proxy")
    if not os.path.isfile(os.path.join(proxy, "pretraining.json")) or \
            not os.path.isfile(os.path.join(proxy, "checkpoint_complete.json")):
        resume = ["--resume_from_checkpoint", proxy] if any(
            n.startswith("checkpoint-") for n in (os.listdir(proxy) if os.path.isdir(proxy) else [])) else []
        seconds["pretrain"] = run(
            [PY, "pretrain.py", "--model_name_or_path", random_model, "--input_file", corpus, "--eval_file", held_out,
             "--output_dir", proxy, "--max_seq_length", "64", "--masking", "word", "--per_device_train_batch_size",
             "32", "--learning_rate", "5e-4", "--warmup_steps", str(cfg["pretrain_steps"] // 20), "--weight_decay",
             "0.01", "--max_steps", str(cfg["pretrain_steps"]), "--save_steps",
             str(max(10, cfg["pretrain_steps"] // 20)), "--logging_steps", "50", "--device", "cpu", "--seed", "42",
             *resume],
            os.path.join(work, "logs", "pretrain.log"))
    if args.build_only:
        print(proxy)
        return 0

    splits = os.path.join(TNEWS, "splits")
    variants = {"finetune": (proxy, ["--method", "finetune"], False),
                "ptuning": (proxy, [], True),
                "ptuning_freeze_plm": (proxy, ["--freeze_plm"], False),
                "random_init_floor": (random_model, [], False)}
    flags = train_flags(cfg["train_steps"], cfg["eval_steps"])
    jobs = {}
    for name, (model, extra, ensemble) in variants.items():
        out = os.path.join(work, name)
        if not os.path.isfile(os.path.join(out, "summary.json")):
            command = [PY, "multirun.py", "--output_dir", out, "--splits_dir", splits, "--split_ids",
                       *map(str, split_ids), "--overwrite_output_dir", *(["--ensemble"] if ensemble else []), "--",
                       "--model_name_or_path", model, *flags, *extra]
            jobs[name] = (command, os.path.join(work, "logs", f"{name}.log"))
    seconds.update(run_all(jobs, args.jobs))

    ensemble_dir = os.path.join(work, "ptuning", "ensemble")
    # the students' unlabeled texts: the first N (the teacher labels each one; 20,000 took ~10 min a student)
    student_unlabeled = os.path.join(work, "unlabeled_students.txt")
    if not os.path.isfile(student_unlabeled):
        with open(student_unlabeled, "w", encoding="utf-8") as fp:
            fp.write("\n".join(texts_of(unlabeled)[:cfg["student_unlabeled"]]) + "\n")
    jobs = {}
    for split in split_ids:
        out = os.path.join(work, "self_training", f"split{split}")
        if not os.path.isfile(os.path.join(out, "test_results.json")):
            data_dir = os.path.join(work, "ptuning", "data", f"split_{split}")
            jobs[f"student{split}"] = (
                [PY, "train.py", "--model_name_or_path", proxy, "--data_dir", data_dir, "--output_dir", out,
                 "--overwrite_output_dir", "--teacher", ensemble_dir, "--unlabeled_file", student_unlabeled,
                 "--min_confidence", str(args.min_confidence), "--seed", "42",
                 *train_flags(cfg["student_steps"], cfg["eval_steps"] * 2)],
                os.path.join(work, "logs", f"student{split}.log"))
    seconds.update(run_all(jobs, args.jobs))
    students = []
    for split in split_ids:
        with open(os.path.join(work, "self_training", f"split{split}", "test_results.json"), encoding="utf-8") as fp:
            students.append(json.load(fp))

    rows = {}
    for name in variants:
        metrics = summary_of(os.path.join(work, name))["metrics"]
        rows[name] = {k: metrics[f"test_{k}"] for k in ("accuracy", "macro_f1")}
    ensemble = summary_of(os.path.join(work, "ptuning"))["ensemble"]
    rows[f"ensemble_of_{len(split_ids)}_ptuning"] = {k: {"mean": ensemble["metrics"][f"test_{k}"], "std": None, "n": 1}
                                     for k in ("accuracy", "macro_f1")}
    rows["self_training_from_ensemble"] = {k: stats([s[f"test_{k}"] for s in students])
                                           for k in ("accuracy", "macro_f1")}
    with open(os.path.join(proxy, "eval_results.json"), encoding="utf-8") as fp:
        pretraining = json.load(fp)
    result = {"date": time.strftime("%Y-%m-%d"), "smoke": args.smoke, "preset": args.preset, "settings": cfg,
              "min_confidence": args.min_confidence, "jobs": args.jobs,
              "pretraining_eval": pretraining, "rows": rows, "seconds": seconds}
    path = os.path.join(ROOT, "benchmarks", "results_proxy_smoke.json" if args.smoke else "results_proxy.json")
    with open(path, "w", encoding="utf-8") as fp:
        json.dump(result, fp, indent=2)
    print("| variant | test accuracy | test macro-F1 | n |\n|---|---|---|---|")
    for name, row in rows.items():
        cells = []
        for key in ("accuracy", "macro_f1"):
            s = row[key]
            cells.append(f"{100 * s['mean']:.2f}" + ("" if s["std"] is None else f" ± {100 * s['std']:.2f}"))
        print(f"| {name} | {cells[0]} | {cells[1]} | {row['accuracy']['n']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
