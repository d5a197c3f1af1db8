"""Task-adaptive masked-LM pretraining: continue ERNIE's MLM training on your unlabeled texts.

    python pretrain.py --model_name_or_path ernie-3.0-base-zh --input_file ./data/tnews/unlabeled.txt \
        --output_dir ./checkpoints/tapt --max_seq_length 128 --masking word --masked_lm_prob 0.15 \
        --per_device_train_batch_size 32 --learning_rate 5e-5 --max_steps 2000 --save_steps 200 --logging_steps 20

then `python train.py --model_name_or_path ./checkpoints/tapt ...`. Checkpoints, resume
(--resume_from_checkpoint) and run-directory rules are train.py's. See utils/training/pretraining.py.
"""
import sys

from utils.errors import run_cli


def main(argv):
    from utils.flags.parser import parse_flags
    from utils.flags.pretrain import PretrainArguments
    from utils.flags.trainer import PretrainingArguments

    model_args, training_args = parse_flags((PretrainArguments, PretrainingArguments), argv, "pretrain.py", __doc__,
                                            args_file=True)
    from utils.model import compat
    from utils.console import run_summary
    from utils.training.pretraining import run

    compat.apply()
    run(model_args, training_args)
    if training_args.should_save:
        print(run_summary(training_args.output_dir), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
