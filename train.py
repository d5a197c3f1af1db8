"""P-tuning text classification with ERNIE 3.0: train, evaluate, predict, export.

Flags are those of PaddleNLP's few-shot text classification app, e.g.

    python train.py --data_dir ./data/tnews --output_dir ./checkpoints/ --prompt "这条新闻标题的主题是" \
        --max_seq_length 128 --learning_rate 3e-5 --ppt_learning_rate 3e-4 --do_train --do_eval \
        --max_steps 1000 --eval_steps 100 --logging_steps 10 \
        --per_device_eval_batch_size 32 --per_device_train_batch_size 32

`python train.py --help` lists them all; README.md explains them.
"""
import sys

from utils.errors import run_cli


def main(argv):
    from utils.model import compat
    from utils.flags.train import parse_args
    from utils.console import run_summary
    from utils.training.run import run

    model_args, data_args, training_args = parse_args(argv)
    compat.apply()
    training_args.print_config(model_args, "Model")
    training_args.print_config(data_args, "Data")
    run(model_args, data_args, training_args, run_kind(data_args))
    if training_args.should_save:
        print(run_summary(training_args.output_dir), file=sys.stderr)
    return 0


def run_kind(data_args) -> type:
    """The run the flags ask for: with --teacher or --unlabeled_file, distillation (utils/training/distill.py)."""
    if data_args.distilling:
        from utils.training.distill import DistillationRun

        return DistillationRun
    from utils.training.run import Run

    return Run


if __name__ == "__main__":
    sys.exit(run_cli(main))
