"""train.py whose process 1 drifts from process 0 after the first optimizer step (one bias nudged by 1e-6):
the run must stop at its next save and save nothing (tests/training/test_distributed.py). Prints `NUDGED <name>`."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import paddle  # noqa: E402

import train  # noqa: E402
import utils.training.trainer as training  # noqa: E402
from paddlenlp.trainer import TrainerCallback  # noqa: E402
from utils.errors import run_cli  # noqa: E402


class Drift(TrainerCallback):
    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step != 1 or paddle.distributed.get_rank() != 1:
            return
        layer = model._layers if isinstance(model, paddle.DataParallel) else model
        name, tensor = next((n, t) for n, t in layer.state_dict().items() if n.endswith("bias"))
        with paddle.no_grad():
            tensor.set_value(tensor + 1e-6)
        print(f"NUDGED {name}", flush=True)


_init = training.PTuningTrainer.__init__


def _init_with_drift(self, *args, **kwargs):
    kwargs["callbacks"] = list(kwargs.get("callbacks") or []) + [Drift()]
    _init(self, *args, **kwargs)


training.PTuningTrainer.__init__ = _init_with_drift

if __name__ == "__main__":
    sys.exit(run_cli(train.main, sys.argv[1:]))
