"""Which labels are wrong? Out-of-fold probabilities from K train.py runs, then confident learning.

    python audit.py --data_dir ./data/tnews --output_dir ./audit --folds 5 --prompt "这条新闻标题的主题是" \
        --max_steps 1000 --eval_steps 100 --learning_rate 3e-5 --ppt_learning_rate 3e-4

Each fold of train.txt (and dev.txt with --include_dev) is held out once while a model trains on the
others (train.py's model, prompt and training flags, as train.py reads them); cleanlab ranks the given
labels the held-out predictions disagree with. Writes label_issues.tsv (most suspect first),
label_issues.html, label_issues.label-studio.json (review tasks) with its .xml config,
oof_probabilities.tsv and audit.json into --output_dir; the fold runs are in OUTPUT_DIR/folds/fold-K,
and running the same command again resumes an interrupted audit. See utils/audit/.
"""
import sys

from utils.errors import run_cli


def main(argv):
    from utils.flags.audit import parse_audit_args

    flags = parse_audit_args(argv)
    from utils.model import compat
    from utils.audit.pipeline import run_audit

    compat.apply()
    run_audit(flags)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
