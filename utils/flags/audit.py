"""audit.py's flags: its own (folds, dev, the report's cap) beside train.py's model, prompt and training flags.

    python audit.py --data_dir DATA_DIR --output_dir DIR [--folds K] [--repeats R] [--audit_rounds N] [--include_dev]
                    [--max_issues N] [train.py's model/prompt/training flags]

train.py's dataclasses (`ModelArguments`, `DataArguments`, `TrainingArguments`) are parsed as they
are, with the checks that span them (`TrainFlags`), so a flag means here what it means to train.py.
`--output_dir` is the audit's folder; each fold's train.py run gets its own (DIR/folds/fold-K/run)
and its own `--data_dir`. The flags audit.py decides for every fold (the --do_* steps, what to resume
from, distillation, zero-shot, exports, explanations) are refused with the reason. Paddle is imported
by `TrainingArguments` (paddlenlp's), as for train.py.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields
from typing import List, Optional, Sequence

from ..errors import UserError
from .train import DISTILL_DEFAULTS, DataArguments, ModelArguments, TrainFlags, flag_given

DEFAULT_FOLDS = 5
USAGE = ("python audit.py --data_dir DATA_DIR --output_dir DIR [--folds K] [--repeats R] [--audit_rounds N] [--include_dev] "
         "[--max_issues N] "
         "[train.py's model/prompt/training flags]")
DESCRIPTION = ("Which labels are wrong? Out-of-fold probabilities from K train.py runs (each fold held out "
               "once), then confident learning (cleanlab) ranks the suspect labels with a suggested label. "
               "Writes label_issues.tsv/.html, Label Studio review tasks, oof_probabilities.tsv and audit.json "
               "into --output_dir.")

# train.py flags audit.py sets for every fold itself, and why the user cannot.
SET_BY_AUDIT = {
    "--do_train": "every fold is trained", "--do_eval": "every fold evaluates on its model-selection set",
    "--do_predict": "each fold predicts its held-out texts", "--do_export": "folds are not exported",
    "--resume_from_checkpoint": "an interrupted audit resumes its folds when run again with the same flags",
    "--teacher": "folds train on the gold labels only", "--unlabeled_file": "folds train on the gold labels only",
    "--zero_shot": "out-of-fold probabilities come from trained folds", "--explain": "folds are not explained",
}
# (flag, whether it takes a value): what the folds never see.
NOT_FORWARDED = (("--data_dir", True), ("--output_dir", True), ("--overwrite_output_dir", False))


@dataclass
class AuditArguments:
    folds: int = field(default=DEFAULT_FOLDS, metadata={
        "help": "K: the audited examples are split into K stratified folds (seeded by --seed); each fold is held "
                "out once while a model trains on the others. Every label needs at least K examples."})
    repeats: int = field(default=1, metadata={
        "help": "R: run the K folds R times, repeat r with its own fold split and training seed (--seed + r - 1), "
                "and average each example's R out-of-fold probabilities before confident learning (an ensemble: "
                "steadier probabilities from weak or noisy fold models, at R times the cost). Raising R later "
                "reuses the finished repeats."})
    audit_rounds: int = field(default=1, metadata={
        "help": "N: audit N times; round n trains its folds without the examples round n - 1 flagged (each is "
                "still held out and judged, by models that never saw its label), so a small or noisy set's fold "
                "models learn from cleaner data; the last round's suspects are reported. N times the cost; "
                "raising N later reuses the rounds already finished."})
    include_dev: bool = field(default=False, metadata={
        "help": "Audit dev.txt too (its examples join train.txt's in the folds). Then each fold selects its best "
                "checkpoint on a slice of its own training folds (--selection_fraction) instead of on dev.txt, "
                "so no held-out text is ever seen in training or model selection."})
    selection_fraction: float = field(default=0.1, metadata={
        "help": "With --include_dev, or without a dev.txt: the share of a fold's training examples (stratified, "
                "at least one per label that has two) kept aside for early stopping and the best checkpoint."})
    max_issues: Optional[int] = field(default=None, metadata={
        "help": "Report at most this many suspects (the most suspect ones) in label_issues.* (default: all that "
                "confident learning flags)."})

    def __post_init__(self):
        if self.folds < 2:
            raise UserError(f"must be at least 2 (one fold held out, the others to train on), got {self.folds}",
                            "--folds")
        if self.repeats < 1:
            raise UserError(f"must be at least 1 (one run of the K folds), got {self.repeats}", "--repeats")
        if self.audit_rounds < 1:
            raise UserError(f"must be at least 1 (one audit), got {self.audit_rounds}", "--audit_rounds")
        if not 0 < self.selection_fraction < 1:
            raise UserError(f"must be in (0, 1), got {self.selection_fraction}", "--selection_fraction")
        if self.max_issues is not None and self.max_issues <= 0:
            raise UserError(f"must be positive, got {self.max_issues}", "--max_issues")


@dataclass
class AuditFlags:
    """audit.py's command line, parsed and checked: its own flags, train.py's three groups, and the
    train.py flags every fold runs with (`fold_argv`, before the fold's folders and --do_* steps)."""

    audit: AuditArguments
    model: ModelArguments
    data: DataArguments
    training: object
    forwarded: List[str]

    def fold_argv(self, data_dir: str, output_dir: str, resume: bool, seed: int) -> List[str]:
        """train.py's flags for one fold: the user's with the repeat's `seed` (the last --seed counts), the
        fold's folders, train and evaluate (model selection); `resume` continues the fold's run from its latest
        complete checkpoint."""
        argv = [*self.forwarded, "--seed", str(seed), "--data_dir", data_dir, "--output_dir", output_dir,
                "--do_train", "--do_eval"]
        return argv + (["--resume_from_checkpoint", output_dir] if resume else ["--overwrite_output_dir"])


def forwarded_flags(argv: Sequence[str]) -> List[str]:
    """The flags every fold's train.py gets: `argv` without audit.py's own flags and without the audit's
    --data_dir, --output_dir and --overwrite_output_dir (each fold has its own)."""
    own = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for dc_field in fields(AuditArguments):
        if dc_field.type in (bool, "bool"):
            own.add_argument(f"--{dc_field.name}", nargs="?", const="true")
        else:
            own.add_argument(f"--{dc_field.name}")
    for flag, takes_value in NOT_FORWARDED:
        own.add_argument(flag, **({} if takes_value else {"nargs": "?", "const": "true"}))
    return own.parse_known_args(list(argv))[1]


def canonical_flags(argv: Sequence[str]) -> List[List[str]]:
    """`argv` as `[flag, values...]` groups sorted by flag (a repeated flag keeps its order), `--f=v` as
    `--f v`: equal for two command lines that differ only in the order of their flags."""
    groups: List[List[str]] = []
    for arg in argv:
        if arg.startswith("--") or not groups:
            groups.append(arg.split("=", 1) if arg.startswith("--") else [arg])
        else:
            groups[-1].append(arg)
    return sorted(groups, key=lambda group: group[0])


def parse_audit_args(argv: Sequence[str]) -> AuditFlags:
    """Parse and check audit.py's flags (nothing is read or loaded)."""
    from .parser import Parser
    from .trainer import TrainingArguments

    argv = list(argv)
    parser = Parser((AuditArguments, ModelArguments, DataArguments, TrainingArguments), prog="audit.py",
                    description=DESCRIPTION, usage=USAGE)
    try:
        audit, model, data, training = parser.parse([*argv, "--do_train", "--do_eval"])  # each flag's own checks
    except UserError as error:  # train.py's hint (add --teacher / --unlabeled_file) is wrong here: folds refuse both
        if error.path not in {f"--{name}" for name in DISTILL_DEFAULTS} or "self-training" not in error.message:
            raise
        hint = ("; to audit again without the last round's suspects, use --audit_rounds N" if error.path == "--rounds"
                else "")
        raise UserError("is for self-training / distillation, which audit.py's folds never do (they train on the "
                        f"gold labels only){hint}; remove it", error.path) from None
    for flag, why in SET_BY_AUDIT.items():
        if flag_given(argv, flag):
            raise UserError(f"audit.py decides this for every fold ({why}); remove it", flag)
    for flag in ("--data_dir", "--output_dir"):
        if not flag_given(argv, flag):
            raise UserError(f"is required: {USAGE}", flag)
    flags = TrainFlags(model, data, training)  # the checks that span train.py's groups
    return AuditFlags(audit, flags.model, flags.data, flags.training, forwarded_flags(argv))
