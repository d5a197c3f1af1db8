"""Export a trained checkpoint for deployment: Paddle static graph + ONNX + everything infer.py needs.

    python export.py --resume_from_checkpoint ./checkpoints/ --output_dir ./checkpoints/export

(`python train.py ... --do_export` writes the same into output_dir/export.) See utils/export/pipeline.py
for the directory layout, utils/export/parity.py for the parity gate.
"""
import sys
from dataclasses import dataclass, field
from typing import Optional

from utils.flags.train import ExportArguments
from utils.errors import UserError, run_cli


@dataclass
class ExportCommandArguments(ExportArguments):
    resume_from_checkpoint: Optional[str] = field(default=None, metadata={
        "help": "Checkpoint (or train.py output_dir) to export. Required."})
    output_dir: str = field(default="./checkpoints/export", metadata={"help": "Export directory to write."})
    data_dir: Optional[str] = field(default=None, metadata={
        "help": "Dataset folder; dev.txt (else test.txt/train.txt/data.txt) texts make the parity-check batch."})
    opset: int = field(default=13, metadata={"help": "ONNX opset (>= 13)."})
    tolerance: float = field(default=1e-4, metadata={"help": "Parity gate: max |Δlogits| allowed."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace an existing export directory."})

    def __post_init__(self):
        if not self.resume_from_checkpoint:
            raise UserError("is required: the checkpoint (or train.py --output_dir) to export",
                            "--resume_from_checkpoint")
        if not str(self.output_dir).strip():
            raise UserError("must name a directory, got an empty string", "--output_dir")


def main(argv):
    from utils.model import compat
    from utils.flags.train import _parser_class
    from utils.dataset.folder import load_dataset_dir
    from utils.export.parity import describe_result
    from utils.export.pipeline import export_checkpoint
    from utils.model.spec import peek_task_type

    (args,) = _parser_class()(ExportCommandArguments).parse_args_into_dataclasses(args=argv)
    compat.apply()
    examples = None
    if args.data_dir:
        dataset = load_dataset_dir(args.data_dir, need_train=False, need_dev=False,
                                   task_type=peek_task_type(args.resume_from_checkpoint) or "multi-class")
        examples = dataset.dev or dataset.test or dataset.train or dataset.data
    manifest = export_checkpoint(args.resume_from_checkpoint, args.output_dir, examples=examples,
                                 export_type=args.export_type, export_fp16=args.export_fp16,
                                 overwrite=args.overwrite_output_dir, opset=args.opset, tolerance=args.tolerance,
                                 quantize=args.quantize)
    for result in manifest["parity"]["results"]:
        print(f"parity {describe_result(result)}")
    if manifest["parity"].get("int8"):
        print(f"int8 vs fp32 on the sample: {describe_result(manifest['parity']['int8'])}")
    print(f"exported to {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
