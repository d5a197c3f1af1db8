"""Search train.py's hyperparameters with Optuna; each trial is judged by its dev metric's mean - std over
seeds or FewCLUE splits (multirun.py's machinery), so a lucky seed does not win.

    python search.py --output_dir OUT --n_trials 30 --seeds 1 2 --space space.yaml -- \
        --model_name_or_path ernie-3.0-base-zh --data_dir ./data/tnews --prompt "这条新闻标题的主题是" \
        --do_train --max_steps 500 --eval_steps 100
    python search.py --output_dir OUT --n_trials 30 --splits_dir ./data/tnews/splits -- ...   # FewCLUE splits

Writes OUT/best_command.txt (a runnable train.py command), OUT/trials.tsv, the plots and OUT/search.json; the
study lives in OUT/study.db (or --storage) and the same command resumes it after a kill. See
docs/how-to/search.md and utils/search/.
"""
import sys

from utils.errors import run_cli


def main(argv):
    from utils.flags.parser import parse_flags
    from utils.flags.search import DESCRIPTION, USAGE, SearchArguments

    (args,) = parse_flags(SearchArguments, argv, "search.py", DESCRIPTION, usage=USAGE)
    from utils.search.run import run_search

    run_search(args)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
