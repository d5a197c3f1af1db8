"""`make bench`: speed and memory of the deployment path, as ratios measured side by side in one run.

    python benchmarks/bench.py [--repeats 3] [--reference_repeats 2] [--threads 2]
    python benchmarks/bench.py --only reports             # write_classification_report at 15..1000 labels
    python benchmarks/bench.py --only manual_verbalizer   # training step, --verbalizer manual vs soft
    python benchmarks/bench.py --only ray [--repeats 1]   # infer.py --ray on local 1- and 2-node clusters vs local
    python benchmarks/bench.py --only service             # serve.py under load (benchmarks/load.py), its RSS
    python benchmarks/bench.py --only ceiling             # the model's FLOP/s against this machine's measured GEMMs
    python benchmarks/bench.py --memory [--baseline DIR]   # only infer.py's peak RSS, 20k vs 2M lines
    python benchmarks/bench.py --verification EXPORT_DIR   # only the start-up cost of the sha256 checks

Builds the full-size ERNIE-3.0-base architecture with random weights and the real 40k vocab
(../shared/vocab; compute is the real model's), trains it for a handful of steps on FewCLUE tnews
(train.py), exports it (export.py path, with --quantize int8) and the upstream-style graph, then
measures on tnews test.txt (2010 texts) with `--threads` threads. Everything is cached in
benchmarks/work/; results go to benchmarks/results.json and benchmarks/results.md (medians of
`--repeats`; copy the table into BENCHMARKS.md). Needs ../shared (FewCLUE tnews and the vocab).
The smaller parts also run alone (`--only`, results in benchmarks/results_<part>.json); `--only ray`
needs requirements-ray.txt and uses ../shared only if present (the ERNIE-base case).

`--memory` needs no ../shared: it trains and exports a tiny ERNIE on the keyword task and runs
infer.py on 20k and 2M lines (benchmarks/memory.json, memory.md); `--baseline DIR` (a checkout
of an earlier version, e.g. `git archive REV | tar -x -C DIR`) also runs that version's infer.py
on the same export and inputs, for texts/s before/after.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SHARED = os.environ.get("PTUNING_SHARED", os.path.join(os.path.dirname(ROOT), "shared"))
TNEWS = os.path.join(SHARED, "data", "fewclue", "tnews")
VOCAB = os.path.join(SHARED, "vocab", "ernie-3.0-base-zh-vocab.txt")
PROMPT = "这条新闻标题的主题是"
PY = sys.executable


def log(message: str) -> None:
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def run(cmd: List[str], env: Dict[str, str] = None, cwd: str = ROOT) -> dict:
    """Run a command; return wall seconds and stdout (stderr shown only on failure)."""
    full_env = dict(os.environ, PTUNING_OFFLINE="1", **(env or {}))
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=full_env, cwd=cwd)
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{err.decode()[-3000:]}")
    return {"wall": wall, "stdout": out.decode()}


def run_rss(cmd: List[str], env: Dict[str, str] = None, cwd: str = ROOT) -> dict:
    """Like `run`, with the child's own peak RSS.

    Linux carries a process's peak RSS across fork and exec, so a child started from this (possibly
    large) process reports at least this process's peak: the command is started by /usr/bin/time,
    whose own child starts small. Without /usr/bin/time, os.wait4's figure is a ceiling only.
    """
    import tempfile

    full_env = dict(os.environ, PTUNING_OFFLINE="1", **(env or {}))
    report = tempfile.NamedTemporaryFile(suffix=".rss", delete=False)
    report.close()
    timed_cmd = (["/usr/bin/time", "-f", "%M", "-o", report.name] + cmd) if os.access("/usr/bin/time", os.X_OK) \
        else cmd
    start = time.perf_counter()
    proc = subprocess.Popen(timed_cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=full_env, cwd=cwd)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    with open(report.name) as fp:
        reported = fp.read().split()
    os.remove(report.name)
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}")
    rss_kb = int(reported[-1]) if timed_cmd is not cmd else usage.ru_maxrss
    return {"wall": wall, "rss_mb": rss_kb / 1024, "stdout": out.decode()}


def median(values: List[float]) -> float:
    return float(statistics.median(values))


def timed(fn: Callable[[], object], repeats: int) -> List[float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


# ---------------------------------------------------------------------------------------------- set-up

def setup(work: str, threads: int) -> dict:
    """Model, trained checkpoint, our export (fp32 + int8), the upstream-style export. Cached."""
    paths = base_export(work)
    if not os.path.isfile(os.path.join(paths["ref_export"], "model.pdiparams")):
        log("exporting the upstream-style graph (LSTM encoder inside, 7 inputs)")
        run([PY, "-c", REFERENCE_EXPORT, paths["ckpt"], paths["ref_export"]])
    return paths


def base_export(work: str) -> dict:
    """ERNIE-3.0-base (random weights, real vocab) trained 4 steps on tnews and exported (fp32 + int8). Cached."""
    paths = {"model": os.path.join(work, "ernie-3.0-base-zh"), "ckpt": os.path.join(work, "ckpt-base"),
             "ref_export": os.path.join(work, "reference_export")}
    paths["export"] = os.path.join(paths["ckpt"], "export")
    if not os.path.isfile(os.path.join(paths["model"], "model_state.pdparams")):
        log("building ERNIE-3.0-base (random weights, real vocab)")
        run([PY, "-m", "utils.tiny_ernie", "--preset", "ernie-3.0-base-zh", "--vocab_file", VOCAB,
             "--output_dir", paths["model"]])
    manifest = os.path.join(paths["export"], "manifest.json")
    if not os.path.isfile(manifest) or not json.load(open(manifest))["onnx"].get("int8"):
        log("training 4 steps on tnews and exporting (fp32 + int8)")
        run([PY, "train.py", "--model_name_or_path", paths["model"], "--data_dir", TNEWS, "--output_dir",
             paths["ckpt"], "--overwrite_output_dir", "--prompt", PROMPT, "--max_seq_length", "128",
             "--learning_rate", "3e-5", "--ppt_learning_rate", "3e-4", "--do_train", "--max_steps", "4",
             "--per_device_train_batch_size", "8", "--save_steps", "1000", "--logging_steps", "1",
             "--do_export", "--quantize", "int8"])
    return paths


REFERENCE_EXPORT = """
import sys, os
sys.path.insert(0, os.getcwd())
import paddle
from paddlenlp.transformers import export_model
from utils.model import compat
from utils.model.assembly import rebuild_from_checkpoint
compat.apply()
model, tokenizer, spec = rebuild_from_checkpoint(sys.argv[1])
# PromptTrainer.export_model, as the upstream train.py --do_export runs it
os.makedirs(sys.argv[2], exist_ok=True)
model.template.save(sys.argv[2])
model.verbalizer.save(sys.argv[2])
export_model(model, model.get_input_spec(), sys.argv[2], "paddle")
"""


# ------------------------------------------------------------------------------------- measurements

def end_to_end(paths: dict, test_file: str, threads: int, repeats: int, reference_repeats: int, out: str) -> dict:
    """1 + 2 + 6: infer.py (fp32, int8) and the reference path, whole processes."""
    results = {}
    ours = [PY, "infer.py", "--model_path_prefix", paths["export"], "--input_file", test_file, "--device", "cpu",
            "--num_threads", str(threads)]
    for name, extra in (("infer_fp32", []), ("infer_int8", ["--use_int8"])):
        runs = []
        for i in range(repeats):
            log(f"{name} run {i + 1}/{repeats}")
            result = run_rss(ours + ["--output_file", os.path.join(out, f"{name}.tsv")] + extra)
            result["summary"] = json.loads(result.pop("stdout"))
            runs.append(result)
        results[name] = runs
    runs = []
    reference = [PY, "benchmarks/reference_infer.py", "--model_path_prefix",
                 os.path.join(paths["ref_export"], "model"), "--model_name", paths["model"], "--data_file", test_file,
                 "--batch_size", "200", "--num_threads", str(threads),
                 "--output_file", os.path.join(out, "reference.txt")]
    for i in range(reference_repeats):
        log(f"reference run {i + 1}/{reference_repeats}")
        result = run_rss(reference)
        result["summary"] = json.loads(result.pop("stdout").strip().splitlines()[-1])
        runs.append(result)
    results["reference"] = runs
    with open(os.path.join(out, "reference.txt"), encoding="utf-8") as fp:
        reference_labels = [line.strip() for line in fp if line.strip()]
    with open(os.path.join(out, "infer_fp32.tsv"), encoding="utf-8") as fp:
        our_labels = [line.rstrip("\n").split("\t")[2] for line in fp][1:]
    results["agreement_with_reference"] = float(np.mean([a == b for a, b in zip(our_labels, reference_labels)]))
    return results


def in_process(paths: dict, test_file: str, threads: int, repeats: int) -> dict:
    """3 + 4 + 5 + 6(speed) + ORT transformer optimizer: model compute on the same batches."""
    from paddle import inference

    from utils.dataset.folder import read_examples
    from utils.deploy.predictor import ExportedClassifier, create_session

    examples = read_examples(test_file, labelled=True)
    for example in examples:
        example.pop("label")
    fp32 = ExportedClassifier(paths["export"], num_threads=threads)
    int8 = ExportedClassifier(paths["export"], num_threads=threads, use_int8=True)
    features = fp32.preprocessor.encode(examples)
    order = np.argsort([len(f["input_ids"]) for f in features], kind="stable")
    batch_size = 32
    batches = [fp32.preprocessor.pad([features[i] for i in order[s:s + batch_size]])
               for s in range(0, len(order), batch_size)]
    results = {"batch_size": batch_size, "texts": len(examples)}

    def ort_compute(session):
        names = [i.name for i in session.get_inputs()]
        return lambda: [session.run(None, {n: b[n] for n in names}) for b in batches]

    log("onnxruntime fp32 / int8 compute")
    results["ort_fp32_s"] = timed(ort_compute(fp32.session), repeats)
    results["ort_int8_s"] = timed(ort_compute(int8.session), repeats)

    log("Paddle Inference fp32 compute (best of oneDNN on/off)")
    manifest = json.load(open(os.path.join(paths["export"], "manifest.json")))
    paddle_times = {}
    for onednn in (True, False):
        config = inference.Config(os.path.join(paths["export"], manifest["paddle"]["model"]),
                                  os.path.join(paths["export"], manifest["paddle"]["params"]))
        config.disable_gpu()
        config.disable_glog_info()
        config.set_cpu_math_library_num_threads(threads)
        config.enable_mkldnn() if onednn else config.disable_mkldnn()
        predictor = inference.create_predictor(config)
        handles = {n: predictor.get_input_handle(n) for n in predictor.get_input_names()}

        def paddle_run(predictor=predictor, handles=handles):
            for batch in batches:
                for name, handle in handles.items():
                    handle.copy_from_cpu(batch[name])
                predictor.run()
        paddle_times["onednn" if onednn else "no_onednn"] = timed(paddle_run, repeats)
    results["paddle_inference_s"] = paddle_times

    log("length-sorted vs file-order batching (preprocessing included)")
    results["sorted_s"] = timed(lambda: fp32.logits(examples, batch_size=batch_size, progress=False), repeats)
    results["file_order_s"] = timed(lambda: fp32.logits(examples, batch_size=batch_size, sort_by_length=False,
                                                        progress=False), repeats)
    results["file_order_200_s"] = timed(lambda: fp32.logits(examples, batch_size=200, sort_by_length=False,
                                                            progress=False), repeats)

    results.update(model_flops(paths["ckpt"], features, batches))
    config = model_config(paths["ckpt"])
    hidden = config["hidden_size"]

    try:
        from onnxruntime.transformers.optimizer import optimize_model

        log("onnxruntime transformer optimizer (attention/LayerNorm/GELU fusion)")
        # opt_level=0: only the offline fusions (the session applies its own optimizations anyway)
        optimized = optimize_model(os.path.join(paths["export"], "model.onnx"), model_type="bert",
                                   num_heads=config["num_attention_heads"], hidden_size=hidden, opt_level=0)
        fused = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
        opt_path = os.path.join(os.path.dirname(paths["export"]), "model_ort_optimized.onnx")
        optimized.save_model_to_file(opt_path)
        session = create_session(opt_path, "cpu", 0, threads)
        names = [i.name for i in session.get_inputs()]
        diff = max(float(np.abs(session.run(None, {n: b[n] for n in names})[0] -
                                fp32.session.run(None, {n: b[n] for n in names})[0]).max()) for b in batches[:8])
        results["ort_optimizer"] = {"fused": fused, "max_abs_diff": diff,
                                    "seconds": timed(ort_compute(session), repeats)}
    except ImportError as exc:
        results["ort_optimizer"] = {"skipped": str(exc)}
    return results


def model_config(ckpt: str) -> dict:
    from utils.model.spec import ModelSpec

    return ModelSpec.load(ckpt).plm_config


def model_flops(ckpt: str, features: List[dict], batches: List[dict]) -> dict:
    """FLOPs of the work the model must do: real (unpadded) tokens; and of what was computed (padded)."""
    config = model_config(ckpt)
    hidden, inter, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    lengths = np.array([len(f["input_ids"]) for f in features])
    padded = np.concatenate([np.full(len(b["input_ids"]), b["input_ids"].shape[1]) for b in batches])

    def flops(seq_lengths):  # per sequence of length L: L * layers * (8H^2 + 4HI + 4LH), + head at the mask
        return float(sum(L * layers * (8 * hidden ** 2 + 4 * hidden * inter + 4 * L * hidden)
                         + 2 * hidden * hidden for L in seq_lengths))
    return {"flops_real": flops(lengths), "flops_padded": flops(padded), "mean_tokens": float(lengths.mean())}


def gemm_ceiling(threads: int, repeats: int = 10) -> dict:
    """What this machine's GEMMs reach at `threads` threads, measured (benchmarks/ceiling.py, in a child
    process whose BLAS has `threads` threads): numpy sgemm 2048^3, onnxruntime fp32 MatMul and int8
    MatMulInteger on ERNIE-base's FFN shape. The ceilings: the best fp32 and the int8 GFLOP/s."""
    log(f"GEMM ceiling: numpy sgemm, onnxruntime fp32 / int8 FFN GEMMs ({threads} threads)")
    env = {name: str(threads) for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    result = run([PY, os.path.join(ROOT, "benchmarks", "ceiling.py"), "--threads", str(threads),
                  "--repeats", str(repeats)], env=env)
    out = json.loads(result["stdout"].strip().splitlines()[-1])
    out["fp32_ceiling"] = max(out["numpy_sgemm"], out["ort_fp32_ffn"])
    out["int8_ceiling"] = out["ort_int8_ffn"]
    return out


def ceiling(paths: dict, test_file: str, threads: int, repeats: int, texts: Optional[int] = None) -> dict:
    """`--only ceiling`: the model's achieved FLOP/s (fp32, int8: onnxruntime compute on length-sorted
    batches of 32, as row 4 of the main run) against the measured GEMM ceiling, on this machine."""
    from utils.dataset.folder import read_examples
    from utils.deploy.predictor import ExportedClassifier

    examples = read_examples(test_file, labelled=True)[:texts]
    for example in examples:
        example.pop("label")
    before = gemm_ceiling(threads)  # and again after the model: on a shared machine each GEMM's best
    results = {"texts": len(examples), "threads": threads, "loadavg": [os.getloadavg()]}
    for variant in ("fp32", "int8"):
        model = ExportedClassifier(paths["export"], num_threads=threads, use_int8=variant == "int8")
        features = model.preprocessor.encode(examples)
        order = np.argsort([len(f["input_ids"]) for f in features], kind="stable")
        batches = [model.preprocessor.pad([features[i] for i in order[s:s + 32]]) for s in range(0, len(order), 32)]
        names = [i.name for i in model.session.get_inputs()]
        log(f"{variant} compute, {len(examples)} texts, {repeats} repeats")
        results[f"ort_{variant}_s"] = timed(lambda: [model.session.run(None, {n: b[n] for n in names})
                                                     for b in batches], repeats)
        results.update(model_flops(paths["ckpt"], features, batches))
        model = None
    results["loadavg"].append(os.getloadavg())
    after = gemm_ceiling(threads)
    results["gemm_runs"] = [before, after]
    results["gemm"] = {**after, **{key: max(before[key], after[key]) for key in
                                   ("numpy_sgemm", "ort_fp32_ffn", "ort_int8_ffn", "fp32_ceiling", "int8_ceiling")}}
    return results


def ceiling_rows(flops_real: float, fp32_s: float, int8_s: float, gemm: dict) -> List[tuple]:
    """Row 4: the model's achieved FLOP/s (real tokens) / the measured GEMM ceiling, fp32 and int8."""
    fp32, int8 = flops_real / fp32_s, flops_real / int8_s
    return [("4", "achieved fp32 FLOP/s (real tokens) / measured fp32 GEMM ceiling (best of numpy sgemm 2048^3, "
                  "onnxruntime MatMul at the FFN shape)",
             f"{fp32 / 1e9:.0f} / {gemm['fp32_ceiling']:.0f} GFLOP/s", fp32 / 1e9 / gemm["fp32_ceiling"], ">= 0.75"),
            ("4", "achieved int8 FLOP/s (real tokens) / measured int8 GEMM ceiling (onnxruntime MatMulInteger at "
                  "the FFN shape)",
             f"{int8 / 1e9:.0f} / {gemm['int8_ceiling']:.0f} GFLOP/s", int8 / 1e9 / gemm["int8_ceiling"], "reported")]


def ceiling_table(results: dict) -> str:
    gemm = results["gemm"]
    lines = ["| # | measurement | values | ratio | target |", "|---|---|---|---|---|"]
    for number, what, values, ratio, target in ceiling_rows(results["flops_real"], median(results["ort_fp32_s"]),
                                                            median(results["ort_int8_s"]), gemm):
        lines.append(f"| {number} | {what} | {values} | {ratio:.2f} | {target} |")
    lines += ["", f"* Measured at {results['threads']} threads, {results['texts']} tnews texts in length-sorted "
                  f"batches of 32 (onnxruntime compute only), medians of the repeats; GEMMs: numpy sgemm "
                  f"{gemm['numpy_sgemm']:.0f}, onnxruntime fp32 FFN {gemm['ort_fp32_ffn']:.0f}, int8 FFN "
                  f"{gemm['ort_int8_ffn']:.0f} GFLOP/s ({gemm['rows']} x 768 x 3072; the better of a measurement "
                  f"before and one after the model's); load average "
                  f"{results['loadavg'][0][0]:.1f} at the start, {results['loadavg'][-1][0]:.1f} at the end.",
              f"* With padding the model computed {results['flops_padded'] / median(results['ort_fp32_s']) / 1e9:.0f} "
              f"(fp32) / {results['flops_padded'] / median(results['ort_int8_s']) / 1e9:.0f} (int8) GFLOP/s."]
    return "\n".join(lines) + "\n"


def int8_agreement(work: str, threads: int) -> dict:
    """6 (accuracy): a small ERNIE (nano architecture, real vocab) trained on the keyword task."""
    from utils.dataset.folder import read_examples
    from utils.task.metrics import softmax
    from utils.deploy.predictor import ExportedClassifier
    from utils.testing.synthetic import PROMPT as KEYWORD_PROMPT, write_keyword_dataset

    model, data, ckpt = (os.path.join(work, n) for n in ("ernie-nano", "keyword", "ckpt-nano"))
    if not os.path.isfile(os.path.join(ckpt, "export", "manifest.json")):
        log("training a small model on the keyword task for the int8 agreement check")
        run([PY, "-m", "utils.tiny_ernie", "--preset", "ernie-3.0-nano-zh", "--vocab_file", VOCAB,
             "--output_dir", model])
        write_keyword_dataset(data, train_per_class=64, dev_per_class=16, test_per_class=700, seed=3)
        run([PY, "train.py", "--model_name_or_path", model, "--data_dir", data, "--output_dir", ckpt,
             "--overwrite_output_dir", "--prompt", KEYWORD_PROMPT, "--max_seq_length", "48", "--learning_rate", "1e-4",
             "--ppt_learning_rate", "1e-3", "--do_train", "--do_eval", "--max_steps", "300", "--eval_steps", "100",
             "--per_device_train_batch_size", "16", "--do_export", "--quantize", "int8"])
    examples = read_examples(os.path.join(data, "test.txt"), labelled=True)
    gold = [e.pop("label") for e in examples]
    out = {}
    for name, use_int8 in (("fp32", False), ("int8", True)):
        classifier = ExportedClassifier(os.path.join(ckpt, "export"), num_threads=threads, use_int8=use_int8)
        probs = softmax(classifier.logits(examples, progress=False))
        out[name] = {"pred": probs.argmax(1), "acc": float(np.mean([classifier.labels[p] == g for p, g in
                                                                     zip(probs.argmax(1), gold)]))}
    return {"texts": len(examples), "agreement": float(np.mean(out["fp32"]["pred"] == out["int8"]["pred"])),
            "accuracy_fp32": out["fp32"]["acc"], "accuracy_int8": out["int8"]["acc"]}


def train_overhead(paths: dict, work: str, repeats: int, steps: int) -> dict:
    """7: train.py vs the bare PromptTrainer loop, same model/data/settings, samples/s."""
    ours, bare = [], []
    for i in range(repeats):
        log(f"train.py vs bare PromptTrainer, round {i + 1}/{repeats}")
        out = os.path.join(work, "train-overhead")
        run([PY, "train.py", "--model_name_or_path", paths["model"], "--data_dir", TNEWS, "--output_dir", out,
             "--overwrite_output_dir", "--prompt", PROMPT, "--max_seq_length", "128", "--learning_rate", "3e-5",
             "--ppt_learning_rate", "3e-4", "--do_train", "--max_steps", str(steps), "--per_device_train_batch_size",
             "8", "--save_steps", "1000000", "--logging_steps", "1", "--disable_tqdm", "True", "--device", "cpu"])
        ours.append(json.load(open(os.path.join(out, "train_results.json")))["train_samples_per_second"])
        result = run([PY, "benchmarks/bare_prompt_trainer.py", "--model_name_or_path", paths["model"], "--data_dir",
                      TNEWS, "--output_dir", os.path.join(work, "bare-trainer"), "--prompt", PROMPT,
                      "--max_steps", str(steps), "--batch_size", "8"])
        bare.append(json.loads(result["stdout"].strip().splitlines()[-1])["train_samples_per_second"])
    return {"train_py_samples_per_s": ours, "bare_samples_per_s": bare, "steps": steps}


REPORT_LABELS = (15, 30, 119, 500, 1000)


def report_scaling(work: str) -> List[dict]:
    """8: `write_classification_report` time and peak RSS at 15..1000 labels, one process each."""
    rows = []
    for labels in REPORT_LABELS:
        log(f"classification report at {labels} labels")
        result = run([PY, "benchmarks/report_scaling.py", "--labels", str(labels), "--output_dir",
                      os.path.join(work, "reports", str(labels))])
        rows.append(json.loads(result["stdout"].strip().splitlines()[-1]))
    return rows


def manual_verbalizer_steps(work: str, repeats: int, steps: int) -> dict:
    """9: median training step, --verbalizer manual (ce, mlm) vs soft; tiny ERNIE with the real 40k vocab,
    tnews, batch 32, max_seq_length 64. The three alternate, `repeats` rounds, one process each."""
    model = os.path.join(work, "tiny-ernie-40k")
    if not os.path.isfile(os.path.join(model, "model_state.pdparams")):
        log("building the tiny ERNIE with the real 40k vocab")
        run([PY, "-m", "utils.tiny_ernie", "--vocab_file", VOCAB, "--output_dir", model])
    common = ["--model_name_or_path", model, "--data_dir", TNEWS, "--prompt", PROMPT, "--max_seq_length", "64",
              "--per_device_train_batch_size", "32", "--dataloader_drop_last", "True", "--do_train",
              "--max_steps", str(steps), "--save_steps", "1000000", "--logging_steps", "1000000",
              "--disable_tqdm", "True", "--overwrite_output_dir", "--device", "cpu"]
    variants = {"soft": [], "manual_ce": ["--verbalizer", "manual"],
                "manual_mlm": ["--verbalizer", "manual", "--manual_loss", "mlm"]}
    medians: Dict[str, List[float]] = {name: [] for name in variants}
    for i in range(repeats):
        for name, extra in variants.items():
            log(f"training steps, {name}, round {i + 1}/{repeats}")
            result = run([PY, "benchmarks/train_step_time.py", "--skip", "2", "--", *common, "--output_dir",
                          os.path.join(work, f"steps-{name}"), *extra])
            medians[name].append(json.loads(result["stdout"].strip().splitlines()[-1])["median_seconds"])
    return {"steps": steps, "skipped": 2, "median_step_seconds": medians}


def reports_table(rows: List[dict]) -> str:
    lines = ["| labels | examples | wall time | peak RSS | extra RSS (peak - before the call) |",
             "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['labels']} | {row['examples']} | {row['seconds']:.2f} s | {row['peak_mb']:.0f} MB | "
                     f"{row['extra_mb']:.0f} MB |")
    return "\n".join(lines) + "\n"


def manual_verbalizer_table(result: dict) -> str:
    soft = median(result["median_step_seconds"]["soft"])
    lines = ["| verbalizer | median step | ratio to soft | target |", "|---|---|---|---|"]
    for name, what in (("soft", "soft"), ("manual_ce", "manual, --manual_loss ce"),
                       ("manual_mlm", "manual, --manual_loss mlm")):
        step = median(result["median_step_seconds"][name])
        target = "<= 1.5x" if name == "manual_ce" else ""
        lines.append(f"| {what} | {step:.3f} s | {step / soft:.2f} | {target} |")
    return "\n".join(lines) + "\n"


def keyword_export(work: str) -> str:
    """A tiny ERNIE (2 layers, hidden 64) trained on the keyword task and exported. Cached."""
    from utils.testing.synthetic import PROMPT as KEYWORD_PROMPT, write_keyword_dataset

    model, data, ckpt = (os.path.join(work, n) for n in ("memory-tiny-ernie", "memory-keyword", "memory-ckpt"))
    export = os.path.join(ckpt, "export")
    if not os.path.isfile(os.path.join(export, "manifest.json")):
        log("training and exporting a tiny ERNIE on the keyword task")
        write_keyword_dataset(data)
        run([PY, "-c", "import sys; from utils.testing.synthetic import vocab_texts; "
             "from utils.testing.tiny_ernie import build_ernie, vocab_from_texts; "
             "build_ernie(sys.argv[1], vocab_from_texts(vocab_texts()), seed=0)", model])  # paddle stays out of here
        run([PY, "train.py", "--model_name_or_path", model, "--data_dir", data, "--output_dir", ckpt,
             "--overwrite_output_dir", "--prompt", KEYWORD_PROMPT, "--max_seq_length", "64", "--learning_rate", "1e-3",
             "--ppt_learning_rate", "3e-3", "--do_train", "--max_steps", "60", "--per_device_train_batch_size", "16",
             "--save_steps", "1000", "--logging_steps", "20", "--do_export", "--device", "cpu"])
    return export


def keyword_input(work: str, size: int) -> str:
    """`size` lines (a multiple of 20,000) repeating 20,000 distinct keyword-task lines, test.txt layout. Cached."""
    import random

    from utils.testing.synthetic import make_split

    path = os.path.join(work, f"memory-input-{size}.txt")
    if not os.path.isfile(path):
        lines = make_split(random.Random(7), 20_000 // 3 + 1, min_len=1, max_len=40)[:20_000]
        with open(path, "w", encoding="utf-8") as fp:
            block = "\n".join(lines) + "\n"
            for _ in range(size // len(lines)):
                fp.write(block)
    return path


def streaming_memory(work: str, threads: int, baseline: Optional[str] = None,
                     sizes=(20_000, 200_000, 2_000_000), baseline_sizes=(20_000, 200_000)) -> dict:
    """infer.py's peak RSS (os.wait4) and texts/s on inputs of `sizes` lines, with a tiny model: the
    model is ~constant, so any growth with the input is the pipeline's. Inputs repeat 20k distinct
    keyword-task lines (test.txt layout, gold labels included)."""
    export = keyword_export(work)
    inputs = {size: keyword_input(work, size) for size in sorted(set(sizes) | set(baseline_sizes if baseline else ()))}

    def measure(root: str, size: int) -> dict:
        log(f"infer.py ({'baseline' if root != ROOT else 'this version'}) on {size} lines")
        result = run_rss([PY, os.path.join(root, "infer.py"), "--model_path_prefix", export, "--input_file",
                          inputs[size], "--output_file", os.path.join(work, "memory-output.tsv"), "--device", "cpu",
                          "--num_threads", str(threads)], cwd=root)
        summary = json.loads(result.pop("stdout"))
        return {"lines": size, "rss_mb": result["rss_mb"], "wall": result["wall"],
                "texts_per_second": summary["texts_per_second"], "accuracy": summary.get("accuracy")}

    results = {"threads": threads, "onnx_mb": os.path.getsize(os.path.join(export, "model.onnx")) / 2 ** 20,
               "runs": [], "baseline": []}
    for size in sizes:  # the baseline right after on the same input: the machine's load changes slowly
        results["runs"].append(measure(ROOT, size))
        if baseline and size in baseline_sizes:
            results["baseline"].append(measure(os.path.abspath(baseline), size))
    return results


def ray_vs_local(work: str, repeats: int, tiny_lines: int = 200_000) -> dict:
    """infer.py --ray on local Ray clusters of 1 and 2 nodes (1 CPU each) against infer.py without
    Ray on as many threads, run right after each other (the machine's load drifts), whole processes,
    same input and chunks; the Ray outputs must equal the local 1-thread output byte for byte.
    Cases: the tiny keyword model on `tiny_lines` lines (little work per text: what distributing
    costs) and, with ../shared, ERNIE-3.0-base on tnews test.txt in chunks of 256 (compute-bound)."""
    from utils.testing.ray_local import LocalRayCluster

    cases = [{"name": "tiny", "export": keyword_export(work), "input": keyword_input(work, tiny_lines),
              "chunk_size": 8192}]
    if os.path.exists(TNEWS) and os.path.exists(VOCAB):
        cases.append({"name": "ernie-base", "export": base_export(work)["export"],
                      "input": os.path.join(TNEWS, "test.txt"), "chunk_size": 256})
    out = os.path.join(work, "ray-output.tsv")

    def infer(case: dict, flags: List[str], env: Optional[Dict[str, str]] = None) -> dict:
        result = run([PY, "infer.py", "--model_path_prefix", case["export"], "--input_file", case["input"],
                      "--output_file", out, "--device", "cpu", "--chunk_size", str(case["chunk_size"]), *flags],
                     env=env)
        summary = json.loads(result["stdout"])
        with open(out, "rb") as fp:
            digest = hashlib.sha256(fp.read()).hexdigest()
        return {"wall": result["wall"], "stream_s": summary["seconds"], "texts": summary["texts"],
                "first_prediction_s": summary.get("first_prediction_seconds"), "sha256": digest,
                "nodes": list(summary.get("ray", {}).get("nodes", {}).values())}

    clusters = {}
    for nodes in (1, 2):
        start = time.perf_counter()
        with LocalRayCluster([f"node_{i}" for i in range(nodes)], cpus=1, object_store_mb=1024) as cluster:
            clusters[nodes] = {"start_s": time.perf_counter() - start}
            ray_env = {k: v for k, v in cluster.env.items() if k.startswith("RAY_")}  # the cluster's token
            for _ in range(repeats):
                for case in cases:
                    log(f"{case['name']}: infer.py, {nodes} thread(s), then --ray on {nodes} node(s) x 1 CPU")
                    case.setdefault(f"local_{nodes}", []).append(infer(case, ["--num_threads", str(nodes)]))
                    case.setdefault(f"ray_{nodes}", []).append(infer(case, ["--ray", cluster.address], env=ray_env))
            stop = time.perf_counter()
        clusters[nodes]["stop_s"] = time.perf_counter() - stop
    for case in cases:
        reference = case["local_1"][0]["sha256"]
        case["ray_output_equals_local"] = all(r["sha256"] == reference for key in ("ray_1", "ray_2") for r in case[key])
        case["local_threads_same_output"] = all(r["sha256"] == reference for r in case["local_2"])
    return {"cases": cases, "clusters": clusters, "repeats": repeats, "cpus": os.cpu_count(),
            "machine": {"platform": platform.platform(), "python": platform.python_version()}}


def ray_table(results: dict) -> str:
    lines = ["| model, input | run | wall (process) | streaming texts/s | start-up (wall - streaming) | "
             "chunks per node | worker memory (private / RSS) |", "|---|---|---|---|---|---|---|"]
    names = {"local_1": "infer.py, 1 thread", "ray_1": "--ray, 1 node x 1 CPU",
             "local_2": "infer.py, 2 threads", "ray_2": "--ray, 2 nodes x 1 CPU"}
    notes = []
    for case in results["cases"]:
        med = {}
        for key, label in names.items():
            runs = case[key]
            wall, stream = median([r["wall"] for r in runs]), median([r["stream_s"] for r in runs])
            med[key] = (wall, stream)
            nodes = runs[-1]["nodes"]
            chunks = " + ".join(str(n["blocks"]) for n in nodes)
            memory = ", ".join(f"{n['worker_uss_mb']} / {n['worker_rss_mb']} MB" for n in nodes)
            lines.append(f"| {case['name']}, {runs[0]['texts']:,} texts | {label} | {wall:.1f} s | "
                         f"{runs[0]['texts'] / stream:.0f} | {wall - stream:.1f} s | {chunks} | {memory} |")
        ratio = {key: (med[key][0] / med[local][0], med[key][1] / med[local][1])
                 for key, local in (("ray_1", "local_1"), ("ray_2", "local_2"))}
        notes.append(
            f"{case['name']}: --ray / local, wall: 1 node {ratio['ray_1'][0]:.2f}x, 2 nodes **{ratio['ray_2'][0]:.2f}x**"
            f" (streaming only: {ratio['ray_1'][1]:.2f}x, {ratio['ray_2'][1]:.2f}x); streaming throughput 2 nodes"
            f" / 1 node: **{med['ray_1'][1] / med['ray_2'][1]:.2f}x** (local 2 threads / 1 thread: "
            f"{med['local_1'][1] / med['local_2'][1]:.2f}x); Ray output = local output byte for byte: "
            f"{case['ray_output_equals_local']}")
    notes.append("cluster start / stop: " + "; ".join(f"{n} node(s) {c['start_s']:.1f} s / {c['stop_s']:.1f} s"
                                                      for n, c in results["clusters"].items()))
    return "\n".join(lines) + "\n\n" + "\n".join(f"* {n}" for n in notes) + "\n"


def verification_cost(export_dir: str, threads: int, repeats: int) -> dict:
    """Start-up added by checking sha256 of the export's files: ExportedClassifier built with and
    without its background hash of the model file (alternating, page cache warm), and the hash alone."""
    from utils.deploy import bundle as export_files
    from utils.deploy import predictor
    from utils.files import sha256_file

    class NoHash:  # the check as it was before: size only
        def __init__(self, export_dir, manifest, name):
            self.path = export_files.check_file(export_dir, manifest, name)

        def check(self):
            pass

    def seconds(fn) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    model = os.path.join(export_dir, "model.onnx")
    sha256_file(model)  # warm the page cache for both variants
    times = {"sha256_s": [], "with_check_s": [], "without_check_s": []}
    for _ in range(repeats):
        times["sha256_s"].append(seconds(lambda: sha256_file(model)))
        for key, hasher in (("with_check_s", export_files.BackgroundSha256), ("without_check_s", NoHash)):
            predictor.BackgroundSha256 = hasher
            times[key].append(seconds(lambda: predictor.ExportedClassifier(export_dir, num_threads=threads)))
    predictor.BackgroundSha256 = export_files.BackgroundSha256
    return {"model_mb": os.path.getsize(model) / 2 ** 20, **times}


def report_memory(results: dict) -> str:
    runs = {r["lines"]: r for r in results["runs"]}
    small, large = runs[min(runs)], runs[max(runs)]
    lines = [f"| lines | peak RSS | texts/s (end to end, {results['threads']} thread(s)) |", "|---|---|---|"]
    lines += [f"| {r['lines']:,} | {r['rss_mb']:.0f} MB | {r['texts_per_second']:.0f} |" for r in results["runs"]]
    lines += ["", f"Peak RSS {large['lines']:,} / {small['lines']:,} lines: {large['rss_mb']:.0f} / "
                  f"{small['rss_mb']:.0f} MB = **{large['rss_mb'] / small['rss_mb']:.2f}x** (target <= 1.2x)."]
    if results.get("baseline"):
        lines += ["", "| lines | before: peak RSS | before: texts/s | now: peak RSS | now: texts/s |",
                  "|---|---|---|---|---|"]
        for before in results["baseline"]:
            now = runs.get(before["lines"])
            if now:
                lines.append(f"| {before['lines']:,} | {before['rss_mb']:.0f} MB | {before['texts_per_second']:.0f} | "
                             f"{now['rss_mb']:.0f} MB | {now['texts_per_second']:.0f} |")
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------------------- service

SERVICE_CLIENTS = (1, 8, 32, 128)
ARRIVAL_BATCH = 32


class Server:
    """serve.py in a subprocess on a free 127.0.0.1 port: started, /ready awaited, SIGTERM on exit
    (its exit code is kept: 0 means it drained and stopped cleanly)."""

    def __init__(self, export: str, threads: int, extra: List[str], log_path: str):
        self.cmd = [PY, "serve.py", "--model_path_prefix", export, "--host", "127.0.0.1", "--num_threads",
                    str(threads), *extra]
        self.log_path = log_path
        self.exit_code = None

    def __enter__(self) -> "Server":
        import socket
        import urllib.error
        import urllib.request

        with socket.socket() as probe:  # a free port (serve.py binds it a moment later)
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(self.log_path, "w")
        started = time.monotonic()
        self.proc = subprocess.Popen(self.cmd + ["--port", str(port)], stdout=self.log, stderr=subprocess.STDOUT,
                                     cwd=ROOT, env=dict(os.environ, PTUNING_OFFLINE="1"))
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"serve.py exited ({self.proc.returncode}) before it was ready; see {self.log_path}")
            try:
                if opener.open(self.url + "/ready", timeout=5).status == 200:
                    break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() - started > 300:
                self.proc.kill()
                raise SystemExit(f"serve.py not ready after 300 s; see {self.log_path}")
            time.sleep(0.2)
        self.ready_s = time.monotonic() - started
        return self

    def rss_mb(self) -> float:
        import psutil

        return psutil.Process(self.proc.pid).memory_info().rss / 2 ** 20

    def usage(self) -> dict:
        """CPU seconds of the event loop (the main thread: HTTP, JSON, batching) and of the other
        threads (model thread: tokenization, onnxruntime and its pool), and the batch-size totals."""
        import psutil
        import urllib.request

        threads = psutil.Process(self.proc.pid).threads()
        loop = sum(t.user_time + t.system_time for t in threads if t.id == self.proc.pid)
        model = sum(t.user_time + t.system_time for t in threads if t.id != self.proc.pid)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        text = opener.open(self.url + "/metrics", timeout=10).read().decode()
        values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
                  if line.startswith(("ptuning_batch_size_sum", "ptuning_batch_size_count", "ptuning_model_seconds_total",
                                      "ptuning_batch_paths_total"))}
        return {"split_batches": values.get('ptuning_batch_paths_total{path="split"}', 0.0),
                "full_batches": values.get('ptuning_batch_paths_total{path="full"}', 0.0),
                "loop_cpu_s": loop, "model_cpu_s": model, "model_busy_s": values.get("ptuning_model_seconds_total", 0.0),
                "batch_texts": values.get("ptuning_batch_size_sum", 0.0),
                "batches": values.get("ptuning_batch_size_count", 0.0)}

    def measure(self, test_file: str, clients: int, requests: int, duration: float, warmup: int = 0) -> dict:
        """One load.py run (after `warmup` requests not counted) with the server's CPU and batches over it."""
        if warmup:
            load(self.url, test_file, clients, warmup, duration)
        before = self.usage()
        result = load(self.url, test_file, clients, requests, duration)
        after = self.usage()
        result["server"] = {key: round(after[key] - before[key], 3) for key in after}
        return result

    def __exit__(self, *exc) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.exit_code = self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            self.exit_code = "killed after 120 s"
        self.log.close()


def load(url: str, test_file: str, clients: int, requests: int, duration: float) -> dict:
    """benchmarks/load.py in its own process (its event loop and GIL apart from this one's)."""
    result = run([PY, os.path.join(ROOT, "benchmarks", "load.py"), "--url", url + "/models/cls_default",
                  "--input_file", test_file, "--clients", str(clients), "--requests", str(requests),
                  "--duration", str(duration)])
    return json.loads(result["stdout"].strip().splitlines()[-1])


def instances_flags(setting: str) -> List[str]:
    """serve.py's flags for a --service_instances setting: `N` or `auto`, or `N@T` (--instances N
    --num_threads T: e.g. 2@4 on 2 threads, two workers running one 2-thread session side by side)."""
    instances, _, threads = str(setting).partition("@")
    return ["--instances", instances] + (["--num_threads", threads] if threads else [])


def service_speed(paths: dict, test_file: str, threads: int, repeats: int, requests: int, duration: float,
                  latency_texts: int = 300, serve_args: List[str] = (), variants=("fp32", "int8"),
                  instances: Sequence[str] = ("1", "2", "auto")) -> dict:
    """10: serve.py (ERNIE-base export, fp32 and int8) under 1..128 closed-loop clients, one text per
    request, against infer.py on the same file and threads; latency at 1 client against
    ExportedClassifier.logits on one text in this process (session set up as the service's). One
    server per `--instances` count, all up at once; each round runs infer.py, the one-text compute
    and every client count on every server back to back (the others idle meanwhile)."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    from load import read_texts
    from utils.deploy.predictor import ExportedClassifier
    from utils.serving.batcher import run_by_length

    everything = [{"text_a": t} for t in read_texts(test_file)]
    # The 1-client run sends exactly these texts, once each, as the compute timing does.
    examples = everything[:latency_texts]
    results = {"threads": threads, "clients": list(SERVICE_CLIENTS), "requests": requests, "duration": duration,
               "latency_texts": len(examples), "serve_args": list(serve_args), "instances": list(instances),
               "texts": len(everything), "test_file": test_file,
               "variants": {}}
    for variant in variants:
        extra = ["--use_int8"] if variant == "int8" else []
        # In-process timings with the service's session settings (threads sleep between runs).
        classifier = ExportedClassifier(paths["export"], num_threads=threads, use_int8=variant == "int8",
                                        allow_spinning=False)
        classifier.logits(examples[:32], progress=False)  # warm-up
        features = classifier.preprocessor.encode(everything)
        out = {"infer_texts_per_s": [], "compute_one_ms": [], "arrival_batches_texts_per_s": [],
               "arrival_split_texts_per_s": [],
               "load": {str(c): [] for c in SERVICE_CLIENTS}, "loadavg": [],
               # the same for each --instances count after the first ("load" is the first's)
               "instances_load": {str(n): {str(c): [] for c in SERVICE_CLIENTS} for n in instances[1:]}}
        with contextlib.ExitStack() as stack:
            servers = {n: stack.enter_context(Server(
                paths["export"], threads, [*extra, *serve_args, *instances_flags(n)],
                os.path.join(paths["ckpt"], f"serve-{variant}-{n}.log"))) for n in instances}
            for server in servers.values():
                load(server.url, test_file, 8, 200, 120)  # warm-up: onnxruntime's first runs at each shape
            server = servers[instances[0]]
            for i in range(repeats):
                log(f"service {variant}, round {i + 1}/{repeats}: infer.py, one-text compute, "
                    f"{'/'.join(map(str, SERVICE_CLIENTS))} clients")
                out["loadavg"].append(os.getloadavg())
                summary = json.loads(run([PY, "infer.py", "--model_path_prefix", paths["export"], "--input_file",
                                          test_file, "--output_file", os.path.join(paths["ckpt"], "service-infer.tsv"),
                                          "--device", "cpu", "--num_threads", str(threads), *extra])["stdout"])
                out["infer_texts_per_s"].append(summary["texts_per_second"])
                times = []
                for example in examples:
                    start = time.perf_counter()
                    classifier.logits([example], progress=False)
                    times.append(time.perf_counter() - start)
                out["compute_one_ms"].append(1000 * median(times))
                # What 32 closed-loop clients give the model: batches of ~32 texts in arrival order
                # (infer.py sorts 8192 texts, then cuts 32s), run as one padded batch or as the
                # service runs them on CPU (run_by_length).
                for key, run_batch in (("arrival_batches_texts_per_s", lambda b: classifier.run(b, len(b))),
                                       ("arrival_split_texts_per_s", lambda b: run_by_length(classifier, b))):
                    start = time.perf_counter()
                    for first in range(0, len(features), ARRIVAL_BATCH):
                        run_batch(features[first:first + ARRIVAL_BATCH])
                    out[key].append(len(features) / (time.perf_counter() - start))
                for n, each in servers.items():
                    runs = out["load"] if n == instances[0] else out["instances_load"][str(n)]
                    for clients in SERVICE_CLIENTS:
                        runs[str(clients)].append(each.measure(
                            test_file, clients, len(examples) if clients == 1 else requests, duration, warmup=clients))
            out["server_rss_mb"] = server.rss_mb()
            out["rss_mb_by_instances"] = {str(n): each.rss_mb() for n, each in servers.items()}
            out["ready_s"] = server.ready_s
        out["exit_code"] = server.exit_code
        out["instances_exit_code"] = {str(n): servers[n].exit_code for n in instances[1:]}
        results["variants"][variant] = out
        classifier = None  # free this session before the next variant loads its own
    return results


def service_memory(work: str, test_file: str, threads: int, total: int, clients: int = 32, samples: int = 10,
                   serve_args: List[str] = ()) -> dict:
    """11: the server's RSS from start (ready, no request yet) over `total` requests (one tnews text
    each) in `samples` steps, tiny model (what grows is the service's, not the model's)."""
    if not total:  # --service_memory_requests 0: skipped
        return {}
    export = keyword_export(work)
    points = []
    with Server(export, threads, list(serve_args), os.path.join(work, "serve-memory.log")) as server:
        log(f"service memory: {total} requests in {samples} steps, {clients} clients")
        points.append({"requests": 0, "rss_mb": server.rss_mb()})
        sent = errors = 0
        for _ in range(samples):
            result = load(server.url, test_file, clients, total // samples, 3600)
            sent, errors = sent + result["requests"], errors + result["errors"]
            points.append({"requests": sent, "rss_mb": server.rss_mb(), "texts_per_s": result["texts_per_s"],
                           "latency_ms": result["latency_ms"]})
            log(f"  {sent} requests: RSS {points[-1]['rss_mb']:.1f} MB, {result['texts_per_s']:.0f} texts/s")
    return {"model": "tiny ERNIE (2 layers, hidden 64) trained on the keyword task (bench.py --memory's)",
            "onnx_mb": os.path.getsize(os.path.join(export, "model.onnx")) / 2 ** 20, "threads": threads,
            "clients": clients, "requests": sent, "errors": errors, "points": points,
            "serve_args": list(serve_args), "exit_code": server.exit_code, "loadavg_end": os.getloadavg()}


def instances_table(speed: dict) -> str:
    """The --instances settings side by side, each against the same round's infer.py and one-text
    compute: the two targets (1 client p50 <= 1.2x, 32 clients >= 0.9x) met by one setting or not."""
    lines = ["| model, `--instances` | 1 client p50 / one text | 8 / 32 / 128 clients: texts/s / infer.py | "
             "p50 / p99 at 1, 32, 128 clients (ms) | split batches at 32 | server RSS | both targets |",
             "|---|---|---|---|---|---|---|"]
    for v, out in speed["variants"].items():
        infer, compute = median(out["infer_texts_per_s"]), median(out["compute_one_ms"])
        for n in speed["instances"]:
            runs = out["load"] if n == speed["instances"][0] else out["instances_load"][str(n)]

            def at(clients, *keys):
                values = []
                for result in runs[str(clients)]:
                    for key in keys:
                        result = result[key]
                    values.append(result)
                return median(values)
            p50_ratio = at(1, "latency_ms", "p50") / compute
            ratios = [at(c, "texts_per_s") / infer for c in (8, 32, 128)]
            split = at(32, "server", "split_batches") / max(1.0, at(32, "server", "batches"))
            met = p50_ratio <= 1.2 and ratios[1] >= 0.9
            lines.append(
                f"| {v}, {n} | {at(1, 'latency_ms', 'p50'):.1f} ms ({p50_ratio:.2f}x) | "
                + " / ".join(f"{r:.2f}x" for r in ratios) + " | "
                + "; ".join(f"{at(c, 'latency_ms', 'p50'):.0f} / {at(c, 'latency_ms', 'p99'):.0f}" for c in (1, 32, 128))
                + f" | {split:.2f} | {out.get('rss_mb_by_instances', {}).get(str(n), float('nan')):.0f} MB | "
                + ("**met**" if met else "not met") + " |")
    return "\n".join(lines) + "\n"


def service_table(speed: dict, memory: dict) -> str:
    variants = speed["variants"]
    names = list(variants)
    infer = {v: median(variants[v]["infer_texts_per_s"]) for v in names}

    def at(v: str, clients: int, *keys, instances: Optional[int] = None) -> float:
        values = []
        runs = variants[v]["load"] if instances is None else variants[v]["instances_load"][str(instances)]
        for result in runs[str(clients)]:
            for key in keys:
                result = result[key]
            values.append(result)
        return median(values)

    lines = [f"| measurement ({speed['threads']} threads) | " + " | ".join(names) + " | target |",
             "|---" * (len(names) + 2) + "|",
             f"| infer.py, {speed.get('texts', 2010)} tnews texts (texts/s from its summary) | "
             + " | ".join(f"{infer[v]:.1f}" for v in names) + " | |"]
    for clients in speed["clients"]:
        target = ">= 0.9x infer.py" if clients == 32 else ""
        lines.append(f"| service, {clients} client(s): texts/s (/ infer.py) | " + " | ".join(
            f"{at(v, clients, 'texts_per_s'):.1f} ({at(v, clients, 'texts_per_s') / infer[v]:.2f}x)" for v in names)
            + f" | {target} |")
    for key, how in (("arrival_batches_texts_per_s", "one padded run each"),
                     ("arrival_split_texts_per_s", "cut by length (run_by_length, as served)")):
        arrival = {v: median(variants[v][key]) for v in names}
        lines.append(f"| model alone, batches of {ARRIVAL_BATCH} in arrival order, {how}, in process: texts/s "
                     "(/ infer.py) | " + " | ".join(f"{arrival[v]:.1f} ({arrival[v] / infer[v]:.2f}x)" for v in names)
                     + " | |")
    compute = {v: median(variants[v]["compute_one_ms"]) for v in names}
    lines.append(f"| one text in process (ExportedClassifier.logits, median of {speed['latency_texts']}) | "
                 + " | ".join(f"{compute[v]:.1f} ms" for v in names) + " | |")
    lines.append("| 1 client: p50 latency (/ one text in process) | " + " | ".join(
        f"{at(v, 1, 'latency_ms', 'p50'):.1f} ms ({at(v, 1, 'latency_ms', 'p50') / compute[v]:.2f}x)" for v in names)
        + " | p50 <= 1.2x |")
    for clients in (1, 32, 128):
        if clients in speed["clients"]:
            lines.append(f"| {clients} client(s): p50 / p99 latency | " + " | ".join(
                f"{at(v, clients, 'latency_ms', 'p50'):.1f} / {at(v, clients, 'latency_ms', 'p99'):.1f} ms"
                for v in names) + " | |")
    for clients in (32, 128):
        if clients in speed["clients"]:
            lines.append(f"| {clients} clients: texts per batch (mean) | " + " | ".join(
                f"{at(v, clients, 'server', 'batch_texts') / at(v, clients, 'server', 'batches'):.1f}" for v in names)
                + " | |")
    for clients in (32, 128):
        if clients in speed["clients"] and all("model_busy_s" in r["server"] for v in names
                                               for r in variants[v]["load"][str(clients)]):
            lines.append(f"| {clients} clients: model worker busy (share of the run's wall time) | " + " | ".join(
                f"{at(v, clients, 'server', 'model_busy_s') / at(v, clients, 'wall_s'):.2f}" for v in names) + " | |")
    lines.append("| 32 clients: CPU per text, model thread(s) / event loop / load generator | " + " | ".join(
        " / ".join(f"{1000 * at(v, 32, *key) / at(v, 32, 'texts'):.1f}" for key in
                   (("server", "model_cpu_s"), ("server", "loop_cpu_s"), ("client_cpu_s",))) + " ms"
        for v in names) + " | |")
    for n in speed.get("instances", [1])[1:]:  # the same server with --instances n, measured in the same rounds
        for clients in speed["clients"]:
            target = ">= 0.9x infer.py" if clients == 32 else ""
            lines.append(f"| **--instances {n}**, {clients} client(s): texts/s (/ infer.py) | " + " | ".join(
                f"{at(v, clients, 'texts_per_s', instances=n):.1f} "
                f"({at(v, clients, 'texts_per_s', instances=n) / infer[v]:.2f}x)" for v in names) + f" | {target} |")
        lines.append(f"| --instances {n}, 1 client: p50 latency (/ one text in process) | " + " | ".join(
            f"{at(v, 1, 'latency_ms', 'p50', instances=n):.1f} ms "
            f"({at(v, 1, 'latency_ms', 'p50', instances=n) / compute[v]:.2f}x)" for v in names) + " | |")
        for clients in (32, 128):
            if clients in speed["clients"]:
                lines.append(f"| --instances {n}, {clients} clients: p50 / p99 latency; texts per batch (mean) | "
                             + " | ".join(f"{at(v, clients, 'latency_ms', 'p50', instances=n):.1f} / "
                                          f"{at(v, clients, 'latency_ms', 'p99', instances=n):.1f} ms; "
                                          f"{at(v, clients, 'server', 'batch_texts', instances=n) / at(v, clients, 'server', 'batches', instances=n):.1f}"
                                          for v in names) + " | |")
    errors = {v: sum(r["errors"] for load in [variants[v]["load"], *variants[v].get("instances_load", {}).values()]
                     for runs in load.values() for r in runs) for v in names}
    lines.append("| errors (all runs) | " + " | ".join(str(errors[v]) for v in names) + " | 0 |")
    if memory:
        first, second, last = memory["points"][0], memory["points"][1], memory["points"][-1]
        peak = max(p["rss_mb"] for p in memory["points"])
        lines += ["", f"Server RSS, {memory['model']}, {memory['threads']} thread(s), {memory['clients']} clients, "
                      "one text per request, from start (ready, no request yet):", "",
                  "| requests | RSS | texts/s (this step) | p99 (this step) |", "|---|---|---|---|"]
        for p in memory["points"]:
            lines.append(f"| {p['requests']:,} | {p['rss_mb']:.1f} MB | {p.get('texts_per_s') or ''} | "
                         f"{(str(p['latency_ms']['p99']) + ' ms') if 'latency_ms' in p else ''} |")
        lines += ["", f"RSS after {last['requests']:,} requests / at start: {last['rss_mb']:.1f} / "
                      f"{first['rss_mb']:.1f} MB = **{last['rss_mb'] / first['rss_mb']:.3f}x** (target <= 1.10x); "
                      f"after {last['requests']:,} / after {second['requests']:,}: "
                      f"{last['rss_mb'] / second['rss_mb']:.3f}x; highest sample {peak:.1f} MB; "
                      f"errors {memory['errors']}; exit code after SIGTERM {memory['exit_code']}."]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------- report

def cpu_peak() -> dict:
    mhz = None
    with open("/proc/cpuinfo") as fp:
        for line in fp:
            if line.startswith("cpu MHz"):
                mhz = float(line.split(":")[1])
                break
    flags = open("/proc/cpuinfo").read()
    lanes = 16 if "avx512f" in flags else 8
    return {"mhz": mhz, "fp32_flops_per_cycle": 2 * 2 * lanes,
            "formula": f"cores x GHz x (2 FMA units x {lanes} fp32 lanes x 2 flop)",
            "vnni": "avx512_vnni" in flags, "amx": "amx_int8" in flags}


def report(results: dict, threads: int) -> str:
    e2e = results["end_to_end"]
    ref_wall = median([r["wall"] for r in e2e["reference"]])
    fp32_wall = median([r["wall"] for r in e2e["infer_fp32"]])
    int8_wall = median([r["wall"] for r in e2e["infer_int8"]])
    ref_first = median([r["summary"]["first_prediction_seconds"] for r in e2e["reference"]])
    ours_first = median([r["summary"]["first_prediction_seconds"] for r in e2e["infer_fp32"]])
    ref_rss = median([r["rss_mb"] for r in e2e["reference"]])
    ours_rss = median([r["rss_mb"] for r in e2e["infer_fp32"]])
    onnx_mb = results["onnx_mb"]
    ip = results["in_process"]
    texts = ip["texts"]
    ort32, ort8 = median(ip["ort_fp32_s"]), median(ip["ort_int8_s"])
    paddle_best_name = min(ip["paddle_inference_s"], key=lambda k: median(ip["paddle_inference_s"][k]))
    paddle_best = median(ip["paddle_inference_s"][paddle_best_name])
    peak = results["cpu"]
    peak_flops = threads * peak["mhz"] * 1e6 * peak["fp32_flops_per_cycle"]
    achieved = ip["flops_real"] / ort32
    achieved_padded = ip["flops_padded"] / ort32
    sorted_s, file_s, file200_s = median(ip["sorted_s"]), median(ip["file_order_s"]), median(ip["file_order_200_s"])
    agree = results["int8_agreement"]
    tr = results["train_overhead"]
    ours_train, bare_train = median(tr["train_py_samples_per_s"]), median(tr["bare_samples_per_s"])
    rows = [
        ("1", "infer.py fp32 end to end vs reference path (2010 tnews texts)", f"{ref_wall:.1f} s / {fp32_wall:.1f} s",
         ref_wall / fp32_wall, ">= 2x"),
        ("1", "infer.py int8 end to end vs reference path", f"{ref_wall:.1f} s / {int8_wall:.1f} s",
         ref_wall / int8_wall, ">= 4x"),
        ("2", "cold start to first prediction: infer.py / reference", f"{ours_first:.2f} s / {ref_first:.1f} s",
         ours_first / ref_first, "<= 0.20"),
        ("2", "peak RSS infer.py fp32 / (1.5 x model.onnx + 300 MB)",
         f"{ours_rss:.0f} MB / {1.5 * onnx_mb + 300:.0f} MB (reference: {ref_rss:.0f} MB)",
         ours_rss / (1.5 * onnx_mb + 300), "<= 1.0"),
        ("3", f"onnxruntime fp32 vs Paddle Inference fp32 ({paddle_best_name}), same export and batches",
         f"{texts / ort32:.1f} / {texts / paddle_best:.1f} samples/s", paddle_best / ort32, ">= 1.1x"),
        *ceiling_rows(ip["flops_real"], ort32, ort8, results["gemm"]),
        ("5", "length-sorted vs file-order batching (batch 32, preprocessing included)",
         f"{texts / sorted_s:.1f} / {texts / file_s:.1f} samples/s", file_s / sorted_s, ">= 1.3x"),
        ("6", "int8 vs fp32 onnxruntime (compute, batch 32)", f"{texts / ort8:.1f} / {texts / ort32:.1f} samples/s",
         ort32 / ort8, ">= 2x"),
        ("6", f"int8 argmax agreement with fp32, trained small model ({agree['texts']} texts)",
         f"acc fp32 {agree['accuracy_fp32']:.4f}, int8 {agree['accuracy_int8']:.4f}", agree["agreement"], ">= 0.99"),
        ("7", f"train.py vs bare PromptTrainer loop ({tr['steps']} steps, batch 8, ERNIE-base)",
         f"{ours_train:.3f} / {bare_train:.3f} samples/s", ours_train / bare_train, ">= 0.95"),
    ]
    lines = ["| # | measurement | values | ratio | target |", "|---|---|---|---|---|"]
    for number, what, values, ratio, target in rows:
        lines.append(f"| {number} | {what} | {values} | {ratio:.2f} | {target} |")
    notes = [
        "",
        f"* Predictions of infer.py fp32 and the reference path agree on "
        f"{100 * e2e['agreement_with_reference']:.2f}% of the texts.",
        f"* File order with upstream's batch 200: {texts / file200_s:.1f} samples/s "
        f"(sorted batch 32 is {file200_s / sorted_s:.2f}x that).",
        f"* FLOPs counted per sequence of L tokens: L x layers x (8H^2 + 4HI + 4LH) + 2H^2 at the mask; "
        f"mean {ip['mean_tokens']:.1f} tokens per text; with padding the model computed "
        f"{achieved_padded / 1e9:.0f} GFLOP/s. Measured GEMMs ({threads} threads): numpy sgemm 2048^3 "
        f"{results['gemm']['numpy_sgemm']:.0f}, onnxruntime fp32 FFN {results['gemm']['ort_fp32_ffn']:.0f}, int8 FFN "
        f"{results['gemm']['ort_int8_ffn']:.0f} GFLOP/s. The assumed peak row 4 used before (an Intel core "
        f"with two 512-bit FMA units: {peak['formula']} = {peak_flops / 1e9:.0f} GFLOP/s) would give "
        f"{achieved / peak_flops:.2f}; it is wrong on other CPUs (AMD Zen 4: one 512-bit FMA path).",
        "* Paddle Inference compute: " + ", ".join(f"{k} {texts / median(v):.1f} samples/s"
                                                    for k, v in ip["paddle_inference_s"].items()) + ".",
    ]
    opt = ip["ort_optimizer"]
    if "seconds" in opt:
        notes.append(f"* onnxruntime transformer optimizer (offline): fused {opt['fused']}, "
                     f"{texts / median(opt['seconds']):.1f} vs {texts / ort32:.1f} samples/s "
                     f"({ort32 / median(opt['seconds']):.3f}x), max |Δlogits| {opt['max_abs_diff']:.1e}.")
    else:
        notes.append(f"* onnxruntime transformer optimizer: skipped ({opt['skipped']}).")
    return "\n".join(lines + notes) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work_dir", default=os.path.join(ROOT, "benchmarks", "work"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reference_repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train_steps", type=int, default=8)
    parser.add_argument("--manual_steps", type=int, default=12, help="steps per run of part 9 (2 are warm-up)")
    parser.add_argument("--only", choices=("reports", "manual_verbalizer", "ray", "service", "ceiling"),
                        help="run only this part")
    parser.add_argument("--ceiling_texts", type=int, default=None,
                        help="--only ceiling: the first N tnews test texts (default all 2010)")
    parser.add_argument("--service_requests", type=int, default=1000,
                        help="part 10: requests per client count (1 client: --latency_texts texts once each)")
    parser.add_argument("--service_duration", type=float, default=30.0, help="part 10: at most seconds per run")
    parser.add_argument("--service_texts", type=int, default=None,
                        help="part 10: only the first N tnews test texts, for infer.py, the in-process timings and "
                             "the clients (default all 2010; fewer: shorter rounds on a busy machine)")
    parser.add_argument("--latency_texts", type=int, default=300, help="part 10: texts timed at 1 client, in process")
    parser.add_argument("--service_memory_requests", type=int, default=100_000, help="part 11: requests")
    parser.add_argument("--service_instances", default="auto,1,2",
                        help="part 10: serve.py --instances settings measured side by side (the first, the default, is the main rows)")
    parser.add_argument("--serve_args", default="", help="parts 10, 11: extra serve.py flags, e.g. '--max_wait_ms 0'")
    parser.add_argument("--memory", action="store_true", help="Only the streaming memory check (no ../shared).")
    parser.add_argument("--baseline", help="With --memory: an earlier checkout whose infer.py to compare.")
    parser.add_argument("--verification", metavar="EXPORT_DIR",
                        help="Only the start-up cost of the sha256 checks, on this (full-size) export.")
    args = parser.parse_args()
    if args.verification:
        cost = verification_cost(args.verification, args.threads, args.repeats)
        print(json.dumps(cost, indent=2))
        print(f"sha256 of model.onnx ({cost['model_mb']:.0f} MB) {median(cost['sha256_s']):.2f} s alone; "
              f"ExportedClassifier {median(cost['with_check_s']):.2f} s with the check, "
              f"{median(cost['without_check_s']):.2f} s without (medians of {args.repeats})")
        return 0
    if args.memory:
        os.makedirs(args.work_dir, exist_ok=True)
        results = streaming_memory(args.work_dir, args.threads, args.baseline)
        table = report_memory(results)
        with open(os.path.join(ROOT, "benchmarks", "memory.json"), "w", encoding="utf-8") as fp:
            json.dump(results, fp, indent=2)
        with open(os.path.join(ROOT, "benchmarks", "memory.md"), "w", encoding="utf-8") as fp:
            fp.write(f"Command: `python benchmarks/bench.py {' '.join(sys.argv[1:])}`\n\n" + table)
        print(table)
        return 0
    for path in (TNEWS, VOCAB):
        if args.only not in ("reports", "ray") and not os.path.exists(path):
            raise SystemExit(f"{path} not found: the benchmark needs ../shared (FewCLUE tnews, ERNIE vocab)")
    os.makedirs(args.work_dir, exist_ok=True)
    if args.only:
        return run_part(args)
    out = os.path.join(args.work_dir, "outputs")
    os.makedirs(out, exist_ok=True)
    started = time.time()
    paths = setup(args.work_dir, args.threads)
    test_file = os.path.join(TNEWS, "test.txt")
    results = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count(), "threads": args.threads},
        "cpu": cpu_peak(),
        "onnx_mb": os.path.getsize(os.path.join(paths["export"], "model.onnx")) / 2 ** 20,
        "repeats": args.repeats,
    }
    results["end_to_end"] = end_to_end(paths, test_file, args.threads, args.repeats, args.reference_repeats, out)
    results["in_process"] = in_process(paths, test_file, args.threads, args.repeats)
    results["int8_agreement"] = int8_agreement(args.work_dir, args.threads)
    results["train_overhead"] = train_overhead(paths, args.work_dir, args.repeats, args.train_steps)
    results["gemm"] = gemm_ceiling(args.threads)
    results["reports"] = report_scaling(args.work_dir)
    results["manual_verbalizer"] = manual_verbalizer_steps(args.work_dir, args.repeats, args.manual_steps)
    results.update(service(args, paths, test_file))
    results["seconds"] = round(time.time() - started)
    table = (report(results, args.threads) + "\n8. Classification report vs number of labels\n\n"
             + reports_table(results["reports"]) + "\n9. Training step, --verbalizer manual vs soft\n\n"
             + manual_verbalizer_table(results["manual_verbalizer"]) + "\n10, 11. HTTP service (serve.py)\n\n"
             + service_table(results["service"], results["service_memory"]) + "\nThe --instances settings side by side "
             "(medians of the rounds):\n\n" + instances_table(results["service"]))
    with open(os.path.join(ROOT, "benchmarks", "results.json"), "w", encoding="utf-8") as fp:
        json.dump(results, fp, indent=2, default=float)
    with open(os.path.join(ROOT, "benchmarks", "results.md"), "w", encoding="utf-8") as fp:
        fp.write(f"Command: `make bench` ({' '.join(sys.argv[1:]) or 'defaults'}); {results['machine']}; "
                 f"{results['seconds']} s\n\n" + table)
    print(table)
    return 0


def first_lines(path: str, n: Optional[int], work: str) -> str:
    """`path` itself, or (`n`) a copy of its first n lines in `work` (a shorter round on a busy machine)."""
    if not n:
        return path
    with open(path, encoding="utf-8") as fp:
        lines = [line for _, line in zip(range(n), fp)]
    short = os.path.join(work, f"{os.path.splitext(os.path.basename(path))[0]}-first{n}.txt")
    with open(short, "w", encoding="utf-8") as fp:
        fp.writelines(lines)
    return short


def service(args, paths: dict, test_file: str) -> dict:
    """Parts 10 and 11 with the command line's settings."""
    test_file = first_lines(test_file, args.service_texts, args.work_dir)
    serve_args = args.serve_args.split()
    return {"service": service_speed(paths, test_file, args.threads, args.repeats, args.service_requests,
                                     args.service_duration, args.latency_texts, serve_args,
                                     instances=args.service_instances.split(",")),
            "service_memory": service_memory(args.work_dir, test_file, args.threads, args.service_memory_requests,
                                             serve_args=serve_args)}


