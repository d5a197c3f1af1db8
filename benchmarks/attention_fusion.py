"""Issue 29: attention fusion on the exported graph: fused vs unfused export, side by side.

    python benchmarks/attention_fusion.py [--texts 512] [--rounds 7] [--threads 2]

Uses bench.py's ERNIE-3.0-base (random weights, real vocab) checkpoint trained 4 steps on tnews
(benchmarks/work/ckpt-base, built if missing) and exports it twice with export.py --quantize int8:
`--fuse_attention off` and `--fuse_attention on` (benchmarks/work/fusion_off, fusion_on: the
product's parity checks and choices). The fused graphs timed are made from the unfused model.onnx
by the export's own `utils.export.fusion.fuse_attention`: `Attention` (packed Q/K/V, what fp32
ships) and `MultiHeadAttention` (fp32 for comparison, and quantized: what int8 ships).

Measures onnxruntime's compute on the first `--texts` texts of tnews test.txt, encoded by infer.py's
preprocessing, length-sorted into batches of 32 (as infer.py), `--threads` threads: each round
runs every graph once over all batches, the order reversed every other round; medians (and minima)
of the rounds, and the median of the per-round ratios. Then one profiled pass per graph (share of
kernel time per operator). Writes benchmarks/results_attention_fusion.json and prints a table.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import read, run  # noqa: E402  (benchmarks/common.py)

import bench  # noqa: E402  (benchmarks/bench.py: the cached ERNIE-base checkpoint)

WORK = os.path.join(ROOT, "benchmarks", "work")
RESULTS = os.path.join(ROOT, "benchmarks", "results_attention_fusion.json")
PY = sys.executable


def exports(work: str) -> dict:
    """The checkpoint exported with --fuse_attention off and on (cached; `on` shows the product's
    parity checks and choices), and the fused graphs timed, made from the unfused model.onnx by the
    export's own function: `Attention` (what fp32 ships) and `MultiHeadAttention` (int8's source)."""
    import onnx

    from utils.export.fusion import fuse_attention
    from utils.export.graph import quantize_int8

    ckpt = bench.base_export(work)["ckpt"]
    out = {}
    for mode in ("off", "on"):
        target = os.path.join(work, f"fusion_{mode}")
        if not os.path.isfile(os.path.join(target, "manifest.json")):
            bench.log(f"exporting with --fuse_attention {mode}")
            run([PY, "export.py", "--resume_from_checkpoint", ckpt, "--output_dir", target, "--overwrite_output_dir",
                 "--data_dir", bench.TNEWS, "--quantize", "int8", "--fuse_attention", mode],
                os.path.join(work, f"fusion_{mode}.log"))
        out[mode] = target
    for key, multi_head in (("attention", False), ("multihead", True)):
        out[key] = os.path.join(work, f"fusion_{key}.onnx")
        if not os.path.isfile(out[key]):
            model, layers = fuse_attention(onnx.load(os.path.join(out["off"], "model.onnx")), multi_head=multi_head)
            assert layers, "no attention fused"
            onnx.save(model, out[key])
    out["multihead_int8"] = os.path.join(work, "fusion_multihead_int8.onnx")
    if not os.path.isfile(out["multihead_int8"]):
        quantize_int8(work, os.path.basename(out["multihead"]), os.path.basename(out["multihead_int8"]))
    return out


def batches(export_dir: str, texts: int) -> list:
    from utils.deploy.preprocess import PromptPreprocessor

    pre = PromptPreprocessor.from_export(export_dir)
    with open(os.path.join(bench.TNEWS, "test.txt"), encoding="utf-8") as fp:
        lines = [line.split("\t")[0] for line in fp.read().splitlines() if line.strip()][:texts]
    features = sorted(pre.encode([{"text_a": t} for t in lines]), key=lambda f: len(f["input_ids"]))
    return [pre.pad(features[i:i + 32]) for i in range(0, len(features), 32)]


def measure(graphs: dict, feeds: list, threads: int, rounds: int, after_round=None) -> dict:
    """Seconds per pass over `feeds` for each graph, interleaved rounds; `after_round(times)` after each."""
    from utils.deploy.predictor import create_session

    sessions = {name: create_session(path, num_threads=threads) for name, path in graphs.items()}

    def one_pass(session) -> float:
        names = [i.name for i in session.get_inputs()]
        start = time.perf_counter()
        for feed in feeds:
            session.run(["logits"], {k: feed[k] for k in names})
        return time.perf_counter() - start

    for session in sessions.values():
        one_pass(session)  # warm-up
    times = {name: [] for name in graphs}
    order = list(graphs)
    for round_ in range(rounds):
        for name in (order if round_ % 2 == 0 else order[::-1]):
            times[name].append(one_pass(sessions[name]))
        bench.log(f"round {round_ + 1}/{rounds}: " + ", ".join(f"{n} {t[-1]:.2f}s" for n, t in times.items()))
        if after_round is not None:
            after_round(times)
    return times


def profile(path: str, feeds: list, threads: int) -> dict:
    """Share of onnxruntime's kernel time per operator type over one pass."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(WORK, "fusion_profile")
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    for feed in feeds:
        session.run(["logits"], {k: feed[k] for k in names})
    trace = session.end_profiling()
    per_op = collections.Counter()
    for event in read(trace):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_op[event["args"]["op_name"]] += event["dur"]
    os.remove(trace)
    total = sum(per_op.values())
    return {op: round(t / total, 4) for op, t in per_op.most_common(8)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile_batches", type=int, default=4, help="batches of the profiled pass")
    args = parser.parse_args()
    os.makedirs(WORK, exist_ok=True)
    paths = exports(WORK)
    manifests = {mode: read(os.path.join(paths[mode], "manifest.json")) for mode in ("off", "on")}
    graphs = {"fp32 unfused": os.path.join(paths["off"], "model.onnx"),
              "fp32 MultiHeadAttention": paths["multihead"],
              "fp32 Attention (packed QKV)": paths["attention"],
              "int8 unfused": os.path.join(paths["off"], "model_int8.onnx"),
              "int8 MultiHeadAttention": paths["multihead_int8"]}
    feeds = batches(paths["off"], args.texts)
    load_before = os.getloadavg()

    def write(times: dict, profiles: dict) -> dict:
        """The results so far (each round rewrites them: a stopped run leaves its completed rounds)."""
        def ratio(name: str) -> float:
            base = times[name.split()[0] + " unfused"]
            return statistics.median(b / t for b, t in zip(base, times[name]))

        rows = {name: {"median_s": statistics.median(t), "min_s": min(t), "texts_per_s": args.texts / statistics.median(t),
                       "texts_per_s_best": args.texts / min(t), "rounds_s": [round(x, 3) for x in t],
                       "speedup_vs_unfused": ratio(name), "profile": profiles.get(name)}
                for name, t in times.items()}
        results = {"date": time.strftime("%Y-%m-%d %H:%M"), "texts": args.texts, "rounds_done": len(next(iter(
                   times.values()))), "rounds": args.rounds, "threads": args.threads, "loadavg_before": load_before,
                   "loadavg_now": os.getloadavg(), "cpus": os.cpu_count(), "graphs": rows,
                   "parity": {mode: {"results": manifests[mode]["parity"]["results"],
                                     "int8": manifests[mode]["parity"].get("int8"),
                                     "attention_fusion": manifests[mode]["onnx"].get("attention_fusion")}
                              for mode in ("off", "on")}}
        with open(RESULTS, "w", encoding="utf-8") as fp:
            json.dump(results, fp, indent=1, ensure_ascii=False)
        return rows

    times = measure(graphs, feeds, args.threads, args.rounds, after_round=lambda t: write(t, {}))
    profiles = {name: profile(path, feeds[:args.profile_batches], args.threads) for name, path in graphs.items()}
    rows = write(times, profiles)
    print("| graph | texts/s (median) | texts/s (best round) | speedup vs unfused (median of rounds) |")
    print("|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['texts_per_s']:.1f} | {row['texts_per_s_best']:.1f} | "
              f"**{row['speedup_vs_unfused']:.3f}×** |")
    print(f"load average before/now: {load_before} / {os.getloadavg()}")


if __name__ == "__main__":
    main()
