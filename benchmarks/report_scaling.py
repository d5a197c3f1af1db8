"""Time and memory of `write_classification_report` at N labels; one measurement per process.

    python benchmarks/report_scaling.py --labels 1000 --output_dir DIR

Predictions look like a real many-class task: Zipf-like class sizes (20 examples per class on
average), 60% correct, 28% confused with one of three fixed "neighbour" classes of the gold class,
12% anywhere; label names are Chinese. Prints JSON: seconds, the RSS before the call (numpy,
utils.reporting.reports and sklearn.metrics imported, as in train.py, where paddlenlp has imported sklearn;
matplotlib not yet), the process's peak RSS after it, and their difference (`extra_mb`).
"""
import argparse
import json
import os
import resource
import sys
import time

import numpy as np
import psutil

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.reporting.reports import write_classification_report  # noqa: E402

NAME_CHARS = "体育财经娱乐科技教育汽车房产游戏旅游军事国际农业股票文化故事社区银行医疗购物鑫龘"


def synthetic_predictions(num_labels: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = [f"{i:04d}" + "".join(rng.choice(list(NAME_CHARS), rng.integers(2, 9))) for i in range(num_labels)]
    weights = 1.0 / np.arange(1, num_labels + 1) ** 0.7
    gold = rng.choice(num_labels, size=20 * num_labels, p=weights / weights.sum())
    neighbours = rng.integers(0, num_labels, size=(num_labels, 3))
    draw = rng.random(len(gold))
    predicted = np.where(draw < 0.60, gold,
                         np.where(draw < 0.88, neighbours[gold, rng.integers(0, 3, len(gold))],
                                  rng.integers(0, num_labels, len(gold))))
    return labels, gold, predicted


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", type=int, required=True)
    parser.add_argument("--output_dir", required=True)
    args = parser.parse_args()
    labels, gold, predicted = synthetic_predictions(args.labels)
    os.makedirs(args.output_dir, exist_ok=True)
    process = psutil.Process()
    without_sklearn = process.memory_info().rss
    import sklearn.metrics  # noqa: F401  (already loaded in a training process)

    before = process.memory_info().rss
    start = time.perf_counter()
    write_classification_report(args.output_dir, "test", gold, predicted, labels)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    files = sorted(os.listdir(args.output_dir))
    print(json.dumps({"labels": args.labels, "examples": len(gold), "seconds": seconds,
                      "rss_before_mb": before / 2 ** 20, "peak_mb": peak / 2 ** 20,
                      "extra_mb": (peak - before) / 2 ** 20, "sklearn_import_mb": (before - without_sklearn) / 2 ** 20,
                      "files": files}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
