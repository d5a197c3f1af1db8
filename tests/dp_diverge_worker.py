"""Two processes whose weights differ on purpose: `check_in_sync` must refuse (tests/test_distributed.py)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import paddle  # noqa: E402
import paddle.distributed as dist  # noqa: E402

from utils.distributed import RanksDivergedError, check_in_sync  # noqa: E402

dist.init_parallel_env()
paddle.seed(0)
layer = paddle.nn.Linear(4, 3)
dist.broadcast(layer.weight, src=0)
dist.broadcast(layer.bias, src=0)
check_in_sync(layer, "after broadcast")  # identical: passes
if dist.get_rank() == 1:
    with paddle.no_grad():
        layer.bias.set_value(layer.bias + 1e-6)
try:
    check_in_sync(layer, "after a change on rank 1")
except RanksDivergedError as exc:
    print("DIVERGED:", exc, flush=True)
    sys.exit(3)
sys.exit(0)
