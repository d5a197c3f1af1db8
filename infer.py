"""Classify texts with an exported model on onnxruntime (CPU or GPU). Needs no Paddle.

    python infer.py --model_path_prefix checkpoints/export/model --data_dir ./data --device cpu
    python infer.py --model_path_prefix checkpoints/export --input_file texts.txt --output_file out.jsonl --top_k 3
    python infer.py --model_path_prefix checkpoints/export --input_file big.txt --ray auto   # on a Ray cluster

Input: one text per line (`text_a<TAB>text_b` for pair models); a trailing `<TAB>label` column
(test.txt layout; `l1,l2` for multi-label models) is accepted and adds accuracy and F1 to the
summary. Output: TSV with a header (text, [gold], label, confidence, ...; multi-label and
hierarchical exports: labels, confidences, every label above its threshold) or JSONL when
--output_file ends in .jsonl, written as the input streams through and renamed into place only
when complete. The export says which task it was trained for: no flag here.
Upstream's flags are accepted (--model_name_or_path, --max_length, --cpu_threads, ...).
The same from Python: `from utils import Classifier` (utils/deploy/classifier.py), which this script runs;
with --ray, utils/serving/ray_infer.py runs it on the cluster's nodes and writes the same file.
"""
import argparse
import json
import os
import signal
import sys

from utils.errors import ArgumentParser, UserError, run_cli, text_flag

DEFAULT_OUTPUT = "infer_predictions.tsv"


def build_parser():
    parser = ArgumentParser(prog="infer.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_path_prefix", required=True,
                        help="Export directory, or its model prefix as upstream (checkpoints/export/model).")
    parser.add_argument("--data_dir", help="Dataset folder: classify its data.txt.")
    parser.add_argument("--input_file", help="File of texts to classify (instead of --data_dir/data.txt).")
    parser.add_argument("--output_file", default=None,
                        help=f"Where to write predictions (.tsv, or .jsonl for JSON lines). Default: {DEFAULT_OUTPUT}")
    parser.add_argument("--output_dir", default=None, help=f"Write {DEFAULT_OUTPUT} in this directory instead.")
    parser.add_argument("--max_seq_length", "--max_length", dest="max_seq_length", type=int, default=None,
                        help="Tokens per input, prompt included (default and maximum: the exported value).")
    parser.add_argument("--batch_size", type=int, default=32,
                        help="Texts per batch (default %(default)s: with length-sorted batches, larger batches "
                             "only cost memory on CPU; see BENCHMARKS.md).")
    parser.add_argument("--device", default=None,
                        help="cpu, gpu or gpu:N (GPU N, as --device_id N). Default: gpu when onnxruntime-gpu's CUDA "
                             "provider is available, else cpu.")
    parser.add_argument("--device_id", type=int, default=0)
    parser.add_argument("--num_threads", "--cpu_threads", dest="num_threads", type=int, default=None,
                        help="CPU threads (default: physical cores).")
    parser.add_argument("--use_fp16", action="store_true", help="GPU: use the export's model_fp16.onnx.")
    parser.add_argument("--use_int8", action="store_true",
                        help="Use the export's model_int8.onnx (export with --quantize int8); fastest on CPU.")
    parser.add_argument("--top_k", type=int, default=1,
                        help="Also write the k best labels with confidences (multi-label: the k most probable, "
                             "besides every label above its threshold).")
    parser.add_argument("--reject_threshold", type=float, default=None,
                        help="Multi-class: label a text --other_label when its top probability is below this "
                             "(default: the export's, from train.py --reject_threshold; see the coverage table "
                             "eval_coverage.tsv).")
    parser.add_argument("--other_label", default=None, type=text_flag,
                        help="The label of a rejected text (default: other).")
    parser.add_argument("--file_order", action="store_true",
                        help="Batch in file order instead of by length (slower; for comparisons).")
    parser.add_argument("--chunk_size", type=int, default=None,
                        help="Lines read, length-sorted and classified at a time (default 8192); with --ray, the "
                             "unit of work sent to a worker. The same value gives the same output with or without "
                             "--ray.")
    parser.add_argument("--ray", metavar="auto|HOST:PORT", default=None,
                        help="Classify on a Ray cluster (pip install -r requirements-ray.txt): one worker per node, "
                             "the same output file. `auto`: the cluster this machine is part of; else the head's "
                             "address (utils/serving/ray_infer.py).")
    parser.add_argument("--model_name_or_path", "--model_name", dest="model_name_or_path", default=None,
                        help="Accepted for upstream compatibility and not needed: the export has its own tokenizer.")
    parser.add_argument("--prompt", default=None, help=argparse.SUPPRESS)  # upstream deploy.py: refused below
    return parser


