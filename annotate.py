"""Annotation tools in and out: Label Studio and doccano exports into a dataset folder, and texts back
out as tasks to import into the tool, pre-annotated by a model. The classifying needs no Paddle.

    python annotate.py import --format label-studio --input export.json --output_dir ./data/mine \
        --splits 0.8 0.1 0.1 --seed 1000
    python annotate.py import --format doccano --input all.jsonl --output_dir ./data/mine --task_type multi-label
    python annotate.py export --format label-studio --input_file ./data/mine/data.txt \
        --model_path_prefix ./checkpoints/export --output tasks.json

import: tasks without an annotation go to data.txt; disagreeing annotators follow --conflict
(default: an error naming the task); the splits are stratified and seeded (utils/annotation/importing.py).
export: the labels of a labelled file become annotations; with --model_path_prefix every task carries
the model's prediction; the labelling config is written beside the output (utils/annotation/exporting.py).
Formats and every check: docs/reference/annotation-formats.md.
"""
import json
import os
import sys

from utils.errors import UserError, run_cli

USAGE = "python annotate.py {import,export} [--help] FLAGS"


def main(argv):
    from utils.flags.annotate import SUBCOMMANDS

    if not argv or argv[0] not in SUBCOMMANDS:
        if argv and argv[0] in ("-h", "--help"):
            print(f"usage: {USAGE}\n\n{__doc__}\n`python annotate.py import --help` and `... export --help` list "
                  "each command's flags.")
            return 0
        got = f"got {argv[0]!r}" if argv else "got nothing"
        raise UserError(f"the first word is the command: import or export ({got}); usage: {USAGE}", "annotate.py")
    return (run_import if argv[0] == "import" else run_export)(argv[1:])


def run_import(argv):
    from utils.annotation.importing import import_annotations
    from utils.flags.annotate import AnnotateImportArguments
    from utils.flags.parser import parse_flags

    (args,) = parse_flags(AnnotateImportArguments, argv, "annotate.py import", __doc__.split("\n\n")[0])
    summary = import_annotations(args)
    print(json.dumps(summary, ensure_ascii=False, indent=2))
    return 0


def export_labels(args):
    """`(labels, task type, pair)` from --label_file/--data_dir or the export, read before any model
    loads; `pair` is the export's text layout (None without a model: the input's first line decides)."""
    from utils.dataset.labels import read_label_file

    task_type = str(args.task_type) if args.task_type else None
    if args.model_path_prefix:
        from utils.deploy.bundle import read_decoder, read_labels, read_manifest, resolve_export_dir
        from utils.deploy.preprocess import read_config, text_keys_of

        export_dir = resolve_export_dir(args.model_path_prefix)
        labels = read_labels(export_dir)
        model_type = read_decoder(export_dir, read_manifest(export_dir), labels).task_type
        if task_type and task_type != model_type:
            raise UserError(f"is {task_type}, but the export was trained for {model_type}", "--task_type")
        task_type = model_type
        if args.label_path:
            own = read_label_file(args.label_path, task_type).labels
            if own != sorted(labels):
                raise UserError(f"lists other labels than the export ({', '.join(labels[:10])})", args.label_path)
        return sorted(labels), task_type, "text_b" in text_keys_of(read_config(export_dir))
    task_type = task_type or "multi-class"
    if not args.label_path:
        raise UserError("the tasks' labelling config needs the labels: give --label_file, --data_dir or "
                        "--model_path_prefix", "annotate.py export")
    return read_label_file(args.label_path, task_type).labels, task_type, None


def run_export(argv):
    from utils.annotation.exporting import export_tasks, open_inputs, write_config
    from utils.files import check_output_file, open_for_reading
    from utils.flags.annotate import AnnotateExportArguments
    from utils.flags.parser import parse_flags

    (args,) = parse_flags(AnnotateExportArguments, argv, "annotate.py export", __doc__.split("\n\n")[0])
    inputs = args.inputs
    if not inputs:
        raise UserError("has no train.txt, dev.txt, test.txt or data.txt", args.data_dir)
    for path in inputs:
        open_for_reading(path, "input file").close()
        check_output_file(args.output, not_same_as=path)
        check_output_file(args.config_path, "labelling config file", not_same_as=path)
    labels, task_type, pair = export_labels(args)
    opened = open_inputs(inputs, labels, task_type, pair)  # every first line checked before the model loads
    classifier = load_classifier(args) if args.model_path_prefix else None
    fmt = str(args.format)
    version = args.model_version or (os.path.basename(classifier.export_dir.rstrip("/")) if classifier else "")
    counts = export_tasks(opened, args.output, fmt, task_type, labels,
                          predict=classifier.predict if classifier else None, model_version=version,
                          chunk_size=args.chunk_size)
    write_config(args.config_path, fmt, labels, task_type, opened[0].pair)
    summary = {"output": args.output, "config": args.config_path, "format": fmt, "task_type": task_type, **counts}
    print(json.dumps(summary, ensure_ascii=False, indent=2))
    return 0


def load_classifier(args):
    from utils.deploy.classifier import Classifier

    device, device_id = args.placement()
    return Classifier(args.model_path_prefix, device=device, device_id=device_id, num_threads=args.num_threads,
                      use_fp16=args.use_fp16, use_int8=args.use_int8, max_seq_length=args.max_seq_length,
                      batch_size=args.batch_size)


if __name__ == "__main__":
    sys.exit(run_cli(main))
