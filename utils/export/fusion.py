"""Attention fusion: paddle2onnx's attention subgraphs as onnxruntime's fused contrib operators.

paddle2onnx writes each self-attention layer as some twenty nodes (three MatMul+Add, Reshape and
Transpose per head split, the scale, Q·Kᵀ, the mask add, Softmax, ·V, Transpose, Reshape).
onnxruntime's transformer optimizer (`onnxruntime.transformers.optimizer`, model type `bert`)
replaces such a subgraph by one `Attention` node (packed Q/K/V weights, one GEMM) or one
`MultiHeadAttention` node (the three projections stay MatMuls), but it matches the graph PyTorch's
BERT exports, and paddle2onnx's differs from it in two places:

* the query is scaled before Q·Kᵀ (Paddle's `scale` op: Mul by head_size^-0.5, then Add 0); the
  optimizer expects the scores divided by sqrt(head_size) after it;
* the additive mask is `(input_ids == pad) * -1e4` unsqueezed to [batch, 1, 1, sequence]; the
  optimizer expects `(1 - mask) * -1e4` of a 2D 0/1 mask, which it then feeds the fused node.

`normalise` rewrites exactly these two places into the expected form (the mask bit for bit, the
scale up to float rounding), once it has checked that the scale is head_size^-0.5 (the fused
kernels apply that scale themselves); then the stock optimizer fuses. Whatever does not match is
left as it was; a graph in which nothing matched comes back unchanged. The export decides which
graph to keep (`AttentionFusion`, used by utils/export/pipeline.py): the fused one must pass the
same parity check as the unfused one and, with `--fuse_attention auto`, be faster on this machine.
"""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from ..choices import FuseAttention
from ..console import quiet_native_output
from ..deploy.format import ONNX_FILE, ONNX_FP16_FILE, ONNX_INT8_FILE, OUTPUT_NAME

FUSED_OPS = ("Attention", "MultiHeadAttention")
BOOLEAN_OPS = ("Equal", "Not", "And", "Or", "Xor", "Less", "Greater", "LessOrEqual", "GreaterOrEqual")
TIMING_ROUNDS = 5  # interleaved rounds of the export-time comparison (`--fuse_attention auto`)
# The fused operator per variant: fp32 and fp16 take `Attention` (Q, K and V in one packed GEMM, the
# faster one on the benchmark's CPU); int8 takes `MultiHeadAttention`, whose projections stay MatMuls
# that quantize exactly as the unfused graph's (onnxruntime's quantizer would make `Attention` a
# QAttention with 7-bit weights, another quantization).
OPS = {"fp32": "Attention", "fp16": "Attention", "int8": "MultiHeadAttention"}
# The candidates, written into the export directory while it is built and removed before its manifest.
FUSED_GRAPH = ".model_fused.onnx"
FUSED_MULTI_HEAD_GRAPH = ".model_fused_multihead.onnx"
FUSED_INT8_GRAPH = ".model_int8_fused.onnx"
FUSED_FP16_GRAPH = ".model_fp16_fused.onnx"


class GraphIndex:
    """Who produces each tensor (Identity nodes seen through) and the graph's constants."""

    def __init__(self, model):
        from onnx import numpy_helper

        self.graph = model.graph
        self.constants = {t.name: numpy_helper.to_array(t) for t in self.graph.initializer}
        self.constants.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in self.graph.node
                               if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"})
        self.producers = {output: node for node in self.graph.node for output in node.output}

    def parent(self, name: str, op_type: Optional[str] = None):
        """The node producing `name`, Identities skipped; None if it is not an `op_type` node."""
        node = self.producers.get(name)
        while node is not None and node.op_type == "Identity":
            node = self.producers.get(node.input[0])
        return node if node is not None and (op_type is None or node.op_type == op_type) else None

    def scalar_input(self, node) -> Tuple[Optional[int], Optional[float]]:
        """`(index, value)` of the node's one-element constant input, or (None, None)."""
        for index, name in enumerate(node.input):
            value = self.constants.get(name)
            if value is not None and value.size == 1:
                return index, float(value.reshape(()))
        return None, None

    def skip_zero_add(self, name: str) -> str:
        """`x` for a tensor `x + 0` (the bias of Paddle's `scale` op), else `name` itself."""
        add = self.parent(name, "Add")
        if add is not None:
            index, value = self.scalar_input(add)
            if index is not None and value == 0.0 and self.constants[add.input[index]].ndim == 0:
                return add.input[1 - index]
        return name


