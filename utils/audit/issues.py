"""Which given labels are suspect: confident learning (cleanlab) over the out-of-fold probabilities.

Multi-class: `cleanlab.filter.find_label_issues` flags the examples (filter_by="prune_by_noise_rate":
the confident joint estimates how many examples of each given label belong to each other label, and
that many of the least likely are flagged) and `cleanlab.rank.get_label_quality_scores`
(method="self_confidence": the out-of-fold probability of the given label) scores every example.
The suggested label is the most probable one; should that be the given label, the next best.

Multi-label and hierarchical (label sets; a hierarchical set holds every ancestor of its labels):
`cleanlab.multilabel_classification.filter.find_label_issues` and `.rank.get_label_quality_scores`
(each label's self-confidence, aggregated by an exponential moving average over the labels sorted
from worst: the worst labels weigh most). The suggested label set is the one the fold's model decides:
every label whose out-of-fold probability crosses its threshold (--threshold, or the fold's searched
ones), decoded top-down for hierarchical tasks, so a suggested path is always a whole path.

The score is cleanlab's label quality, in [0, 1]: lower is more suspect. Issues are sorted by it,
most suspect first. No Paddle here.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Dict, List, Sequence

import numpy as np

from ..task.decoding import MULTI_CLASS

FILTER_BY = "prune_by_noise_rate"
SCORE_METHOD = "self_confidence"


@dataclass
class Issue:
    """One suspect example: its pool index, given and suggested label ids, cleanlab's score, and the
    out-of-fold probabilities of the given and suggested labels."""

    index: int
    given: List[int]
    suggested: List[int]
    score: float
    p_given: List[float]
    p_suggested: List[float]


def settings(task_type: str) -> Dict[str, object]:
    """What audit.json records about how issues were found."""
    import cleanlab

    if task_type == MULTI_CLASS:
        return {"cleanlab": cleanlab.__version__, "find_label_issues": "cleanlab.filter.find_label_issues",
                "filter_by": FILTER_BY, "score": f"cleanlab.rank.get_label_quality_scores(method={SCORE_METHOD!r})",
                "suggested": "the most probable other label out of fold"}
    return {"cleanlab": cleanlab.__version__,
            "find_label_issues": "cleanlab.multilabel_classification.filter.find_label_issues",
            "filter_by": FILTER_BY,
            "score": f"cleanlab.multilabel_classification.rank.get_label_quality_scores(method={SCORE_METHOD!r}, "
                     "exponential moving average over labels)",
            "suggested": "the labels the fold's model decides (its thresholds; hierarchical: consistent paths)"}


def quality_scores(given: Sequence[Sequence[int]], probs: np.ndarray, task_type: str) -> np.ndarray:
    """cleanlab's label quality of every example (lower: more suspect)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if task_type == MULTI_CLASS:
            from cleanlab.rank import get_label_quality_scores

            return get_label_quality_scores(np.array([g[0] for g in given]), probs, method=SCORE_METHOD)
        from cleanlab.multilabel_classification.rank import get_label_quality_scores as multilabel_scores

        return multilabel_scores([list(g) for g in given], probs, method=SCORE_METHOD)


def flagged(given: Sequence[Sequence[int]], probs: np.ndarray, task_type: str) -> np.ndarray:
    """Bool `[n]`: the examples confident learning finds mislabelled."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if task_type == MULTI_CLASS:
            from cleanlab.filter import find_label_issues

            return np.asarray(find_label_issues(np.array([g[0] for g in given]), probs, filter_by=FILTER_BY,
                                                n_jobs=1), dtype=bool)
        from cleanlab.multilabel_classification.filter import find_label_issues as multilabel_issues

        return np.asarray(multilabel_issues([list(g) for g in given], probs, filter_by=FILTER_BY, n_jobs=1),
                          dtype=bool)


def suggestion(given: Sequence[int], probs: np.ndarray, decided: np.ndarray, task_type: str) -> List[int]:
    """The suggested label ids of one example (module docstring)."""
    if task_type != MULTI_CLASS:
        return [int(i) for i in np.flatnonzero(decided)]
    order = [int(i) for i in np.argsort(-probs, kind="stable")]
    return [order[0] if order[0] != given[0] else order[1]]


def find_issues(given: Sequence[Sequence[int]], probs: np.ndarray, decided: np.ndarray, task_type: str) -> tuple:
    """`(issues most suspect first, every example's score)`."""
    probs = np.asarray(probs, dtype=np.float64)
    scores = quality_scores(given, probs, task_type)
    mask = flagged(given, probs, task_type)
    issues = []
    for index in np.flatnonzero(mask):
        suggested = suggestion(given[index], probs[index], decided[index], task_type)
        issues.append(Issue(int(index), list(given[index]), suggested, float(scores[index]),
                            [float(probs[index, i]) for i in given[index]],
                            [float(probs[index, i]) for i in suggested]))
    issues.sort(key=lambda issue: (issue.score, issue.index))
    return issues, scores


def ranking(scores: np.ndarray) -> np.ndarray:
    """Every example's index, most suspect (lowest score) first; ties by position."""
    return np.argsort(np.asarray(scores), kind="stable")
