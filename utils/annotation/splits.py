"""Train/dev/test splits of imported examples: seeded, stratified where the classes allow it.

`--splits 0.8 0.1 0.1` as PaddleNLP's doccano.py / label_studio.py converters take it (three
fractions summing to 1). The counts are rounded once for the whole set (largest remainders, train
keeps at least one example). Two cuts, each with scikit-learn's `train_test_split(stratify=...)`:
train | rest, then dev | test within the rest. A cut is stratified by the label (multi-class) or by
the whole label set (label sets), else by each example's rarest label (of those on 2 examples or more), when every stratum has at
least 2 examples and each side can hold one of each; otherwise it is a seeded random cut, and the
description says why. The same examples and seed give the same splits; each split keeps file order.
"""
from __future__ import annotations

from collections import Counter
from typing import List, Sequence, Tuple

SPLITS = ("train", "dev", "test")


def split_counts(n: int, ratios: Sequence[float]) -> List[int]:
    """`n` examples shared by `ratios` (largest remainders); train gets one when there is any."""
    exact = [n * r for r in ratios]
    counts = [int(x) for x in exact]
    for i in sorted(range(len(ratios)), key=lambda i: (-(exact[i] - counts[i]), i))[:n - sum(counts)]:
        counts[i] += 1
    if n and counts[0] == 0:
        donor = max(range(1, len(counts)), key=lambda i: counts[i])
        counts[donor] -= 1
        counts[0] += 1
    return counts


def _stratifiable(strata: Sequence[str], n_second: int) -> bool:
    counts = Counter(strata)
    return (min(counts.values()) >= 2 and n_second >= len(counts)
            and len(strata) - n_second >= len(counts))


def _cut(indices: List[int], options: List[Tuple[str, List[str]]], n_second: int,
         seed: int) -> Tuple[List[int], List[int], str]:
    """`indices` into `(first, second)` with `len(second) == n_second`; how it was stratified."""
    from sklearn.model_selection import train_test_split

    if n_second == 0:
        return list(indices), [], "-"
    if n_second == len(indices):
        return [], list(indices), "-"
    for name, strata in options:
        y = [strata[i] for i in indices]
        if _stratifiable(y, n_second):
            first, second = train_test_split(indices, test_size=n_second, random_state=seed, stratify=y)
            return list(first), list(second), f"stratified by {name}"
    first, second = train_test_split(indices, test_size=n_second, random_state=seed, shuffle=True)
    counts = Counter(options[0][1][i] for i in indices)
    rarest, count = min(counts.items(), key=lambda kv: (kv[1], kv[0]))
    why = (f"{options[0][0]} {rarest!r} has {count} example{'s' * (count != 1)}"
           if count < 2 else f"{len(counts)} classes do not fit in {n_second} examples")
    return list(first), list(second), f"not stratified ({why}; seeded random)"


def assign_splits(label_sets: Sequence[Tuple[str, ...]], multi_class: bool, ratios: Sequence[float],
                  seed: int) -> Tuple[List[List[int]], str]:
    """Indices of the examples (their sorted labels given) in train, dev and test; a description."""
    n = len(label_sets)
    combos = [",".join(labels) for labels in label_sets]
    if multi_class:
        options = [("label", combos)]
    else:
        frequency = Counter(label for labels in label_sets for label in labels)
        rarest = [min(labels, key=lambda label: (frequency[label] < 2, frequency[label], label)) for labels in label_sets]
        options = [("label set", combos), ("rarest label", rarest)]
    counts = split_counts(n, ratios)
    train, rest, first_how = _cut(list(range(n)), options, counts[1] + counts[2], seed)
    dev, test, second_how = _cut(rest, options, counts[2], seed)
    hows = [how for how in (first_how, second_how) if how != "-"]
    if not hows:
        how = "all in train"
    elif len(set(hows)) == 1:
        how = hows[0]
    else:
        how = f"train|rest {first_how}; dev|test {second_how}"
    return [sorted(train), sorted(dev), sorted(test)], how