def query_scale(index: GraphIndex, scores):
    """`(query, head_size)` when the scores MatMul reads `query * head_size^-0.5 (+ 0)` of a query
    split into heads by Reshape(0, 0, heads, head_size) + Transpose; else None."""
    mul = index.parent(index.skip_zero_add(scores.input[0]), "Mul")
    if mul is None:
        return None
    at, scale = index.scalar_input(mul)
    if at is None:
        return None
    query = mul.input[1 - at]
    transpose = index.parent(query, "Transpose")
    reshape = index.parent(transpose.input[0], "Reshape") if transpose is not None else None
    shape = index.constants.get(reshape.input[1]) if reshape is not None else None
    if shape is None or shape.ndim != 1 or len(shape) != 4 or shape[-1] <= 0:
        return None
    head_size = int(shape[-1])
    return (query, head_size) if abs(scale * np.sqrt(head_size) - 1.0) < 1e-6 else None


def padding_mask(index: GraphIndex, mask: str):
    """`(is_padding, fill)` when `mask` is Unsqueeze(axes 1, 2) of `Cast(is_padding) * fill (+ 0)`,
    `is_padding` a boolean [batch, sequence] tensor and `fill` negative; else None."""
    unsqueeze = index.parent(mask, "Unsqueeze")
    if unsqueeze is None or len(unsqueeze.input) < 2:
        return None
    axes = index.constants.get(unsqueeze.input[1])
    if axes is None or sorted(int(a) for a in axes.reshape(-1)) != [1, 2]:
        return None
    mul = index.parent(index.skip_zero_add(unsqueeze.input[0]), "Mul")
    at, fill = index.scalar_input(mul) if mul is not None else (None, None)
    if at is None or not fill < 0:
        return None
    cast = index.parent(mul.input[1 - at], "Cast")
    if cast is None or index.parent(cast.input[0]) is None or index.parent(cast.input[0]).op_type not in BOOLEAN_OPS:
        return None
    return cast.input[0], fill


def mask_nodes(is_padding: str, fill: float, prefix: str) -> Tuple[list, list, str]:
    """`(nodes, initializers, output)`: `(1 - Cast(Not is_padding)) * fill` through a 2D int32 0/1 mask
    unsqueezed twice, the form onnxruntime's optimizer reads the mask from (same values)."""
    from onnx import TensorProto, helper, numpy_helper

    constants = [numpy_helper.from_array(np.array(value, dtype=dtype), f"{prefix}_{name}") for name, value, dtype in
                 (("fill", fill, np.float32), ("one", 1.0, np.float32), ("axis1", [1], np.int64),
                  ("axis2", [2], np.int64))]
    fill_name, one, axis1, axis2 = (c.name for c in constants)
    nodes = [helper.make_node("Not", [is_padding], [f"{prefix}_keep"], name=f"{prefix}_not"),
             helper.make_node("Cast", [f"{prefix}_keep"], [f"{prefix}_mask2d"], name=f"{prefix}_cast_int",
                              to=TensorProto.INT32),
             helper.make_node("Unsqueeze", [f"{prefix}_mask2d", axis1], [f"{prefix}_u1"], name=f"{prefix}_unsqueeze1"),
             helper.make_node("Unsqueeze", [f"{prefix}_u1", axis2], [f"{prefix}_u2"], name=f"{prefix}_unsqueeze2"),
             helper.make_node("Cast", [f"{prefix}_u2"], [f"{prefix}_float"], name=f"{prefix}_cast_float",
                              to=TensorProto.FLOAT),
             helper.make_node("Sub", [one, f"{prefix}_float"], [f"{prefix}_padding"], name=f"{prefix}_sub"),
             helper.make_node("Mul", [f"{prefix}_padding", fill_name], [f"{prefix}_bias"], name=f"{prefix}_mul")]
    return nodes, constants, f"{prefix}_bias"


