"""`python -m utils.label_words`: the documented command of the label-word checker, kept where users
know it: its flags (utils.flags.label_words) parsed, then the checker (utils.model.label_words) runs."""
import sys

from utils.model.label_words import __doc__ as DESCRIPTION


def main(argv=None) -> int:
    """The command: returns its exit code (the error paragraph printed, as every script's)."""
    from utils.errors import run_cli

    return run_cli(_main, argv)


def _main(argv) -> int:
    from utils.flags.label_words import LabelWordsArguments
    from utils.flags.parser import parse_flags
    from utils.model.label_words import run

    (args,) = parse_flags(LabelWordsArguments, argv, "python -m utils.label_words", DESCRIPTION)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
