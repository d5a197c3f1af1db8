"""Combine trained runs into one export that averages their probabilities (模型融合).

    python ensemble.py --members OUT/runs/split0_seed42 OUT/runs/split1_seed42 OUT/runs/split2_seed42 \
        --output_dir ./checkpoints/ensemble --data_dir ./data/tnews --do_eval --do_predict

Writes OUTPUT_DIR/export (an export like any other: infer.py, the Python API, serve.py and
`train.py --teacher` load it), and with --data_dir the ensemble's and each member's metrics on
dev.txt (--do_eval) and test.txt (--do_predict): OUTPUT_DIR/ensemble.json, eval_results.json,
test_results.json, test_predictions.tsv. See utils/ensembles/.
"""
import sys

from utils.errors import ArgumentParser, UserError, run_cli


def build_parser():
    parser = ArgumentParser(prog="ensemble.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", nargs="+", required=True,
                        help="Trained models: train.py --output_dir directories (their final model) or checkpoint-N.")
    parser.add_argument("--output_dir", required=True, help="Where export/ and the results go.")
    parser.add_argument("--data_dir", help="Dataset folder: dev.txt for the parity sample and --do_eval, test.txt and "
                                           "data.txt for --do_predict.")
    parser.add_argument("--do_eval", action="store_true", help="The ensemble's and the members' metrics on dev.txt.")
    parser.add_argument("--do_predict", action="store_true",
                        help="The same on test.txt (+ test_predictions.tsv), and data_predictions.tsv for data.txt.")
    parser.add_argument("--threshold", type=float, help="Label sets: one threshold for every label (default: per "
                                                        "label, the mean of the members' thresholds).")
    parser.add_argument("--threshold_search", choices=["none", "global", "per-label"], default=None,
                        help="Label sets: tune the thresholds on dev.txt with the ensemble's probabilities.")
    parser.add_argument("--hierarchical_decoding", choices=["consistent", "flat"], default=None,
                        help="Hierarchical: default the members' (they must agree).")
    parser.add_argument("--export_type", choices=["paddle", "onnx"], default="paddle")
    parser.add_argument("--export_fp16", action="store_true")
    parser.add_argument("--quantize", choices=["none", "int8"], default="none")
    parser.add_argument("--opset", type=int, default=13)
    parser.add_argument("--tolerance", type=float, default=1e-4, help="Parity gate: max |Δ probability| allowed.")
    parser.add_argument("--batch_size", type=int, default=32, help="Texts per batch when evaluating.")
    parser.add_argument("--overwrite_output_dir", action="store_true")
    return parser


def main(argv):
    args = build_parser().parse_args(argv)
    if args.threshold is not None and not 0 < args.threshold < 1:
        raise UserError(f"must be in (0, 1), got {args.threshold}", "--threshold")
    for flag in ("opset", "batch_size"):
        if getattr(args, flag) <= 0:
            raise UserError(f"must be positive, got {getattr(args, flag)}", f"--{flag}")
    if args.opset < 13:
        raise UserError(f"must be at least 13, got {args.opset}", "--opset")
    if not args.tolerance > 0:
        raise UserError(f"must be positive, got {args.tolerance}", "--tolerance")
    from utils.ensembles.run import describe_summary, run

    summary = run(args)
    print(describe_summary(summary), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