def attention_scores(index: GraphIndex) -> List[tuple]:
    """`(softmax, add, scores)` of each Softmax over `Add(MatMul(a, b), mask)` with neither `a` nor `b`
    a weight (Q·Kᵀ: a head's `MatMul(x, W) + bias` is no attention): the attention layers."""
    found = []
    for softmax in [n for n in index.graph.node if n.op_type == "Softmax"]:
        add = index.parent(softmax.input[0], "Add")
        scores = next((index.parent(i) for i in add.input if index.parent(i, "MatMul") is not None), None) \
            if add is not None else None
        if scores is not None and not any(i in index.constants for i in scores.input):
            found.append((softmax, add, scores))
    return found


def normalise(model) -> int:
    """Rewrite, in place, each attention subgraph whose scale and mask `query_scale` and
    `padding_mask` recognise into the form onnxruntime's optimizer fuses; return how many."""
    from onnx import helper, numpy_helper

    index, graph = GraphIndex(model), model.graph
    masks: Dict[str, str] = {}  # the graph's mask tensor -> its rewritten form (shared by the layers)
    nodes, count = [], 0
    for number, (_, add, scores) in enumerate(attention_scores(index)):
        mask = next(i for i in add.input if index.parent(i) is not scores)
        found, padding = query_scale(index, scores), padding_mask(index, mask)
        if found is None or (mask not in masks and padding is None):
            continue
        query, head_size = found
        if mask not in masks:
            mask_graph, constants, masks[mask] = mask_nodes(*padding, prefix=f"attention_mask_{len(masks)}")
            nodes += mask_graph
            graph.initializer.extend(constants)
        divisor = numpy_helper.from_array(np.array(np.sqrt(head_size), dtype=np.float32), f"attention_{number}_sqrt")
        graph.initializer.append(divisor)
        scores.input[0] = query
        nodes.append(helper.make_node("Div", [scores.output[0], divisor.name], [f"attention_{number}_scaled"],
                                      name=f"attention_{number}_scale"))
        add.input[:] = [f"attention_{number}_scaled" if index.parent(i) is scores else masks[mask] for i in add.input]
        count += 1
    graph.node.extend(nodes)
    return count


def fuse_attention(model, multi_head: bool = False) -> Tuple[object, int]:
    """`(graph, fused)`: a copy of the ONNX `model` with its attention subgraphs fused into
    `Attention` (or, `multi_head`, `MultiHeadAttention`) nodes, and how many were. Nothing fused:
    `model` itself, unchanged. Also fuses what the session fuses anyway (LayerNorm, Gelu, biases)."""
    import onnx
    from onnxruntime.transformers.fusion_options import AttentionMaskFormat, FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    candidate = onnx.ModelProto()
    candidate.CopyFrom(model)
    if normalise(candidate) == 0:
        return model, 0
    options = FusionOptions("bert")
    options.enable_shape_inference = False  # needs sympy; the fusions used here do without
    options.enable_embed_layer_norm = False  # the soft prompt's where() sits in the embeddings
    options.attention_mask_format = AttentionMaskFormat.AttentionMask  # the 0/1 mask, not a length (padding anywhere)
    options.use_multi_head_attention = multi_head
    with quiet_native_output("onnxruntime's transformer optimizer"):
        optimized = optimize_model(candidate, "bert", num_heads=0, hidden_size=0, optimization_options=options,
                                   opt_level=0)
        optimized.prune_graph()
        optimized.topological_sort()
    fused = count_ops(optimized.model, *FUSED_OPS)
    if not fused:
        return model, 0
    if not any(opset.domain == "com.microsoft" for opset in optimized.model.opset_import):
        optimized.model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))  # what its save() adds
    return optimized.model, fused


def count_ops(model, *op_types: str) -> int:
    return sum(node.op_type in op_types for node in model.graph.node)


def timing_batch(features: List[Dict[str, List[int]]]) -> List[Dict[str, List[int]]]:
    """The parity batch's examples without the ones longer than twice the median (the gate's
    deliberately long text): what `--fuse_attention auto` times, closer to infer.py's batches."""
    lengths = [len(f["input_ids"]) for f in features]
    limit = 2 * statistics.median(lengths)
    return [f for f, length in zip(features, lengths) if length <= limit]


