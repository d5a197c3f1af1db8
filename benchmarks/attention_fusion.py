"""Issue 29: attention fusion on the exported graph: fused vs unfused export, side by side.

    python benchmarks/attention_fusion.py [--texts 512] [--rounds 7] [--threads 2]

Uses bench.py's ERNIE-3.0-base (random weights, real vocab) checkpoint trained 4 steps on tnews
(benchmarks/work/ckpt-base, built if missing) and exports it twice with export.py --quantize int8:
`--fuse_attention off` and `--fuse_attention on` (benchmarks/work/fusion_off, fusion_on). A third
fp32 graph fuses into the packed-weight `Attention` operator instead of `MultiHeadAttention`
(utils.export.fusion.fuse_attention(multi_head=False) on the unfused model.onnx), for comparison.

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
    """The checkpoint exported with --fuse_attention off and on (cached), and a packed-Attention fp32 graph."""
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
    packed = os.path.join(work, "fusion_packed_attention.onnx")
    if not os.path.isfile(packed):
        import onnx

        from utils.export.fusion import fuse_attention

        model, layers = fuse_attention(onnx.load(os.path.join(out["off"], "model.onnx")), multi_head=False)
        assert layers, "no attention fused"
        onnx.save(model, packed)
    out["packed"] = packed
    record = read(os.path.join(out["on"], "manifest.json"))["onnx"]["attention_fusion"]
    out["int8_fused"] = os.path.join(out["on"], "model_int8.onnx")
    if record["int8"]["graph"] != "fused":  # the export kept the unfused int8 graph: time the fused one anyway
        from utils.export.graph import quantize_int8

        bench.log(f"the export kept int8 unfused ({record['int8']['reason']}); quantizing the fused graph to time it")
        out["int8_fused"] = os.path.join(work, "fusion_int8_fused.onnx")
        if not os.path.isfile(out["int8_fused"]):
            quantize_int8(out["on"], "model.onnx", os.path.relpath(out["int8_fused"], out["on"]))
    return out


def batches(export_dir: str, texts: int) -> list:
    from utils.deploy.preprocess import PromptPreprocessor

    pre = PromptPreprocessor.from_export(export_dir)
    with open(os.path.join(bench.TNEWS, "test.txt"), encoding="utf-8") as fp:
        lines = [line.split("\t")[0] for line in fp.read().splitlines() if line.strip()][:texts]
    features = sorted(pre.encode([{"text_a": t} for t in lines]), key=lambda f: len(f["input_ids"]))
    return [pre.pad(features[i:i + 32]) for i in range(0, len(features), 32)]


def measure(graphs: dict, feeds: list, threads: int, rounds: int) -> dict:
    """Seconds per pass over `feeds` for each graph, interleaved rounds."""
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
    args = parser.parse_args()
    os.makedirs(WORK, exist_ok=True)
    paths = exports(WORK)
    manifests = {mode: read(os.path.join(paths[mode], "manifest.json")) for mode in ("off", "on")}
    graphs = {"fp32 unfused": os.path.join(paths["off"], "model.onnx"),
              "fp32 MultiHeadAttention": os.path.join(paths["on"], "model.onnx"),
              "fp32 Attention (packed QKV)": paths["packed"],
              "int8 unfused": os.path.join(paths["off"], "model_int8.onnx"),
              "int8 MultiHeadAttention": paths["int8_fused"]}
    feeds = batches(paths["off"], args.texts)
    load_before = os.getloadavg()
    times = measure(graphs, feeds, args.threads, args.rounds)
    load_after = os.getloadavg()
    profiles = {name: profile(path, feeds, args.threads) for name, path in graphs.items()}

    def ratio(base: str, name: str) -> float:
        return statistics.median(b / t for b, t in zip(times[base], times[name]))

    rows = {name: {"median_s": statistics.median(t), "min_s": min(t), "texts_per_s": args.texts / statistics.median(t),
                   "texts_per_s_best": args.texts / min(t), "rounds_s": [round(x, 3) for x in t],
                   "speedup_vs_unfused": ratio(name.split()[0] + " unfused", name), "profile": profiles[name]}
            for name, t in times.items()}
    results = {"date": time.strftime("%Y-%m-%d %H:%M"), "texts": args.texts, "rounds": args.rounds,
               "threads": args.threads, "loadavg_before": load_before, "loadavg_after": load_after,
               "cpus": os.cpu_count(), "graphs": rows,
               "parity": {mode: {"results": manifests[mode]["parity"]["results"],
                                 "int8": manifests[mode]["parity"].get("int8"),
                                 "attention_fusion": manifests[mode]["onnx"].get("attention_fusion")}
                          for mode in ("off", "on")}}
    with open(RESULTS, "w", encoding="utf-8") as fp:
        json.dump(results, fp, indent=1, ensure_ascii=False)
    print("| graph | texts/s (median) | texts/s (best round) | speedup vs unfused (median of rounds) |")
    print("|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['texts_per_s']:.1f} | {row['texts_per_s_best']:.1f} | "
              f"**{row['speedup_vs_unfused']:.3f}×** |")
    print(f"load average before/after: {load_before} / {load_after}")


if __name__ == "__main__":
    main()