def note_unused_flags(args, export_dir: str, device: str, remote: bool = False) -> None:
    if args.model_name_or_path is not None:
        print("note: --model_name_or_path is not needed: using the export's own tokenizer "
              f"({export_dir}/vocab.txt)", file=sys.stderr)
    if remote:  # (a local Classifier says it itself)
        from utils.deploy.classifier import fp16_note

        note = fp16_note(args.use_fp16, device)
        if note:
            print(note, file=sys.stderr)


def terminate(signum, frame):
    raise SystemExit(128 + signum)


def main(argv):
    args = build_parser().parse_args(argv)
    from utils.files import check_output_file, open_for_reading

    for flag in ("batch_size", "top_k", "num_threads", "max_seq_length", "chunk_size"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            raise UserError(f"must be positive, got {value}", f"--{flag}")
    from utils.task.calibration import check_reject_options

    check_reject_options(args.reject_threshold, args.other_label, "--")
    from utils.deploy.classifier import split_device

    device, device_id = split_device(args.device, args.device_id, "--")
    if args.prompt is not None:
        raise UserError("the export carries the template it was trained with (template.json, preprocess.json); "
                        "drop --prompt, or train and export a model with the prompt you want", "--prompt")
    if args.input_file:
        input_path = args.input_file
    elif args.data_dir:
        input_path = os.path.join(args.data_dir, "data.txt")
    else:
        raise UserError("give --input_file FILE or --data_dir DIR (which holds data.txt)", "infer.py")
    if args.output_file and args.output_dir:
        raise UserError("give --output_file or --output_dir, not both", "--output_dir")
    output_path = args.output_file or os.path.join(args.output_dir or "", DEFAULT_OUTPUT)
    # Everything the user gave is checked before the model loads.
    open_for_reading(input_path, "input file").close()
    check_output_file(output_path, not_same_as=input_path)

    options = dict(device=device, num_threads=args.num_threads, use_fp16=args.use_fp16,
                   use_int8=args.use_int8, max_seq_length=args.max_seq_length, batch_size=args.batch_size,
                   reject_threshold=args.reject_threshold, other_label=args.other_label)
    # A scheduler's SIGTERM unwinds like Ctrl-C, so the partial output is removed on the way out.
    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        summary = classify(args, input_path, output_path, options, device_id)
    except UserError as exc:
        if exc.path in ("reject_threshold", "other_label"):  # the API's argument is this script's flag
            raise UserError(exc.message, "--" + exc.path) from None
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(json.dumps(summary, ensure_ascii=False, indent=2))
    return 0


def classify(args, input_path: str, output_path: str, options: dict, device_id: int = 0) -> dict:
    """Classify the input file locally or on a Ray cluster; return the summary."""
    if args.ray:
        from utils.serving.ray_infer import classify_file_on_ray

        summary = classify_file_on_ray(args.ray, args.model_path_prefix, input_path, output_path,
                                       top_k=args.top_k, sort_by_length=not args.file_order,
                                       chunk_size=args.chunk_size, **options)
        note_unused_flags(args, os.path.dirname(summary["model"]), summary["device"], remote=True)
    else:
        from utils.deploy.classifier import Classifier

        classifier = Classifier(args.model_path_prefix, device_id=device_id, **options)
        note_unused_flags(args, classifier.export_dir, classifier.device)
        summary = classifier.classify_file(input_path, output_path, top_k=args.top_k,
                                           sort_by_length=not args.file_order, chunk_size=args.chunk_size)
    return summary


if __name__ == "__main__":
    sys.exit(run_cli(main))
