"""Training-step times of train.py's Trainer for one set of train.py flags; prints JSON.

    python benchmarks/train_step_time.py --skip 2 -- --model_name_or_path DIR --data_dir DIR ... --max_steps 12

The job is the one train.py builds (`utils.training.run.prepare`); a callback times each optimizer
step (data, forward, backward, optimizer), and the first `--skip` steps (warm-up) are dropped.
"""
import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from paddlenlp.trainer import TrainerCallback  # noqa: E402

from utils.model import compat  # noqa: E402
from utils.flags.train import parse_args  # noqa: E402
from utils.training.run import Run, prepare  # noqa: E402


class StepTimer(TrainerCallback):
    def __init__(self):
        self.seconds = []
        self._start = None

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds.append(time.perf_counter() - self._start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip", type=int, default=2, help="warm-up steps left out of the median")
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="train.py flags, after --")
    args = parser.parse_args()
    train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
    compat.apply()
    trainer = prepare(Run(*parse_args(train_args)).open())
    timer = StepTimer()
    trainer.add_callback(timer)
    trainer.train()
    measured = timer.seconds[args.skip:]
    print(json.dumps({"median_seconds": statistics.median(measured), "step_seconds": timer.seconds,
                      "skipped": args.skip}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
