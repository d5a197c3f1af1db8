"""Issue 29, a follow-up of attention_fusion.py: is the fused graph slower because of what the
optimizer fuses besides attention? (Not named fusion_options.py: onnxruntime.transformers imports a
module of that name.) The unfused export, the shipped fused graph (`Attention`, with
onnxruntime's bias + SkipLayerNormalization fusions), the same without the bias fusion into
SkipLayerNormalization, and without SkipLayerNormalization at all, timed side by side (fp32).

    python benchmarks/attention_fusion_options.py [--texts 512] [--rounds 7] [--threads 2]

Reuses attention_fusion.py's exports and timing (interleaved rounds, order reversed every other
one; medians of the per-round ratios). The variants are made by the export's own
`utils.export.fusion.fuse_attention` with FusionOptions fields overridden; speed only (the export's
parity gate applies to what it ships). Writes benchmarks/results_attention_fusion_options.json.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import time
from unittest import mock

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import attention_fusion as af  # noqa: E402  (benchmarks/attention_fusion.py)

RESULTS = os.path.join(af.ROOT, "benchmarks", "results_attention_fusion_options.json")
VARIANTS = {"no bias fusion into SkipLayerNormalization": {"enable_bias_skip_layer_norm": False},
            "no SkipLayerNormalization": {"enable_bias_skip_layer_norm": False, "enable_skip_layer_norm": False}}


def fused_variant(unfused: str, path: str, overrides: dict) -> str:
    """`fuse_attention` of the unfused graph with these FusionOptions fields (cached at `path`)."""
    import onnx
    from onnxruntime.transformers.fusion_options import FusionOptions

    from utils.export.fusion import fuse_attention

    if not os.path.isfile(path):
        original = FusionOptions.__init__

        def init(self, *args, **kwargs):
            original(self, *args, **kwargs)
            for key, value in overrides.items():
                setattr(self, key, value)

        with mock.patch.object(FusionOptions, "__init__", init):
            model, layers = fuse_attention(onnx.load(unfused))
        assert layers, "no attention fused"
        onnx.save(model, path)
    return path


def op_counts(path: str) -> dict:
    import onnx

    counts = collections.Counter(node.op_type for node in onnx.load(path, load_external_data=False).graph.node)
    return {op: n for op, n in sorted(counts.items()) if n >= 12}  # the per-layer ops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    os.makedirs(af.WORK, exist_ok=True)
    paths = af.exports(af.WORK)
    unfused = os.path.join(paths["off"], "model.onnx")
    graphs = {"unfused": unfused, "Attention (as shipped by --fuse_attention on)": paths["attention"]}
    for i, (name, overrides) in enumerate(VARIANTS.items()):
        graphs[f"Attention, {name}"] = fused_variant(unfused, os.path.join(af.WORK, f"fusion_variant{i}.onnx"), overrides)
    load_before = os.getloadavg()
    times = af.measure(graphs, af.batches(paths["off"], args.texts), args.threads, args.rounds)
    rows = {name: {"median_s": statistics.median(t), "min_s": min(t), "rounds_s": [round(x, 3) for x in t],
                   "speedup_vs_unfused": statistics.median(b / x for b, x in zip(times["unfused"], t)),
                   "ops": op_counts(graphs[name])} for name, t in times.items()}
    with open(RESULTS, "w", encoding="utf-8") as fp:
        json.dump({"date": time.strftime("%Y-%m-%d %H:%M"), "texts": args.texts, "rounds": args.rounds,
                   "threads": args.threads, "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
                   "graphs": rows}, fp, indent=1)
    print("| fp32 graph | median s a pass | texts/s | speedup vs unfused (median of rounds) |")
    print("|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['median_s']:.2f} | {args.texts / row['median_s']:.1f} | "
              f"**{row['speedup_vs_unfused']:.3f}×** |")


if __name__ == "__main__":
    main()
