"""annotate.py's flags: `import` (an annotation tool's export -> a dataset folder) and `export` (texts,
optionally pre-annotated by an export -> tasks to import into the tool). Paddle-free."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import List, Optional

from ..choices import AnnotationFormat, CancelledPolicy, ConflictPolicy, TaskType, UnlabeledPolicy
from ..errors import UserError
from ..files import check_output_dir
from .checks import positive
from .runtime import RuntimeArguments

FORMAT_HELP = ("label-studio: Label Studio's JSON export (or JSON-MIN); doccano: doccano's JSONL "
               "(docs/reference/annotation-formats.md).")
SUBCOMMANDS = ("import", "export")


@dataclass
class AnnotateImportArguments:
    """annotate.py import: an annotation tool's export into a dataset folder."""

    format: Optional[AnnotationFormat] = field(default=None, metadata={"required": True, "help": FORMAT_HELP})
    input: Optional[str] = field(default=None, metadata={"required": True, "help": "The tool's export file."})
    output_dir: Optional[str] = field(default=None, metadata={
        "required": True, "help": "The dataset folder to write (train/dev/test.txt, label.txt, data.txt)."})
    task_type: Optional[TaskType] = field(default=None, metadata={
        "help": "Default: inferred (a Taxonomy or `##` in labels: hierarchical; an annotation with several labels: "
                "multi-label; else multi-class). Annotations that contradict a given type are refused."})
    splits: List[float] = field(default_factory=lambda: [0.8, 0.1, 0.1], metadata={
        "help": "Fractions for train, dev and test (sum 1; stratified where the classes allow, seeded)."})
    seed: int = field(default=1000, metadata={"help": "Seed of the splits."})
    label_file: Optional[str] = field(default=None, metadata={
        "help": "label.txt to check the labels against, copied into the folder (keeps label words). Default: "
                "label.txt lists the labels the annotations use."})
    conflict: ConflictPolicy = field(default=ConflictPolicy.ERROR, metadata={
        "help": "Annotations of one text that disagree (several annotators, or one text in several tasks): error "
                "(naming the task), majority (the label set most chose; a tie: the latest of them), latest (the "
                "last updated), drop (leave the text out)."})
    unlabeled: UnlabeledPolicy = field(default=UnlabeledPolicy.DATA, metadata={
        "help": "Tasks without an annotation: data (into data.txt), drop, or error."})
    cancelled: CancelledPolicy = field(default=CancelledPolicy.SKIP, metadata={
        "help": "Tasks every annotator skipped (was_cancelled): skip (left out, counted) or error."})
    from_name: Optional[str] = field(default=None, metadata={
        "text": True, "help": "Label Studio: the Choices/Taxonomy control to import (results of others ignored). "
                              "Default: the one classification control."})
    text_key: str = field(default="text", metadata={"text": True, "help": "The task's text field."})
    text_b_key: str = field(default="text_b", metadata={"text": True, "help": "The second text of sentence pairs."})
    strip_html: bool = field(default=False, metadata={
        "help": "Remove HTML tags and decode entities (default: texts with markup are refused)."})
    normalize_whitespace: bool = field(default=False, metadata={
        "help": "Turn tabs and line breaks in texts into spaces (default: refused; the files are one text per line)."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace an existing, non-empty folder."})

    def __post_init__(self):
        if len(self.splits) != 3 or any(not 0 <= r <= 1 for r in self.splits) or abs(sum(self.splits) - 1) > 1e-6:
            raise UserError(f"must be three fractions for train, dev and test summing to 1, got "
                            f"{' '.join(map(str, self.splits))}", "--splits")
        if self.splits[0] == 0:
            raise UserError("the train fraction must be above 0", "--splits")
        for name in ("output_dir", "input", "text_key", "text_b_key"):
            if not str(getattr(self, name)).strip():
                raise UserError("must not be empty", f"--{name}")
        if self.text_key == self.text_b_key:
            raise UserError("must differ from --text_key", "--text_b_key")
        self._check_output_dir()

    def _check_output_dir(self) -> None:
        out = self.output_dir
        if os.path.exists(out) and not os.path.isdir(out):
            raise UserError("exists and is not a directory", "--output_dir")
        if os.path.isdir(out) and os.listdir(out) and not self.overwrite_output_dir:
            raise UserError(f"{out} exists and is not empty; --overwrite_output_dir replaces it", "--output_dir")
        # the folder is written beside it, then renamed: its parent must take new files
        check_output_dir(os.path.dirname(os.path.abspath(out)))
        inside = os.path.realpath(out) + os.sep
        for flag in ("input", "label_file"):
            path = getattr(self, flag)
            if path and os.path.realpath(path).startswith(inside):
                raise UserError(f"is inside --output_dir {out}, which the import replaces; write elsewhere",
                                f"--{flag}")


@dataclass
class AnnotateExportArguments(RuntimeArguments):
    """annotate.py export: texts (or a labelled split) into tasks for an annotation tool."""

    format: Optional[AnnotationFormat] = field(default=None, metadata={"required": True, "help": FORMAT_HELP})
    output: Optional[str] = field(default=None, metadata={
        "required": True, "help": "The file to write (Label Studio: a JSON list of tasks, its labelling config "
                                  "beside it as FILE.config.xml; doccano: JSONL, its labels as FILE.labels.json)."})
    input_file: Optional[str] = field(default=None, metadata={
        "help": "Texts (data.txt layout: text, or text_a<TAB>text_b), or a labelled split (train.txt layout: the "
                "labels become annotations)."})
    data_dir: Optional[str] = field(default=None, metadata={
        "help": "A dataset folder: its label.txt; without --input_file, every file of it (train, dev, test labelled, "
                "data.txt not)."})
    label_file: Optional[str] = field(default=None, metadata={"help": "label.txt (default: --data_dir's, or the "
                                                                      "export's labels)."})
    model_path_prefix: Optional[str] = field(default=None, metadata={
        "help": "An export: each task carries its prediction as a pre-annotation (doccano: as `label`)."})
    task_type: Optional[TaskType] = field(default=None, metadata={
        "help": "Default: the export's, else multi-class."})
    batch_size: int = field(default=32, metadata={"help": "Texts per onnxruntime run."})
    chunk_size: int = field(default=8192, metadata={"help": "Lines read and classified at a time."})
    model_version: Optional[str] = field(default=None, metadata={
        "text": True, "help": "Label Studio's model_version of the predictions (default: the export's directory)."})

    def __post_init__(self):
        positive(self, "batch_size", "chunk_size")
        super().__post_init__()
        if not self.input_file and not self.data_dir:
            raise UserError("give --input_file FILE or --data_dir DIR", "annotate.py export")
        if self.model_path_prefix is None and (self.use_fp16 or self.use_int8 or self.num_threads):
            raise UserError("applies to --model_path_prefix's export; give one", "--use_fp16" if self.use_fp16 else
                            "--use_int8" if self.use_int8 else "--num_threads")

    @property
    def label_path(self) -> Optional[str]:
        if self.label_file:
            return self.label_file
        return os.path.join(self.data_dir, "label.txt") if self.data_dir else None

    @property
    def inputs(self) -> List[str]:
        """The files to export, in order."""
        if self.input_file:
            return [self.input_file]
        names = ("train.txt", "dev.txt", "test.txt", "data.txt")
        return [os.path.join(self.data_dir, n) for n in names if os.path.exists(os.path.join(self.data_dir, n))]

    @property
    def config_path(self) -> str:
        return self.output + (".config.xml" if self.format == AnnotationFormat.LABEL_STUDIO else ".labels.json")
