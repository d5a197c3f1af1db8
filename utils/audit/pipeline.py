"""audit.py: the data read and checked, the folds run (or reused), the issues found and written.

Every check that can fail on the user's input (flags, data lines, label counts against --folds, the
output folder) runs before the first fold loads a model.
"""
from __future__ import annotations

import os
import sys
from collections import Counter
from typing import Any, Dict, List

import numpy as np

from ..task.decoding import MULTI_CLASS
from .folds import Pool, check_label_counts, read_pool
from .issues import find_issues, settings
from .oof import claim_output_dir, config_of, fingerprint, out_of_fold, plan_repeats
from .report import ISSUES_HTML, ISSUES_TSV, REVIEW_TASKS, SUMMARY, write_report


def oof_accuracy(pool: Pool, probs: np.ndarray, decided: np.ndarray) -> float:
    """How often the out-of-fold prediction equals the given label (label sets: the whole set)."""
    if pool.task_type == MULTI_CLASS:
        return float(np.mean([row.argmax() == given[0] for row, given in zip(probs, pool.given())]))
    return float(np.mean([set(np.flatnonzero(row)) == set(given) for row, given in zip(decided, pool.given())]))


def weak_models_warning(accuracy: float, given: List[List[int]]) -> str:
    """A warning when the fold models are hardly better than always answering the most frequent given
    label: their disagreement with a label then says little, and the ranking is close to a guess."""
    counts = np.bincount([labels[0] for labels in given if labels])
    baseline = float(counts.max() / counts.sum()) if counts.size else 0.0
    if accuracy >= baseline + 0.5 * (1 - baseline):
        return ""
    return (f"warning: the fold models' out-of-fold accuracy ({100 * accuracy:.1f}%) is not much above always "
            f"answering the most frequent label ({100 * baseline:.1f}%): these suspects are close to guesses. "
            "More labelled lines, more training steps or a pretrained model make the audit meaningful "
            "(docs/how-to/label-audit.md).\n")


def summarize(flags, pool: Pool, oof: Dict[str, Any], found: int, reported: int) -> Dict[str, Any]:
    audit = flags.audit
    files: Dict[str, int] = {}
    for example in pool.examples:
        name = os.path.basename(example.path)
        files[name] = files.get(name, 0) + 1
    return {
        "data_dir": os.path.abspath(flags.data.data_dir), "task_type": str(pool.task_type), "folds": audit.folds,
        "repeats": audit.repeats, "seed": int(flags.training.seed), "examples": len(pool.examples), "audited": files,
        "model_selection": "dev.txt (not audited)" if pool.dev else
        f"a stratified slice ({audit.selection_fraction:g}) of each fold's training examples",
        "issues_found": found, "issues_reported": reported, "max_issues": audit.max_issues,
        "score": "cleanlab's label quality in [0, 1]: lower is more suspect",
        "cleanlab": settings(str(pool.task_type)),
        "oof_accuracy": oof_accuracy(pool, oof["probabilities"], oof["decided"]),
        "oof_accuracy_per_repeat": [oof_accuracy(pool, probs, probs >= 0.5) for probs in oof["per_repeat"]]
        if pool.task_type == MULTI_CLASS else None,
        "per_fold": [{key: result.get(key, 1 if key == "repeat" else None) for key in (
            "repeat", "fold", "seed", "train_examples", "selection", "eval", "resumed_from_checkpoint")}
                     | {"held_out": len(result["rows"])} for result in oof["folds"]],
        "train_flags": list(flags.forwarded),
    }


def audit_rounds(flags, pool: Pool, output_dir: str, digest: str):
    """`(out-of-fold results, issues, each round's summary)` of the last of --audit_rounds audits: round n trains
    its folds without the examples round n - 1 flagged (`next_exclusions`) and judges every example again."""
    audit, excluded, rounds = flags.audit, [], []
    for round_ in range(1, audit.audit_rounds + 1):
        repeats = plan_repeats(pool, output_dir, audit.folds, int(flags.training.seed), audit.selection_fraction,
                               audit.repeats, round_, excluded)
        oof = out_of_fold(flags, pool, repeats, digest)
        issues, _ = find_issues(pool.given(), oof["probabilities"], oof["decided"], str(pool.task_type))
        rounds.append({"round": round_, "trained_without": len(excluded), "issues_found": len(issues),
                       "oof_accuracy": oof_accuracy(pool, oof["probabilities"], oof["decided"])})
        excluded = next_exclusions(pool, issues, audit.folds)
    return oof, issues, rounds


def next_exclusions(pool: Pool, issues, folds: int) -> List[int]:
    """The examples the next round trains without: this round's suspects, most suspect first, as long as
    every label keeps at least K examples that train (the rest of a label's suspects stay in)."""
    counts = Counter(label for labels in pool.given() for label in labels)
    excluded = []
    for issue in issues:
        if all(counts[label] - 1 >= folds for label in issue.given):
            excluded.append(issue.index)
            for label in issue.given:
                counts[label] -= 1
    return sorted(excluded)


def run_audit(flags) -> Dict[str, Any]:
    """Audit the data folder's labels; returns audit.json's summary."""
    audit, training = flags.audit, flags.training
    output_dir = os.path.abspath(training.output_dir)
    pool = read_pool(flags.data.data_dir, str(flags.model.task_type), audit.include_dev)
    check_label_counts(pool, audit.folds)
    config = config_of(flags, pool, flags.data.data_dir)
    lock = claim_output_dir(output_dir, config, training.overwrite_output_dir)
    failed = True
    try:
        oof, issues, rounds = audit_rounds(flags, pool, output_dir, fingerprint(config))
        reported = issues[:audit.max_issues] if audit.max_issues else issues
        summary = summarize(flags, pool, oof, len(issues), len(reported))
        summary["rounds"] = rounds
        write_report(output_dir, pool, reported, oof["probabilities"], summary)
        failed = False
    finally:
        lock.release(failed=failed)
    shown: List[str] = [os.path.join(output_dir, name) for name in (ISSUES_TSV, ISSUES_HTML, REVIEW_TASKS, SUMMARY)]
    sys.stderr.write(f"{len(issues)} suspect label(s) among {len(pool.examples)} examples "
                     f"(out-of-fold accuracy {100 * summary['oof_accuracy']:.1f}%); wrote {', '.join(shown)}\n")
    if pool.task_type == MULTI_CLASS:
        sys.stderr.write(weak_models_warning(summary["oof_accuracy"], pool.given()))
    return summary
