"""Picking among candidates: k-center greedy or k-means on their vectors, and the class balance (numpy;
k-means: sklearn).

k-center greedy (Sener & Savarese's core-set): vectors are L2-normalised; the first center is given
(diversity: a seeded random candidate; hybrid: the most uncertain one), then each next pick is the
candidate farthest from every pick so far. Its score is that distance (Euclidean between unit
vectors, 0..2; the first pick: 2). `--balance` caps each predicted class at ceil(k / classes present)
picks while another class still has candidates; the cap is lifted when none has. k-means (`--diversity
kmeans`): K clusters of the normalised vectors (seeded), and per cluster the candidate nearest its centroid.
"""
from __future__ import annotations

import warnings
from typing import List, Optional, Sequence, Tuple

import numpy as np


def normalize(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float64)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)


class Quota:
    """Which candidates may still be picked under the class balance (all of them without one)."""

    def __init__(self, classes: Optional[Sequence[int]], k: int):
        self.classes = None if classes is None else np.asarray(classes)
        self.counts = {}
        present = 1 if self.classes is None else len(set(self.classes.tolist()))
        self.cap = -(-k // max(present, 1))

    def allowed(self, free: np.ndarray) -> np.ndarray:
        """Of the `free` candidates (bool mask), those whose class is below its cap (all, if none is)."""
        if self.classes is None:
            return free
        full = [c for c, n in self.counts.items() if n >= self.cap]
        ok = free & ~np.isin(self.classes, full)
        return ok if ok.any() else free

    def take(self, index: int) -> None:
        if self.classes is not None:
            label = int(self.classes[index])
            self.counts[label] = self.counts.get(label, 0) + 1


def ranked_pick(count: int, k: int, classes: Optional[Sequence[int]] = None) -> List[int]:
    """Indices of candidates already ranked best first: the first `k`, under the class balance."""
    free = np.ones(count, dtype=bool)
    quota = Quota(classes, k)
    picks = []
    while len(picks) < min(k, count):
        index = int(np.flatnonzero(quota.allowed(free))[0])
        picks.append(index)
        free[index] = False
        quota.take(index)
    return picks


def k_center(vectors: np.ndarray, k: int, first: int = 0,
             classes: Optional[Sequence[int]] = None) -> List[Tuple[int, float]]:
    """`(index, distance to the nearest earlier pick)` of `min(k, n)` picks, in pick order. Ties: the
    lower index."""
    units = normalize(vectors)
    n = len(units)
    if n == 0 or k <= 0:
        return []
    free = np.ones(n, dtype=bool)
    quota = Quota(classes, k)
    nearest = np.full(n, np.inf)
    picks: List[Tuple[int, float]] = []
    index, distance = first, 2.0
    while True:
        picks.append((index, distance))
        free[index] = False
        quota.take(index)
        if len(picks) >= min(k, n):
            return picks
        squared = np.maximum(2.0 - 2.0 * units @ units[index], 0.0)
        nearest = np.minimum(nearest, squared)
        allowed = quota.allowed(free)
        masked = np.where(allowed, nearest, -1.0)
        index = int(np.argmax(masked))
        distance = float(np.sqrt(nearest[index]))


def k_means(vectors: np.ndarray, k: int, seed: int = 0,
            classes: Optional[Sequence[int]] = None) -> List[Tuple[int, float]]:
    """`(index, distance to its centroid)` of `min(k, n)` picks: k-means (sklearn, seeded) on the normalised
    vectors, then for each centroid, largest cluster first, the free candidate nearest to it (under the
    class balance). Ties: the lower index."""
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    units = normalize(vectors)
    n = len(units)
    count = min(k, n)
    if count <= 0:
        return []
    with warnings.catch_warnings():  # fewer distinct vectors than k: some clusters coincide, picks stay distinct
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = KMeans(n_clusters=count, n_init=4, random_state=seed).fit(units)
    sizes = np.bincount(model.labels_, minlength=count)
    distances = np.linalg.norm(units[:, None, :] - model.cluster_centers_[None], axis=-1)  # [n, clusters]
    free = np.ones(n, dtype=bool)
    quota = Quota(classes, k)
    picks: List[Tuple[int, float]] = []
    for cluster in sorted(range(count), key=lambda c: (-sizes[c], c)):  # stable: equal sizes by cluster id
        allowed = quota.allowed(free)
        index = int(np.argmin(np.where(allowed, distances[:, cluster], np.inf)))
        picks.append((index, float(distances[index, cluster])))
        free[index] = False
        quota.take(index)
    return picks
