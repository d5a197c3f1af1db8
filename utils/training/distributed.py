"""Data-parallel training that keeps every process's model identical.

Paddle's `DataParallel` all-reduces gradients through a reducer that, on Paddle 3.3, silently
skips gradients that are strided views: a parameter used as `weight.T` (paddlenlp's
`TransposedLinear`, the SoftVerbalizer head) gets a non-contiguous gradient that stays local.
Per-group gradient clipping then spreads the difference to every prompt parameter, so each
process trained its own prompt. Here every training step runs with the reducer off and then
all-reduces (averages) the gradient of *every* trainable parameter explicitly, whatever its
layout (contiguous copies; Paddle's fused helper garbles strided gradients too); `check_in_sync` compares a fingerprint of all weights across processes at each save, so
a divergence can never again be silent.
"""
from __future__ import annotations

import zlib
from typing import Iterable, List

import numpy as np
import paddle


class RanksDivergedError(RuntimeError):
    """The processes of a data-parallel run hold different weights (a bug, never the user's fault)."""


def world_size() -> int:
    return paddle.distributed.get_world_size() if paddle.distributed.is_initialized() else 1


BUCKET_ELEMENTS = 32 << 20  # 128 MB of float32 per all-reduce: bounded extra memory on big models


def allreduce_gradients(parameters: Iterable[paddle.Tensor]) -> None:
    """Average the gradients of `parameters` over all processes, in place, whatever their layout.

    Called after every backward pass: gradients accumulated over several micro-batches stay
    correct, since the part already averaged is the same on every process. Each gradient is
    copied contiguous into a flat bucket, reduced, and assigned back by value: Paddle's own fused
    helper (`fused_allreduce_gradients`) writes strided gradients back in the wrong element order.
    """
    world = world_size()
    params = [p for p in parameters if not p.stop_gradient and p.grad is not None]
    if world <= 1 or not params:
        return
    buckets: List[List[paddle.Tensor]] = []
    size = 0
    for param in params:
        if not buckets or size + param.grad.size > BUCKET_ELEMENTS or buckets[-1][0].grad.dtype != param.grad.dtype:
            buckets.append([])
            size = 0
        buckets[-1].append(param)
        size += param.grad.size
    for bucket in buckets:
        flat = paddle.concat([p.grad.contiguous().reshape([-1]) for p in bucket])
        paddle.distributed.all_reduce(flat)
        flat = flat / world
        offset = 0
        for param in bucket:
            count = param.grad.size
            paddle.assign(flat[offset:offset + count].reshape(param.grad.shape), output=param.grad)
            offset += count


def fingerprints(named_tensors: Iterable) -> List[int]:
    """One CRC32 of the raw bytes per tensor: equal only for bit-identical weights."""
    return [zlib.crc32(np.ascontiguousarray(tensor.numpy()).tobytes()) for _, tensor in named_tensors]


def check_in_sync(model: paddle.nn.Layer, where: str) -> None:
    """Raise `RanksDivergedError` unless every process holds bit-identical weights."""
    if world_size() <= 1:
        return
    named = list(model.state_dict().items())
    mine = paddle.to_tensor(np.array(fingerprints(named), dtype="int64"))
    gathered: List[paddle.Tensor] = []
    paddle.distributed.all_gather(gathered, mine)
    table = np.stack([t.numpy() for t in gathered])
    differing = [name for index, (name, _) in enumerate(named) if len(set(table[:, index].tolist())) > 1]
    if differing:
        raise RanksDivergedError(
            f"{where}: the {len(gathered)} data-parallel processes hold different weights for {len(differing)} of "
            f"{len(named)} tensors (e.g. {differing[:5]}); refusing to save or report a model that is not one "
            "model. Please report this with the command line.")
