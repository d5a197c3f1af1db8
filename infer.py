"""Classify texts with an exported model on onnxruntime (CPU or GPU). Needs no Paddle.

    python infer.py --model_path_prefix checkpoints/export/model --data_dir ./data --device cpu
    python infer.py --model_path_prefix checkpoints/export --input_file texts.txt --output_file out.jsonl --top_k 3

Input: one text per line (`text_a<TAB>text_b` for pair models); a trailing `<TAB>label` column
(test.txt layout) is accepted and adds accuracy to the summary. Output: TSV with a header
(text, label, confidence, ...) or JSONL when --output_file ends in .jsonl.
"""
import argparse
import json
import os
import sys

from utils.errors import UserError, run_cli


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_path_prefix", required=True,
                        help="Export directory, or its model prefix as upstream (checkpoints/export/model).")
    parser.add_argument("--data_dir", help="Dataset folder: classify its data.txt.")
    parser.add_argument("--input_file", help="File of texts to classify (instead of --data_dir/data.txt).")
    parser.add_argument("--output_file", default="infer_predictions.tsv",
                        help="Where to write predictions (.tsv, or .jsonl for JSON lines). Default: %(default)s")
    parser.add_argument("--max_seq_length", "--max_length", dest="max_seq_length", type=int, default=None,
                        help="Tokens per input, prompt included (default and maximum: the exported value).")
    parser.add_argument("--batch_size", type=int, default=32,
                        help="Texts per batch (default %(default)s: with length-sorted batches, larger batches "
                             "only cost memory on CPU; see BENCHMARKS.md).")
    parser.add_argument("--device", choices=["cpu", "gpu"], default=None,
                        help="Default: gpu when onnxruntime-gpu's CUDA provider is available, else cpu.")
    parser.add_argument("--device_id", type=int, default=0)
    parser.add_argument("--num_threads", type=int, default=None, help="CPU threads (default: physical cores).")
    parser.add_argument("--use_fp16", action="store_true", help="GPU: use the export's model_fp16.onnx.")
    parser.add_argument("--use_int8", action="store_true",
                        help="Use the export's model_int8.onnx (export with --quantize int8); fastest on CPU.")
    parser.add_argument("--top_k", type=int, default=1, help="Also write the k best labels with confidences.")
    parser.add_argument("--file_order", action="store_true",
                        help="Batch in file order instead of by length (slower; for comparisons).")
    parser.add_argument("--model_name", default=None, help=argparse.SUPPRESS)  # upstream flag: the export has the tokenizer
    return parser


def main(argv):
    args = build_parser().parse_args(argv)
    from utils.predictor import ExportedClassifier, classify_file, resolve_export_dir

    if args.batch_size <= 0:
        raise UserError(f"must be positive, got {args.batch_size}", "--batch_size")
    if args.input_file:
        input_path = args.input_file
    elif args.data_dir:
        input_path = os.path.join(args.data_dir, "data.txt")
    else:
        raise UserError("give --input_file FILE or --data_dir DIR (which holds data.txt)", "infer.py")
    if args.device is None:
        import onnxruntime

        args.device = "gpu" if "CUDAExecutionProvider" in onnxruntime.get_available_providers() else "cpu"
    if args.num_threads is None and args.device == "cpu":
        import psutil

        args.num_threads = psutil.cpu_count(logical=False) or os.cpu_count()
    if args.use_fp16 and args.device != "gpu":
        print("note: --use_fp16 only applies with --device gpu; running fp32 on CPU", file=sys.stderr)
    export_dir = resolve_export_dir(args.model_path_prefix)
    classifier = ExportedClassifier(export_dir, device=args.device, device_id=args.device_id,
                                    num_threads=args.num_threads, use_fp16=args.use_fp16,
                                    max_seq_length=args.max_seq_length, use_int8=args.use_int8)
    summary = classify_file(classifier, input_path, args.output_file, batch_size=args.batch_size,
                            top_k=args.top_k, sort_by_length=not args.file_order)
    summary.update(model=os.path.join(export_dir, classifier.model_file), device=args.device,
                   output_file=args.output_file)
    print(json.dumps(summary, ensure_ascii=False, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