def time_graphs(unfused: str, fused: str, feed: Dict[str, np.ndarray], rounds: int = TIMING_ROUNDS) -> dict:
    """Seconds per batch of the two ONNX files on `feed`, sessions as infer.py makes them, in
    interleaved rounds (the order alternating); medians, and the median of the per-round speedups."""
    from ..deploy.predictor import create_session

    sessions = [create_session(path) for path in (unfused, fused)]
    names = [i.name for i in sessions[0].get_inputs()]
    batch = {name: feed[name] for name in names}

    def seconds(session, runs: int) -> float:
        start = time.perf_counter()
        for _ in range(runs):
            session.run([OUTPUT_NAME], batch)
        return (time.perf_counter() - start) / runs

    warm = max(seconds(session, 1) for session in sessions)  # the first run also allocates
    runs = max(1, int(0.025 / max(warm, 1e-6)))  # a round of a tiny model: >= 25 ms of runs
    times: Tuple[List[float], List[float]] = ([], [])
    for round_ in range(rounds):
        for which in ((0, 1) if round_ % 2 == 0 else (1, 0)):
            times[which].append(seconds(sessions[which], runs))
    return {"rounds": rounds, "runs_per_round": runs, "batch": list(batch[names[0]].shape),
            "unfused_ms": round(1000 * statistics.median(times[0]), 3),
            "fused_ms": round(1000 * statistics.median(times[1]), 3),
            "speedup": round(statistics.median(u / f for u, f in zip(*times)), 3)}


