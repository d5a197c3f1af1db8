"""How should two model workers share the cores? In-process, on bench.py's ERNIE-3.0-base export.

    .venv/bin/python benchmarks/thread_split.py [--variant int8] [--texts 512] [--threads 2]

The ways a lone batch and concurrent batches can be run on `--threads` cores (the choice behind
serve.py `--instances auto`, utils/serving/batcher.py):

* `full`: one session with every thread, one batch at a time (`--instances 1`);
* `split`: one session with threads / 2, two batches at once from two threads (`--instances 2`);
* `shared_full`: one session with every thread, two batches at once (the intra-op pool shared by two
  callers: 3 runnable threads on 2 cores);
and for a lone text, its latency on the full and on the half session.

Batches are tnews test texts in arrival order, 16 per batch (what two workers take from 32
closed-loop clients), cut by length as the service runs them (`run_by_length`). Timings are medians
of `--repeats`; RSS of one session and of two (full + half) in fresh processes.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
TEST = os.path.join(ROOT, "..", "shared", "data", "fewclue", "tnews", "test.txt")
EXPORT = os.path.join(ROOT, "benchmarks", "work", "ckpt-base", "export")

RSS_CHILD = """
import sys, psutil
sys.path.insert(0, sys.argv[1])
from utils.deploy.predictor import ExportedClassifier
n, int8, threads = int(sys.argv[3]), sys.argv[4] == "int8", int(sys.argv[5])
models = [ExportedClassifier(sys.argv[2], num_threads=t, use_int8=int8, allow_spinning=False)
          for t in [threads, max(1, threads // 2)][:n]]
texts = [{"text_a": "今天的天气怎么样" * k} for k in range(1, 9)]
for m in models:
    m.logits(texts, progress=False)
print(psutil.Process().memory_info().rss / 2 ** 20)
"""


def arrival_batches(features, size):
    return [features[i:i + size] for i in range(0, len(features), size)]


def two_workers(models, batches) -> float:
    """Seconds for two threads to run `batches` (alternately taken), thread k on models[k]."""
    from utils.serving.batcher import run_by_length

    lock, queue = threading.Lock(), list(batches)

    def work(model):
        while True:
            with lock:
                if not queue:
                    return
                batch = queue.pop(0)
            run_by_length(model, batch)

    threads = [threading.Thread(target=work, args=(m,)) for m in models]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", choices=("fp32", "int8"), default="int8")
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--lone", type=int, default=60, help="texts timed one at a time")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--export", default=EXPORT)
    args = parser.parse_args()
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    from load import read_texts
    from utils.deploy.predictor import ExportedClassifier
    from utils.serving.batcher import run_by_length

    int8 = args.variant == "int8"
    full = ExportedClassifier(args.export, num_threads=args.threads, use_int8=int8, allow_spinning=False)
    half = ExportedClassifier(args.export, num_threads=max(1, args.threads // 2), use_int8=int8, allow_spinning=False)
    texts = [{"text_a": t} for t in read_texts(TEST)]
    features = full.preprocessor.encode(texts[:args.texts])
    for model in (full, half):
        run_by_length(model, features[:64])  # warm-up
    results = {"variant": args.variant, "threads": args.threads, "texts": len(features), "loadavg": [os.getloadavg()],
               "lone_ms": {"full": [], "half": []}, "texts_per_s": {"full_32": [], "split_16": [], "shared_full_16": []}}
    for _ in range(args.repeats):
        for name, model in (("full", full), ("half", half)):
            times = []
            for feature in features[:args.lone]:
                start = time.perf_counter()
                model.run([feature], batch_size=1)
                times.append(time.perf_counter() - start)
            results["lone_ms"][name].append(1000 * statistics.median(times))
        start = time.perf_counter()
        for batch in arrival_batches(features, 32):
            run_by_length(full, batch)
        results["texts_per_s"]["full_32"].append(len(features) / (time.perf_counter() - start))
        halves = arrival_batches(features, 16)
        results["texts_per_s"]["split_16"].append(len(features) / two_workers([half, half], halves))
        results["texts_per_s"]["shared_full_16"].append(len(features) / two_workers([full, full], halves))
        results["loadavg"].append(os.getloadavg())
    del full, half
    results["rss_mb"] = {}
    for n in (1, 2):
        out = subprocess.run([sys.executable, "-c", RSS_CHILD, ROOT, args.export, str(n), args.variant,
                              str(args.threads)], capture_output=True, text=True, check=True)
        results["rss_mb"][f"{n}_sessions"] = float(out.stdout.strip().splitlines()[-1])
    med = {k: statistics.median(v) for k, v in results["texts_per_s"].items()}
    lone = {k: statistics.median(v) for k, v in results["lone_ms"].items()}
    print(json.dumps(results, indent=1))
    print(f"{args.variant}, {args.threads} threads, medians of {args.repeats}: lone text full {lone['full']:.1f} ms, "
          f"half {lone['half']:.1f} ms ({lone['half'] / lone['full']:.2f}x); texts/s full/32 {med['full_32']:.1f}, "
          f"split/16 {med['split_16']:.1f} ({med['split_16'] / med['full_32']:.3f}x), shared full/16 "
          f"{med['shared_full_16']:.1f} ({med['shared_full_16'] / med['full_32']:.3f}x); RSS 1 session "
          f"{results['rss_mb']['1_sessions']:.0f} MB, full + half {results['rss_mb']['2_sessions']:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
