"""`annotate.py import`: an annotation tool's export -> the dataset folder (train/dev/test.txt,
label.txt, data.txt), written into a directory beside the target and renamed into place, read back
with `utils.dataset.folder` before it is.

In order, each step refusing with the file and task id (or line):

1. read (`label_studio_reader`, `doccano`): texts and labels checked (`records`);
2. the task type: `--task_type`, else inferred: a Taxonomy result or a `##` in a label ->
   hierarchical, an annotation choosing several labels -> multi-label, else multi-class; what
   contradicts a given type is refused;
3. each task's annotations: agreeing ones are one; disagreeing ones follow `--conflict`;
   cancelled ones are skipped (counted; `--cancelled error` refuses them);
4. duplicates: one text (or pair) in several tasks is kept once; different labels are a conflict
   under the same policy; an unlabelled duplicate of a labelled text is dropped, so a text is never
   in two files;
5. labels: in `--label_file` when given (copied as label.txt: label words kept), else label.txt lists
   the labels seen (hierarchical: every ancestor too);
6. texts nobody labelled -> data.txt (`--unlabeled drop|error`), the others split (`splits`).
"""
from __future__ import annotations

import os
import shutil
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, FrozenSet, List, Optional, Tuple

from ..dataset.folder import SPLIT_FILES, load_dataset_dir
from ..dataset.labels import LABEL_FILE, read_label_file
from ..errors import UserError
from ..files import atomic_directory, parent_locked
from ..task.decoding import HIERARCHICAL, LABEL_SEPARATOR, LEVEL_SEPARATOR, MULTI_CLASS, MULTI_LABEL
from .doccano import read_doccano
from .label_studio_reader import read_label_studio
from .records import ReadOptions, Record, Vote, with_ancestors
from .splits import SPLITS, assign_splits

LABEL_STUDIO, DOCCANO = "label-studio", "doccano"


@dataclass
class Example:
    record: Record
    labels: Optional[FrozenSet[str]]  # None: nobody labelled it


@dataclass
class Report:
    """What the import did, for the console and the summary."""

    counts: Counter = field(default_factory=Counter)
    notes: List[str] = field(default_factory=list)


def read_records(fmt: str, path: str, options: ReadOptions) -> List[Record]:
    return (read_label_studio if fmt == LABEL_STUDIO else read_doccano)(path, options)


def infer_task_type(records: List[Record], given: Optional[str]) -> Tuple[str, str]:
    """`(task type, why)`; a record contradicting `given` is an error naming it."""
    taxonomy = next((r for r in records if any(v.taxonomy for v in r.votes)), None)
    nested = next((r for r in records if any(LEVEL_SEPARATOR in label for v in r.votes for label in v.labels)), None)
    several = next((r for r in records if any(v.chosen > 1 and not v.taxonomy for v in r.votes)), None)
    if given is None:
        if taxonomy or nested:
            return HIERARCHICAL, "Taxonomy results" if taxonomy else "labels with `##`"
        if several:
            return MULTI_LABEL, f"{several.where.name or 'a line'} chose several labels"
        return MULTI_CLASS, "one label per annotation"
    if taxonomy and given != HIERARCHICAL:
        raise taxonomy.where.error(f"has a Taxonomy result (label paths), which needs --task_type hierarchical, "
                                   f"not {given}")
    if several and given == MULTI_CLASS:
        vote = next(v for v in several.votes if v.chosen > 1)
        raise several.where.error(f"an annotation chose {vote.chosen} labels ({', '.join(sorted(vote.labels))}), "
                                  "but --task_type multi-class takes one; --task_type multi-label (or hierarchical) "
                                  "imports label sets")
    return given, "--task_type"


def check_labels(record: Record, labels: FrozenSet[str], task_type: str) -> FrozenSet[str]:
    """The labels of one vote under the task type (hierarchical: ancestors added)."""
    if task_type != MULTI_CLASS:
        for label in labels:
            if LABEL_SEPARATOR in label:
                raise record.where.error(f"label {label!r} contains `{LABEL_SEPARATOR}`, which separates labels on "
                                         f"a --task_type {task_type} data line; rename it in the annotation tool")
    if task_type == HIERARCHICAL:
        for label in labels:
            if any(not part.strip() or part != part.strip() for part in label.split(LEVEL_SEPARATOR)):
                raise record.where.error(f"label path {label!r} has an empty or padded level (write `A##B`, each "
                                         "level named)")
        return with_ancestors(labels)
    return labels


