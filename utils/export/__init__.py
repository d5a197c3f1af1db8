"""The export: one pipeline and one parity gate, for a checkpoint and for an ensemble alike.

    graph.py      the folded inference layer, static graph, ONNX, fp16, int8
    fusion.py     attention subgraphs -> onnxruntime's fused Attention operators, kept where parity (and speed) hold
    parity.py     the parity gate: the dynamic-graph reference vs Paddle Inference vs onnxruntime
    pipeline.py   `ExportSource` (what to export) -> the atomic export directory; `export_checkpoint`
    card.py       the model cards (README.md) of exports, run and multirun directories: where each fact lives
"""
