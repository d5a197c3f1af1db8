"""Multi-label and hierarchical runs on the shared real datasets, end to end, with a tiny random ERNIE.

    python benchmarks/label_sets.py [--work bench-work/label_sets] [--steps 300]

For each dataset (../shared/data/multilabel/cail2019_divorce as --task_type multi-label,
../shared/data/hierarchical/duee as --task_type hierarchical): train.py (train, eval, predict,
export) with the tiny ERNIE (2 layers, hidden 64) built on the real 40k ERNIE 3.0 vocab, then
infer.py on test.txt (its metrics must equal train.py's) and data.txt. Writes
`results_label_sets.json` and prints a Markdown table for BENCHMARKS.md.

The model is random and tiny: the F1 numbers show that the pipeline runs on real data at real
label counts, not what ERNIE 3.0 reaches (upstream, ERNIE-base: CAIL2019 micro/macro-F1
0.784/0.699, DuEE 0.886/0.844).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from common import read, run  # benchmarks/common.py

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("PTUNING_SHARED", os.path.join(os.path.dirname(ROOT), "shared"))
VOCAB = os.path.join(SHARED, "vocab", "ernie-3.0-base-zh-vocab.txt")
PY = sys.executable
DATASETS = (  # name, folder, task type, upstream's prompt
    ("CAIL2019 divorce", os.path.join(SHARED, "data", "multilabel", "cail2019_divorce"), "multi-label",
     "这句话包含的要素有"),
    ("DuEE 1.0 events", os.path.join(SHARED, "data", "hierarchical", "duee"), "hierarchical", "这句话描述的事件是"),
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default=os.path.join(ROOT, "bench-work", "label_sets"))
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--threshold_search", default="global")
    parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "results_label_sets.json"))
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    model = os.path.join(args.work, "tiny-ernie-40k")
    if not os.path.isdir(model):
        run([PY, "-m", "utils.tiny_ernie", "--vocab_file", VOCAB, "--output_dir", model],
            os.path.join(args.work, "build.log"))
    results = []
    for name, data_dir, task_type, prompt in DATASETS:
        out = os.path.join(args.work, task_type)
        seconds = run([PY, "train.py", "--model_name_or_path", model, "--data_dir", data_dir, "--output_dir", out,
                       "--overwrite_output_dir", "--task_type", task_type, "--prompt", prompt,
                       "--threshold_search", args.threshold_search, "--max_seq_length", "128",
                       "--learning_rate", "1e-3", "--ppt_learning_rate", "3e-3", "--max_steps", str(args.steps),
                       "--eval_steps", str(max(1, args.steps // 6)), "--logging_steps", "50",
                       "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "64",
                       "--do_train", "--do_eval", "--do_predict", "--do_export", "--device", "cpu", "--seed", "42"],
                      os.path.join(args.work, f"{task_type}-train.log"))
        infer_seconds = run([PY, "infer.py", "--model_path_prefix", os.path.join(out, "export"), "--input_file",
                             os.path.join(data_dir, "test.txt"), "--output_file", os.path.join(out, "infer_test.tsv"),
                             "--device", "cpu"], os.path.join(args.work, f"{task_type}-infer.log"))
        with open(os.path.join(args.work, f"{task_type}-infer.log"), encoding="utf-8") as fp:
            text = fp.read()
        summary = json.loads(text[text.index("{"):])
        run([PY, "infer.py", "--model_path_prefix", os.path.join(out, "export"), "--data_dir", data_dir,
             "--output_file", os.path.join(out, "infer_data.jsonl"), "--device", "cpu"],
            os.path.join(args.work, f"{task_type}-infer-data.log"))
        dev, test = read(os.path.join(out, "eval_results.json")), read(os.path.join(out, "test_results.json"))
        manifest = read(os.path.join(out, "export", "manifest.json"))
        results.append({
            "dataset": name, "task_type": task_type, "labels": len(manifest["labels"]), "steps": args.steps,
            "threshold_search": args.threshold_search, "thresholds": sorted(set(manifest["thresholds"])),
            "dev": {k[5:]: v for k, v in dev.items() if k.startswith("eval_") and "f1" in k or k == "eval_accuracy"},
            "test": {k[5:]: v for k, v in test.items() if k.startswith("test_") and ("f1" in k or k in (
                "test_accuracy", "test_hamming_loss"))},
            "infer_test": {k: summary[k] for k in ("micro_f1", "macro_f1", "accuracy", "texts_per_second")},
            "infer_equals_train": all(summary[k] == round(test[f"test_{k}"], 4) for k in ("micro_f1", "macro_f1")),
            "parity": [(r["backend"], r["max_abs_diff"]) for r in manifest["parity"]["results"]],
            "train_seconds": round(seconds, 1), "infer_seconds": round(infer_seconds, 1)})
        print(json.dumps(results[-1], ensure_ascii=False), flush=True)
    with open(args.output, "w", encoding="utf-8") as fp:
        json.dump(results, fp, ensure_ascii=False, indent=2)
    print("| dataset | task | labels | dev micro/macro-F1 | test micro/macro-F1 | test exact match | per level (test micro-F1) "
          "| infer.py = train.py |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        levels = ", ".join(f"L{k.split('_')[1]} {v:.3f}" for k, v in r["test"].items()
                           if k.startswith("level_") and k.endswith("micro_f1")) or "–"
        print(f"| {r['dataset']} | {r['task_type']} | {r['labels']} | {r['dev']['micro_f1']:.3f} / "
              f"{r['dev']['macro_f1']:.3f} | {r['test']['micro_f1']:.3f} / {r['test']['macro_f1']:.3f} | "
              f"{r['test']['accuracy']:.3f} | {levels} | {'yes' if r['infer_equals_train'] else 'NO'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