def resolve_votes(record: Record, votes: List[Tuple[FrozenSet[str], Vote]], policy: str, report: Report,
                  others: str = "") -> Optional[FrozenSet[str]]:
    """One label set from disagreeing annotations under `--conflict` (None: dropped)."""
    distinct = {labels for labels, _ in votes}
    if len(distinct) == 1:
        return next(iter(distinct))
    tally = Counter(labels for labels, _ in votes)
    shown = "; ".join(f"{' + '.join(sorted(labels)) or '-'} ({n})" for labels, n in
                      sorted(tally.items(), key=lambda kv: (-kv[1], sorted(kv[0]))))
    report.counts["conflicts"] += 1
    if policy == "error":
        raise record.where.error(f"annotations disagree{others}: {shown}; choose a policy with --conflict "
                                 "majority|latest|drop (agreeing annotations are never a conflict)")
    if policy == "drop":
        report.counts["dropped (conflict)"] += 1
        return None
    latest = max(votes, key=lambda lv: lv[1].order)
    if policy == "latest":
        return latest[0]
    best = max(tally.values())
    tied = [lv for lv in votes if tally[lv[0]] == best]
    return max(tied, key=lambda lv: lv[1].order)[0]  # majority; a tie goes to the latest of the tied


def resolve_records(records: List[Record], task_type: str, args, report: Report) -> List[Example]:
    """Each record's label set (or None), duplicates merged; records dropped by a policy left out."""
    by_key: Dict[Tuple[str, Optional[str]], List[Tuple[Record, Optional[FrozenSet[str]], Optional[Vote]]]] = {}
    for record in records:
        report.counts["tasks"] += 1
        report.counts["cancelled annotations"] += record.cancelled
        if record.cancelled and not record.votes:
            if args.cancelled == "error":
                raise record.where.error(f"was skipped (cancelled) by {record.cancelled} annotator(s); "
                                         "--cancelled skip leaves such tasks out")
            report.counts["skipped (cancelled)"] += 1
            continue
        votes = [(check_labels(record, v.labels, task_type), v) for v in record.votes]
        labels = resolve_votes(record, votes, args.conflict, report) if votes else None
        if votes and labels is None:
            continue
        latest = max(votes, key=lambda lv: lv[1].order)[1] if votes else None
        by_key.setdefault(record.key, []).append((record, labels, latest))
    examples = []
    for group in by_key.values():
        example = _merge_duplicates(group, args.conflict, report)
        if example is not None:
            examples.append(example)
    examples.sort(key=lambda e: e.record.index)
    return examples


def _merge_duplicates(group, policy: str, report: Report) -> Optional[Example]:
    first = group[0][0]
    labelled = [(record, labels, vote) for record, labels, vote in group if labels is not None]
    report.counts["duplicates merged"] += len(group) - 1
    if not labelled:
        return Example(first, None)
    if len({labels for _, labels, _ in labelled}) == 1:
        return Example(labelled[0][0], labelled[0][1])
    names = ", ".join(record.where.name or f"line {record.where.line}" for record, _, _ in labelled)
    votes = [(labels, vote) for _, labels, vote in labelled]
    labels = resolve_votes(labelled[-1][0], votes, policy, report, others=f" across duplicates of this text ({names})")
    return None if labels is None else Example(labelled[0][0], labels)


def label_list(examples: List[Example], task_type: str, label_file: Optional[str]) -> Tuple[List[str], Optional[str]]:
    """The labels of label.txt, and the label file to copy (None: write the names)."""
    seen = sorted({label for e in examples if e.labels for label in e.labels})
    if label_file:
        known = read_label_file(label_file, task_type).label_words
        for example in examples:
            missing = sorted(set(example.labels or ()) - set(known))
            if missing:
                raise example.record.where.error(f"label {missing[0]!r} is not in {label_file} (known: "
                                                 f"{', '.join(sorted(known)[:20])}); add it, or fix the annotation")
        return sorted(known), label_file
    if task_type == HIERARCHICAL:
        seen = sorted(with_ancestors(seen))
    if len(seen) < 2:
        raise UserError(f"the annotations use {len(seen)} label{'s' * (len(seen) != 1)} ({', '.join(seen) or 'none'}):"
                        " a classifier needs two; give --label_file with every label", "annotate.py import")
    return seen, None


def data_line(example: Example, labels_order: Dict[str, int]) -> str:
    record = example.record
    texts = [record.text] + ([record.text_b] if record.text_b is not None else [])
    if example.labels is not None:
        texts.append(LABEL_SEPARATOR.join(sorted(example.labels, key=labels_order.__getitem__)))
    return "\t".join(texts) + "\n"


def check_layout(examples: List[Example]) -> bool:
    """True for sentence pairs; a mixture of pairs and single texts is an error naming the first odd one."""
    pair = examples[0].record.text_b is not None
    for example in examples:
        if (example.record.text_b is not None) != pair:
            raise example.record.where.error(f"{'has no' if pair else 'has a'} second text (text_b), unlike "
                                             f"{examples[0].record.where.name or 'the first line'}: a dataset holds "
                                             "single texts or pairs, not both")
    return pair


