"""Export a trained checkpoint for deployment: Paddle static graph + ONNX + everything infer.py needs.

    python export.py --resume_from_checkpoint ./checkpoints/ --output_dir ./checkpoints/export

(`python train.py ... --do_export` writes the same into output_dir/export.) See utils/export/pipeline.py
for the directory layout, utils/export/parity.py for the parity gate.
"""
import sys

from utils.errors import run_cli


def main(argv):
    from utils.flags.export import ExportCommandArguments
    from utils.flags.parser import parse_flags

    (args,) = parse_flags(ExportCommandArguments, argv, "export.py", __doc__, args_file=True)
    from utils.model import compat
    from utils.dataset.folder import load_dataset_dir
    from utils.export.parity import describe_result
    from utils.export.pipeline import export_checkpoint
    from utils.model.spec import peek_task_type

    compat.apply()
    examples = None
    if args.data_dir:
        dataset = load_dataset_dir(args.data_dir, need_train=False, need_dev=False,
                                   task_type=peek_task_type(args.resume_from_checkpoint) or "multi-class")
        examples = dataset.dev or dataset.test or dataset.train or dataset.data
    manifest = export_checkpoint(args.resume_from_checkpoint, args.output_dir, examples=examples,
                                 export_type=args.export_type, export_fp16=args.export_fp16,
                                 overwrite=args.overwrite_output_dir, opset=args.opset, tolerance=args.tolerance,
                                 quantize=args.quantize, fuse_attention=args.fuse_attention)
    for result in manifest["parity"]["results"] + manifest["parity"].get("mask_embedding", []):
        print(f"parity {describe_result(result)}")
    fusion = manifest["onnx"].get("attention_fusion", {})
    for variant in ("fp32", "int8", "fp16"):
        if variant in fusion:
            print(f"attention {variant}: {fusion[variant]['graph']} ({fusion[variant]['reason']})")
    if manifest["parity"].get("int8"):
        print(f"int8 vs fp32 on the sample: {describe_result(manifest['parity']['int8'])}")
    print(f"exported to {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
