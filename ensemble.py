"""Combine trained runs into one export that averages their probabilities (模型融合).

    python ensemble.py --members OUT/runs/split0_seed42 OUT/runs/split1_seed42 OUT/runs/split2_seed42 \
        --output_dir ./checkpoints/ensemble --data_dir ./data/tnews --do_eval --do_predict

Writes OUTPUT_DIR/export (an export like any other: infer.py, the Python API, serve.py and
`train.py --teacher` load it), and with --data_dir the ensemble's and each member's metrics on
dev.txt (--do_eval) and test.txt (--do_predict): OUTPUT_DIR/ensemble.json, eval_results.json,
test_results.json, test_predictions.tsv. See utils/ensembles/.
"""
import sys

from utils.errors import run_cli


def main(argv):
    from utils.flags.export import EnsembleArguments
    from utils.flags.parser import parse_flags

    (args,) = parse_flags(EnsembleArguments, argv, "ensemble.py", __doc__.split("\n\n")[0])
    from utils.ensembles.run import describe_summary, run

    summary = run(args)
    print(describe_summary(summary), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
