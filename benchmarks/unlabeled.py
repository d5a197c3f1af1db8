"""Benchmarks of the unlabeled-data capabilities (issue 12): ratios measured side by side.

    python benchmarks/unlabeled.py --only pretrain    # pretrain.py vs a bare paddlenlp MLM loop (throughput)
    python benchmarks/unlabeled.py --only student     # a distilled ERNIE-3.0-micro student vs its base teacher
    python benchmarks/unlabeled.py                    # both

Needs ../shared (tnews texts, the real ERNIE 3.0 vocab); models and runs are cached in
benchmarks/work/unlabeled/ (git-ignored). Writes benchmarks/results_unlabeled.json and prints a
Markdown table. The models are random-initialised real architectures (pretrained ERNIE cannot be
downloaded here): the speed ratios are the architectures', and agreement numbers say how closely
the student follows its teacher, not how accurate either is.

* pretrain: the same ERNIE-3.0-mini architecture, corpus, masking (utils/training/pretraining.py's dataset
  and collator), batch, optimizer (AdamW, grad-norm clip 1.0) and number of steps; pretrain.py's
  Trainer-measured samples/s (train_runtime, no checkpoint inside the timed steps) against a bare
  loop (DataLoader -> forward -> backward -> step) timed the same way. Median of --repeats.
* student: an ERNIE-3.0-base teacher (a short train.py run on tnews, exported) and an
  ERNIE-3.0-micro student distilled from the teacher's export on 2000 unlabeled.txt texts; both
  exports classify tnews test.txt (2010 texts) with infer.py (fp32, --threads), timed end to end
  by infer.py's own summary (texts/s), and the student's argmax agreement with the teacher.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SHARED = os.environ.get("PTUNING_SHARED", os.path.join(os.path.dirname(ROOT), "shared"))
TNEWS = os.path.join(SHARED, "data", "fewclue", "tnews")
VOCAB = os.path.join(SHARED, "vocab", "ernie-3.0-base-zh-vocab.txt")
PY = sys.executable
PROMPT = "这条新闻标题的主题是"


def run(command, **kwargs):
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                            env=dict(os.environ, PTUNING_OFFLINE="1"), **kwargs)
    if result.returncode != 0:
        sys.stderr.write(result.stdout[-3000:] + result.stderr[-3000:])
        raise SystemExit(f"failed: {' '.join(command)}")
    return result, time.perf_counter() - start


def model(work, preset):
    path = os.path.join(work, preset)
    if not os.path.isdir(path):
        run([PY, "-m", "utils.tiny_ernie", "--output_dir", path, "--preset", preset, "--vocab_file", VOCAB])
    return path


def corpus(work, lines=2000):
    path = os.path.join(work, f"unlabeled_{lines}.txt")
    if not os.path.isfile(path):
        with open(os.path.join(TNEWS, "unlabeled.txt"), encoding="utf-8") as fp:
            texts = [next(fp) for _ in range(lines)]
        with open(path, "w", encoding="utf-8") as fp:
            fp.writelines(texts)
    return path


BARE_LOOP = r'''
import json, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np, paddle
from paddlenlp.transformers import AutoModelForMaskedLM, AutoTokenizer
from paddlenlp.trainer import set_seed
from utils.training.pretraining import CorpusEncoder, MaskedLMCollator, MaskedTextDataset, random_token_ids, read_corpus
model_dir, corpus_file = sys.argv[2], sys.argv[3]
steps, batch, length = (int(v) for v in sys.argv[4:7])
paddle.set_device("cpu")
tokenizer = AutoTokenizer.from_pretrained(model_dir)
texts, _ = read_corpus([corpus_file])
encoder = CorpusEncoder(tokenizer, length, "word")
dataset = MaskedTextDataset([encoder.encode(t) for t in texts], 42, 0.15, tokenizer.mask_token_id,
                            random_token_ids(tokenizer))
set_seed(42)
model = AutoModelForMaskedLM.from_pretrained(model_dir)
model.train()
optimizer = paddle.optimizer.AdamW(learning_rate=5e-5, parameters=model.parameters(), weight_decay=0.0,
                                   grad_clip=paddle.nn.ClipGradByGlobalNorm(1.0))
sampler = paddle.io.BatchSampler(dataset, batch_size=batch, shuffle=True)
loader = paddle.io.DataLoader(dataset, batch_sampler=sampler, collate_fn=MaskedLMCollator(tokenizer.pad_token_id))
start, done = time.perf_counter(), 0
while done < steps:
    for inputs in loader:
        loss = model(**inputs)[0]
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
        done += 1
        if done == steps:
            break
seconds = time.perf_counter() - start
print(json.dumps({"samples_per_second": steps * batch / seconds, "seconds": seconds}))
'''


def pretrain_overhead(work, repeats, steps=24, batch=16, length=64):
    mini = model(work, "ernie-3.0-mini-zh")
    texts = corpus(work)
    ours, bare = [], []
    for repeat in range(repeats):
        out = os.path.join(work, "pretrain-run")
        run([PY, "pretrain.py", "--model_name_or_path", mini, "--input_file", texts, "--output_dir", out,
             "--overwrite_output_dir", "--max_seq_length", str(length), "--per_device_train_batch_size", str(batch),
             "--learning_rate", "5e-5", "--max_steps", str(steps), "--save_steps", "100000", "--logging_steps",
             "100000", "--device", "cpu", "--seed", "42"])
        with open(os.path.join(out, "train_results.json"), encoding="utf-8") as fp:
            ours.append(json.load(fp)["train_samples_per_second"])
        result, _ = run([PY, "-c", BARE_LOOP, ROOT, mini, texts, str(steps), str(batch), str(length)])
        bare.append(json.loads(result.stdout.strip().splitlines()[-1])["samples_per_second"])
    mine, theirs = statistics.median(ours), statistics.median(bare)
    return {"model": "ERNIE-3.0-mini architecture (random, real 40k vocab)", "steps": steps, "batch": batch,
            "max_seq_length": length, "pretrain_py_samples_per_second": ours, "bare_loop_samples_per_second": bare,
            "ratio": mine / theirs}


def infer_summary(export, output, threads):
    result, _ = run([PY, "infer.py", "--model_path_prefix", export, "--input_file", os.path.join(TNEWS, "test.txt"),
                     "--output_file", output, "--num_threads", str(threads), "--device", "cpu"])
    return json.loads(result.stdout[result.stdout.index("{"):])


def predicted(path):
    with open(path, encoding="utf-8") as fp:
        rows = [line.rstrip("\n").split("\t") for line in fp][1:]
    return [row[2] for row in rows]


def student_speed(work, repeats, threads):
    base, micro = model(work, "ernie-3.0-base-zh"), model(work, "ernie-3.0-micro-zh")
    teacher = os.path.join(work, "teacher-base")
    common = ["--data_dir", TNEWS, "--prompt", PROMPT, "--max_seq_length", "64", "--per_device_train_batch_size",
              "16", "--per_device_eval_batch_size", "64", "--device", "cpu", "--seed", "42", "--logging_steps", "10"]
    if not os.path.isfile(os.path.join(teacher, "export", "manifest.json")):
        run([PY, "train.py", "--model_name_or_path", base, "--output_dir", teacher, "--overwrite_output_dir",
             "--do_train", "--do_export", "--max_steps", "8", "--learning_rate", "3e-5", *common])
    student = os.path.join(work, "student-micro")
    if not os.path.isfile(os.path.join(student, "export", "manifest.json")):
        run([PY, "train.py", "--model_name_or_path", micro, "--output_dir", student, "--overwrite_output_dir",
             "--teacher", os.path.join(teacher, "export"), "--unlabeled_file", corpus(work), "--do_train",
             "--do_export", "--max_steps", "150", "--learning_rate", "1e-4", "--ppt_learning_rate", "1e-3", *common])
    speeds = {"teacher": [], "student": []}
    for _ in range(repeats):
        for name, run_dir in (("teacher", teacher), ("student", student)):
            summary = infer_summary(os.path.join(run_dir, "export"), os.path.join(work, f"{name}.tsv"), threads)
            speeds[name].append(summary["texts_per_second"])
    teacher_labels, student_labels = predicted(os.path.join(work, "teacher.tsv")), predicted(os.path.join(work,
                                                                                                     "student.tsv"))
    agreement = sum(a == b for a, b in zip(teacher_labels, student_labels)) / len(teacher_labels)
    distinct = len(set(teacher_labels))
    return {"teacher": "ERNIE-3.0-base architecture, 8 train.py steps on tnews (random init)",
            "student": "ERNIE-3.0-micro architecture distilled from the teacher's export on 2000 unlabeled.txt texts, "
                       "150 steps", "texts": len(teacher_labels), "threads": threads,
            "teacher_texts_per_second": speeds["teacher"], "student_texts_per_second": speeds["student"],
            "speedup": statistics.median(speeds["student"]) / statistics.median(speeds["teacher"]),
            "argmax_agreement": agreement, "labels_the_teacher_predicts": distinct}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("pretrain", "student"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work_dir", default=os.path.join(ROOT, "benchmarks", "work", "unlabeled"))
    args = parser.parse_args()
    os.makedirs(args.work_dir, exist_ok=True)
    path = os.path.join(ROOT, "benchmarks", "results_unlabeled.json")
    results = {}
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as fp:
            results = json.load(fp)
    if args.only in (None, "pretrain"):
        results["pretrain_overhead"] = pretrain_overhead(args.work_dir, args.repeats)
    if args.only in (None, "student"):
        results["student_speed"] = student_speed(args.work_dir, args.repeats, args.threads)
    results["date"] = time.strftime("%Y-%m-%d")
    with open(path, "w", encoding="utf-8") as fp:
        json.dump(results, fp, indent=2)
    if "pretrain_overhead" in results:
        p = results["pretrain_overhead"]
        print(f"| pretrain.py vs bare MLM loop | {statistics.median(p['pretrain_py_samples_per_second']):.1f} / "
              f"{statistics.median(p['bare_loop_samples_per_second']):.1f} samples/s | {p['ratio']:.2f} |")
    if "student_speed" in results:
        s = results["student_speed"]
        print(f"| micro student vs base teacher, infer.py | {statistics.median(s['student_texts_per_second']):.1f} / "
              f"{statistics.median(s['teacher_texts_per_second']):.1f} texts/s | {s['speedup']:.2f}x | agreement "
              f"{s['argmax_agreement']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
