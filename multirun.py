"""Repeat one train.py configuration over several seeds and/or FewCLUE splits; report mean ± std.

    python multirun.py --output_dir OUT --seeds 1 2 3 -- --data_dir ./data/tnews \
        --prompt "这条新闻标题的主题是" --do_train --do_eval --do_predict --max_steps 1000 --eval_steps 100
    python multirun.py --output_dir OUT --splits_dir ./data/tnews/splits --split_ids 0 1 2 3 4 -- \
        --prompt "这条新闻标题的主题是" --do_train --do_eval --do_predict --max_steps 1000 --eval_steps 100

Everything after `--` goes to train.py unchanged (each run gets its own --output_dir OUT/runs/<name>,
--seed and, with --splits_dir, --data_dir). The table of per-run metrics with mean ± sample std is
printed and written to OUT/summary.md and OUT/summary.json. See utils/training/multirun.py.
"""
import sys

from utils.errors import run_cli


def main(argv):
    from utils.flags.multirun import DESCRIPTION, USAGE, MultirunArguments
    from utils.flags.parser import parse_flags

    (args,) = parse_flags(MultirunArguments, argv, "multirun.py", DESCRIPTION, usage=USAGE)
    from utils.training.multirun import run_all

    run_all(args, args.train_flags)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