@dataclass
class AttentionFusion:
    """One export's fusion: the fused candidate of model.onnx, which graph each variant keeps and
    why (`record`: manifest.json's onnx.attention_fusion). A fused graph replaces the unfused file
    only once it passed the parity check the unfused one passes (fp32: against the reference at the
    gate's tolerance, in the gate; int8: against the unfused int8 graph at that tolerance; fp16:
    against fp32 at the fp16 tolerance) and, with `auto`, was faster in `time_graphs` on
    `timing_feed`. fp16 is made for onnxruntime-gpu and cannot be timed here: `auto` leaves it unfused."""

    directory: str
    mode: str = FuseAttention.OFF.value
    timing_feed: Optional[Dict[str, np.ndarray]] = None
    record: dict = field(default_factory=dict)
    source: Optional[str] = None  # the fused fp32 candidate (a file in `directory`), fp16's source too
    multi_head_source: Optional[str] = None  # the MultiHeadAttention candidate int8 is quantized from
    timer: Callable[..., dict] = time_graphs

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def build(self, int8: bool = False) -> Optional[str]:
        """Write the fused candidates of model.onnx (`Attention`; with `int8` also `MultiHeadAttention`);
        return the fp32 one's path (None: nothing to fuse)."""
        import onnx

        self.record = {"mode": self.mode}
        if self.mode == FuseAttention.OFF.value:
            self.record["reason"] = "--fuse_attention off"
            return None
        model = onnx.load(self.path(ONNX_FILE))
        fused, layers = fuse_attention(model, multi_head=False)
        self.record.update(attention_subgraphs=len(attention_scores(GraphIndex(model))), fused_layers=layers)
        if not layers:
            self.record["reason"] = "no attention subgraph of this graph matched: every variant is unfused"
            return None
        self.source = FUSED_GRAPH
        onnx.save(fused, self.path(self.source))
        if int8:
            del fused
            multi_head, count = fuse_attention(model, multi_head=True)
            if count:
                self.multi_head_source = FUSED_MULTI_HEAD_GRAPH
                onnx.save(multi_head, self.path(self.multi_head_source))
        return self.path(self.source)

    def fp32(self, checks: Optional[List[dict]]) -> None:
        """model.onnx: the fused candidate if `checks` (the parity gate's of it) passed (and timing)."""
        if self.source is None:
            return self.unfused("fp32")
        self.decide("fp32", ONNX_FILE, self.source, checks or [])

    def int8(self, feed: Dict[str, np.ndarray], fp32_logits: np.ndarray, tolerance: float, decoder=None,
             probabilities: bool = False) -> None:
        """model_int8.onnx (already quantized from the unfused graph) or the fused graph quantized.

        Quantization rounds activations computed by the graph, so the fused graph's last-bit
        differences can flip a rounding and move int8 logits by a quantization step: the fused int8
        graph is held to the unfused one within the larger of `tolerance` and the unfused graph's own
        max |Δ| from fp32 on the batch: fusion may not move the int8 logits more than quantization
        does. (Their argmax agreement with fp32 is recorded, not required: on near ties, as a random
        model's, a quantization step flips it either way.)"""
        from .graph import quantize_int8
        from .parity import compare, onnxruntime_outputs

        if self.multi_head_source is None:
            return self.unfused("int8")
        with quiet_native_output("onnxruntime quantization"):
            quantize_int8(self.directory, self.multi_head_source, FUSED_INT8_GRAPH)
        unfused, fused = (onnxruntime_outputs(self.path(name), feed)[0] for name in (ONNX_INT8_FILE, FUSED_INT8_GRAPH))
        own = compare("unfused int8", fp32_logits, unfused, float("inf"), decoder, probabilities)
        check = compare("onnxruntime int8, attention fused, vs the unfused int8 graph", unfused, fused,
                        max(tolerance, own["max_abs_diff"]), decoder, probabilities)
        agreement = compare("fused int8", fp32_logits, fused, float("inf"), decoder, probabilities)["agreement"]
        check.update(tolerance_of="the larger of the gate's tolerance and the unfused int8 graph's max |Δ| from fp32",
                     fp32_agreement=agreement, unfused_fp32_agreement=own["agreement"],
                     passed=bool(check["max_abs_diff"] <= check["tolerance"]))
        self.decide("int8", ONNX_INT8_FILE, FUSED_INT8_GRAPH, [check])

    def fp16(self, feed: Dict[str, np.ndarray], fp32_logits: np.ndarray, decoder=None,
             probabilities: bool = False) -> None:
        """model_fp16.onnx (already converted from the unfused graph) or, with `on`, the fused one."""
        from .graph import convert_to_fp16
        from .parity import fp16_check

        if self.source is None or self.mode != FuseAttention.ON.value:
            return self.unfused("fp16", None if self.source is None else (
                "fp16 is made for onnxruntime-gpu and cannot be timed on this CPU: unfused unless "
                "--fuse_attention on"))
        with quiet_native_output("the fp16 conversion"):
            convert_to_fp16(self.directory, self.source, FUSED_FP16_GRAPH)
        check = fp16_check(self.directory, feed, fp32_logits, decoder, probabilities, file=FUSED_FP16_GRAPH,
                           gate=False)
        self.decide("fp16", ONNX_FP16_FILE, FUSED_FP16_GRAPH, [check])

    def decide(self, variant: str, shipped: str, candidate: str, checks: List[dict]) -> dict:
        """Keep `candidate` as `shipped` (both files in `directory`) or drop it; record why."""
        from .parity import describe_result

        entry = {"op": OPS[variant], "parity": checks}
        failed = [c for c in checks if not c.get("passed", True)]
        if failed or not checks:
            entry.update(graph="unfused", reason="the fused graph fails its parity check: " + (
                "; ".join(describe_result(c) for c in failed) or "not checked"))
        elif self.mode == FuseAttention.ON.value:
            entry.update(graph="fused", reason="--fuse_attention on")
        else:
            timing = self.timer(self.path(shipped), self.path(candidate), self.timing_feed)
            faster = timing["speedup"] > 1.0
            entry.update(graph="fused" if faster else "unfused", timing=timing, reason=(
                f"{'faster' if faster else 'not faster'} on this machine: {timing['speedup']:.3f}x (median of "
                f"{timing['rounds']} interleaved rounds on a batch of {timing['batch'][0]}x{timing['batch'][1]})"))
        if entry["graph"] == "fused":
            os.replace(self.path(candidate), self.path(shipped))
        self.record[variant] = entry
        return entry

    def unfused(self, variant: str, reason: Optional[str] = None) -> None:
        """`variant` kept unfused without trying: recorded with `reason` (default: the build's)."""
        self.record[variant] = {"graph": "unfused", "reason": reason or self.record.get("reason", "not built")}

    def finish(self) -> dict:
        """Remove the candidates left over; return the record."""
        for name in (FUSED_GRAPH, FUSED_MULTI_HEAD_GRAPH, FUSED_INT8_GRAPH, FUSED_FP16_GRAPH):
            if os.path.exists(self.path(name)):
                os.remove(self.path(name))
        return self.record
