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
import json
import os
import signal
import sys

from utils.errors import UserError, run_cli


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
    from utils.flags.parser import parse_flags
    from utils.flags.runtime import InferArguments

    (args,) = parse_flags(InferArguments, argv, "infer.py", __doc__)
    from utils.files import check_output_file, open_for_reading

    # Everything the user gave is checked before the model loads.
    open_for_reading(args.input_path, "input file").close()
    check_output_file(args.output_path, not_same_as=args.input_path)
    device, device_id = args.placement()
    options = dict(device=device, num_threads=args.num_threads, use_fp16=args.use_fp16,
                   use_int8=args.use_int8, max_seq_length=args.max_seq_length, batch_size=args.batch_size,
                   reject_threshold=args.reject_threshold, other_label=args.other_label)
    # A scheduler's SIGTERM unwinds like Ctrl-C, so the partial output is removed on the way out.
    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        summary = classify(args, args.input_path, args.output_path, options, device_id)
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
