"""How uncertain a model is about each text, from its probabilities (numpy; no model needed).

Every scorer maps `[n, labels]` probabilities (an ensemble's members: `[n, members, labels]`) to `[n]`
scores; `Scorer.priority` turns them into "higher is picked first", so every strategy ranks the same way.

    entropy        multi-class: -sum p log p of the softmax; label sets: the sum over labels of each
                   sigmoid's binary entropy. Higher = more uncertain.
    margin         multi-class: best minus second-best probability; label sets: min over labels of
                   |p - the label's threshold| (the decision closest to flipping). Smaller = more uncertain.
    disagreement   an ensemble's members (`member_logits`): `kl`, the mean over members of
                   KL(member || consensus), consensus = the members' mean probabilities (label sets: the
                   sum over labels of the binary KLs); or `vote`, the entropy of the members' votes
                   (label sets: the sum over labels of the yes/no vote entropies). Higher = more disagreement.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

EPS = 1e-12


def entropy(probs: np.ndarray, multi_label: bool = False) -> np.ndarray:
    p = np.clip(np.asarray(probs, dtype=np.float64), EPS, 1.0)
    if multi_label:
        q = np.clip(1.0 - np.asarray(probs, dtype=np.float64), EPS, 1.0)
        return -(p * np.log(p) + q * np.log(q)).sum(axis=-1)
    return -(p * np.log(p)).sum(axis=-1)


def margin(probs: np.ndarray, multi_label: bool = False, thresholds: Optional[Sequence[float]] = None) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    if multi_label:
        limit = np.full(probs.shape[-1], 0.5) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
        return np.abs(probs - limit).min(axis=-1)
    if probs.shape[-1] < 2:
        return np.ones(len(probs))
    top = -np.partition(-probs, 1, axis=-1)
    return top[:, 0] - top[:, 1]


def _bernoulli(p: np.ndarray) -> np.ndarray:
    """`[..., labels]` sigmoid probabilities as `[..., labels, 2]` (yes, no) distributions."""
    return np.stack([p, 1.0 - p], axis=-1)


def kl_to_consensus(member_probs: np.ndarray, multi_label: bool = False) -> np.ndarray:
    """`[n, members, labels]` -> `[n]`: mean over members of KL(member || mean of members)."""
    probs = np.asarray(member_probs, dtype=np.float64)
    if multi_label:
        probs = _bernoulli(probs)  # [n, members, labels, 2]
    consensus = probs.mean(axis=1, keepdims=True)
    p = np.clip(probs, EPS, 1.0)
    kl = (p * (np.log(p) - np.log(np.clip(consensus, EPS, 1.0)))).sum(axis=-1)  # [n, members(, labels)]
    if multi_label:
        kl = kl.sum(axis=-1)
    return kl.mean(axis=1)


def vote_entropy(member_probs: np.ndarray, multi_label: bool = False,
                 thresholds: Optional[Sequence[float]] = None) -> np.ndarray:
    """`[n, members, labels]` -> `[n]`: the entropy of the members' votes (label sets: per label, yes/no)."""
    probs = np.asarray(member_probs, dtype=np.float64)
    n, members, labels = probs.shape
    if multi_label:
        limit = np.full(labels, 0.5) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
        yes = (probs > limit).mean(axis=1)  # [n, labels]
        return entropy(yes, multi_label=True)
    votes = np.zeros((n, labels))
    np.add.at(votes, (np.repeat(np.arange(n), members), probs.argmax(axis=-1).reshape(-1)), 1.0)
    return entropy(votes / members)


@dataclass(frozen=True)
class Scorer:
    """One uncertainty measure: `score(probs)` -> `[n]`; `ascending`: smaller scores are picked first."""

    name: str
    score: Callable[[np.ndarray], np.ndarray]
    ascending: bool = False
    members: bool = False  # reads the members' probabilities `[n, members, labels]`

    def priority(self, scores: np.ndarray) -> np.ndarray:
        """Higher is picked first."""
        scores = np.asarray(scores, dtype=np.float64)
        return -scores if self.ascending else scores


def scorer(strategy: str, multi_label: bool = False, thresholds: Optional[Sequence[float]] = None,
           disagreement: str = "kl") -> Scorer:
    """The uncertainty scorer of a strategy (hybrid: entropy; diversity: None, it needs no scores)."""
    if strategy in ("entropy", "hybrid"):
        return Scorer("entropy", lambda p: entropy(p, multi_label))
    if strategy == "margin":
        return Scorer("margin", lambda p: margin(p, multi_label, thresholds), ascending=True)
    if strategy == "disagreement":
        if disagreement == "vote":
            return Scorer("vote entropy", lambda p: vote_entropy(p, multi_label, thresholds), members=True)
        return Scorer("mean KL to consensus", lambda p: kl_to_consensus(p, multi_label), members=True)
    return Scorer("none", lambda p: np.zeros(len(p)))