def run_part(args) -> int:
    """`--only PART`: that measurement alone; benchmarks/results_PART.json, results_PART.md and the
    table on stdout."""
    started = time.time()
    if args.only == "reports":
        results = {"reports": report_scaling(args.work_dir)}
        table = reports_table(results["reports"])
    elif args.only == "ray":
        results = {"ray": ray_vs_local(args.work_dir, args.repeats)}
        table = ray_table(results["ray"])
    elif args.only == "ceiling":
        results = {"ceiling": ceiling(base_export(args.work_dir), os.path.join(TNEWS, "test.txt"), args.threads,
                                      args.repeats, args.ceiling_texts)}
        table = ceiling_table(results["ceiling"])
    elif args.only == "service":
        results = service(args, base_export(args.work_dir), os.path.join(TNEWS, "test.txt"))
        table = (service_table(results["service"], results["service_memory"]) + "\nThe --instances settings side "
                 "by side (medians of the rounds):\n\n" + instances_table(results["service"]))
    else:
        results = {"manual_verbalizer": manual_verbalizer_steps(args.work_dir, args.repeats, args.manual_steps)}
        table = manual_verbalizer_table(results["manual_verbalizer"])
    results["machine"] = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                          "loadavg_end": os.getloadavg()}
    results["seconds"] = round(time.time() - started)
    with open(os.path.join(ROOT, "benchmarks", f"results_{args.only}.json"), "w", encoding="utf-8") as fp:
        json.dump(results, fp, indent=2, default=float)
    with open(os.path.join(ROOT, "benchmarks", f"results_{args.only}.md"), "w", encoding="utf-8") as fp:
        fp.write(f"Command: `python benchmarks/bench.py {' '.join(sys.argv[1:])}`; {results['machine']}; "
                 f"{results['seconds']} s\n\n" + table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
