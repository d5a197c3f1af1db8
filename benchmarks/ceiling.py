"""What this machine's GEMMs reach, measured (bench.py's ceiling; no assumed FMA units or clock).

    OPENBLAS_NUM_THREADS=2 .venv/bin/python benchmarks/ceiling.py --threads 2 [--repeats 10]

Prints one JSON object of GFLOP/s (medians of `--repeats` timed runs after a warm-up):
* `numpy_sgemm`: numpy (OpenBLAS) fp32 matmul, `--size`³ (default 2048³);
* `ort_fp32_ffn`: onnxruntime's fp32 `MatMul` on ERNIE-base's FFN shape, `--rows` tokens × 768 by
  a constant 768 × 3072 (the kernel the fp32 export spends most of its time in);
* `ort_int8_ffn`: onnxruntime's `MatMulInteger` (uint8 activations × int8 constant weights, what
  `quantize_dynamic` emits for the int8 export) on the same shape; int8 "FLOPs" counted as fp32's,
  2 per multiply-add.
bench.py runs it in a child process so that numpy's BLAS threads are `--threads` (OpenBLAS reads
OPENBLAS_NUM_THREADS at import).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from bench import median, timed  # noqa: E402  (benchmarks/ on sys.path: run as a script)

HIDDEN, FFN = 768, 3072  # ERNIE-3.0-base


def matmul_session(int8: bool, rows: int, threads: int):
    """An onnxruntime session of one (quantized) MatMul by a constant [HIDDEN, FFN] weight, and its feed."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if int8:
        weight = rng.integers(-127, 128, size=(HIDDEN, FFN), dtype=np.int8)
        inits = [numpy_helper.from_array(weight, "B"), numpy_helper.from_array(np.array(128, np.uint8), "a_zero")]
        node = helper.make_node("MatMulInteger", ["A", "B", "a_zero"], ["Y"])
        a_type, y_type = TensorProto.UINT8, TensorProto.INT32
        feed = rng.integers(0, 256, size=(rows, HIDDEN), dtype=np.uint8)
    else:
        inits = [numpy_helper.from_array(rng.standard_normal((HIDDEN, FFN), dtype=np.float32), "B")]
        node = helper.make_node("MatMul", ["A", "B"], ["Y"])
        a_type, y_type = TensorProto.FLOAT, TensorProto.FLOAT
        feed = rng.standard_normal((rows, HIDDEN), dtype=np.float32)
    graph = helper.make_graph([node], "ffn", [helper.make_tensor_value_info("A", a_type, [rows, HIDDEN])],
                              [helper.make_tensor_value_info("Y", y_type, [rows, FFN])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session, {"A": feed}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--size", type=int, default=2048, help="numpy sgemm: size x size x size")
    parser.add_argument("--rows", type=int, default=4096, help="onnxruntime: tokens in the FFN GEMM")
    args = parser.parse_args()
    a = np.random.rand(args.size, args.size).astype(np.float32)
    b = np.random.rand(args.size, args.size).astype(np.float32)
    out = {"threads": args.threads, "repeats": args.repeats, "size": args.size, "rows": args.rows,
           "openblas_num_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
           "numpy_sgemm": 2 * args.size ** 3 / median(timed(lambda: a @ b, args.repeats)) / 1e9}
    flops = 2 * args.rows * HIDDEN * FFN
    for name, int8 in (("ort_fp32_ffn", False), ("ort_int8_ffn", True)):
        session, feed = matmul_session(int8, args.rows, args.threads)
        out[name] = flops / median(timed(lambda: session.run(None, feed), args.repeats)) / 1e9
    out["loadavg"] = os.getloadavg()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