def import_annotations(args) -> dict:
    """Read, check and write the dataset folder; return the summary. `args`: the import flags
    (utils/flags/annotate.py `ImportArguments`: format, input, output_dir, task_type, splits, seed,
    label_file, conflict, unlabeled, cancelled, text fields, cleaning, overwrite_output_dir)."""
    report = Report()
    options = ReadOptions(args.text_key, args.text_b_key, args.from_name, args.strip_html, args.normalize_whitespace)
    records = read_records(str(args.format), args.input, options)
    task_type, why = infer_task_type(records, str(args.task_type) if args.task_type else None)
    examples = resolve_records(records, task_type, args, report)
    if not examples:
        raise UserError("no task is left to import (every one was skipped or dropped)", args.input)
    check_layout(examples)
    unlabeled = [e for e in examples if e.labels is None]
    labelled = [e for e in examples if e.labels is not None]
    if unlabeled and args.unlabeled == "error":
        first = unlabeled[0].record.where
        raise first.error(f"has no annotation ({len(unlabeled)} such tasks); --unlabeled data puts them in "
                          "data.txt, --unlabeled drop leaves them out")
    if not labelled:
        raise UserError("no task has an annotation: nothing to train on (annotate some first)", args.input)
    labels, copy_from = label_list(labelled, task_type, args.label_file)
    order = {label: i for i, label in enumerate(labels)}
    parts, how = assign_splits([tuple(sorted(e.labels, key=order.__getitem__)) for e in labelled],
                               task_type == MULTI_CLASS, args.splits, args.seed)
    files = {split: [labelled[i] for i in part] for split, part in zip(SPLITS, parts)}
    files["data"] = unlabeled if args.unlabeled == "data" else []
    report.counts["unlabeled"] = len(unlabeled)
    write_folder(args.output_dir, files, labels, copy_from, order, task_type, args.overwrite_output_dir)
    summary = {"output_dir": args.output_dir, "task_type": task_type, "task_type_from": why,
               "labels": len(labels), **{split: len(files[split]) for split in (*SPLITS, "data")},
               "splits": how, **{k.replace(" ", "_").replace("(", "").replace(")", ""): v
                                 for k, v in sorted(report.counts.items())}}
    describe(summary, args)
    return summary


def write_folder(output_dir: str, files: Dict[str, List[Example]], labels: List[str], copy_from: Optional[str],
                 order: Dict[str, int], task_type: str, overwrite: bool = False) -> None:
    """Every file into a directory beside `output_dir`, read back by the folder reader, then renamed.

    The folder is checked again under a lock on its parent: the flags checked it before the export was
    read, and another import may have written it since (two at once: one writes, the other refuses)."""
    with parent_locked(output_dir), atomic_directory(output_dir) as tmp:
        if os.path.isdir(output_dir) and os.listdir(output_dir) and not overwrite:
            raise UserError(f"{output_dir} was written by another process while this import ran; "
                            "--overwrite_output_dir replaces it", "--output_dir")
        if copy_from:
            shutil.copyfile(copy_from, os.path.join(tmp, LABEL_FILE))
        else:
            with open(os.path.join(tmp, LABEL_FILE), "w", encoding="utf-8") as fp:
                fp.writelines(label + "\n" for label in labels)
        for split, examples in files.items():
            if examples:
                with open(os.path.join(tmp, SPLIT_FILES[split]), "w", encoding="utf-8") as fp:
                    fp.writelines(data_line(e, order) for e in examples)
        load_dataset_dir(tmp, need_train=True, need_dev=bool(files["dev"]), need_test=bool(files["test"]),
                         task_type=task_type)


def describe(summary: dict, args) -> None:
    """What the console says (stderr): where each task went and what was skipped."""
    lines = [f"imported {summary['tasks']} tasks of {args.input} as {summary['task_type']} "
             f"({summary['task_type_from']}): train {summary['train']}, dev {summary['dev']}, test {summary['test']} "
             f"({summary['splits']}, seed {args.seed}), {summary['labels']} labels"]
    if summary.get("unlabeled"):
        where = "data.txt" if args.unlabeled == "data" else "left out (--unlabeled drop)"
        lines.append(f"{summary['unlabeled']} tasks without an annotation: {where}")
    for key, what in (("cancelled_annotations", "cancelled (skipped) annotations not used"),
                      ("skipped_cancelled", "tasks every annotator skipped: left out"),
                      ("duplicates_merged", "duplicate texts merged (each text in one file only)"),
                      ("conflicts", f"disagreements resolved by --conflict {args.conflict}"),
                      ("dropped_conflict", "tasks dropped by --conflict drop")):
        if summary.get(key):
            lines.append(f"{summary[key]} {what}")
    for line in lines:
        print(line, file=sys.stderr)
