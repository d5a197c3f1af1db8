"""train.py plus dumps of this process's weights when training starts and when it ends (before any reload).

Used by tests/training/test_distributed.py: `DUMP_DIR=... python dp_worker.py <train.py flags>`, alone or
under `paddle.distributed.launch`; writes DUMP_DIR/rank<R>-initial.npz and DUMP_DIR/rank<R>.npz.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np  # noqa: E402
import paddle  # noqa: E402

import train  # noqa: E402
import utils.training.trainer as training  # noqa: E402
from paddlenlp.trainer import TrainerCallback  # noqa: E402
from utils.errors import run_cli  # noqa: E402


def dump(model, suffix=""):
    layer = model._layers if isinstance(model, paddle.DataParallel) else model
    rank = paddle.distributed.get_rank() if paddle.distributed.get_world_size() > 1 else 0
    np.savez(os.path.join(os.environ["DUMP_DIR"], f"rank{rank}{suffix}.npz"),
             **{name: tensor.numpy() for name, tensor in layer.state_dict().items()})


class DumpWeights(TrainerCallback):
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        dump(model, "-initial")

    def on_train_end(self, args, state, control, model=None, **kwargs):
        dump(model)


_init = training.PTuningTrainer.__init__


def _init_with_dump(self, *args, **kwargs):
    kwargs["callbacks"] = list(kwargs.get("callbacks") or []) + [DumpWeights()]
    _init(self, *args, **kwargs)


training.PTuningTrainer.__init__ = _init_with_dump

if __name__ == "__main__":
    sys.exit(run_cli(train.main, sys.argv[1:]))
