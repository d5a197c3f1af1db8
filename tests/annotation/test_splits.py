"""Seeded, stratified splits (utils/annotation/splits.py)."""
from collections import Counter

from utils.annotation.splits import assign_splits, split_counts


def labels_of(n_per_class=(40, 40, 20)):
    return [(name,) for name, n in zip("abc", n_per_class) for _ in range(n)]


def test_counts_follow_the_fractions_and_train_always_gets_one():
    assert split_counts(100, [0.8, 0.1, 0.1]) == [80, 10, 10]
    assert sum(split_counts(7, [0.8, 0.1, 0.1])) == 7
    assert split_counts(1, [0.1, 0.45, 0.45])[0] == 1


def test_each_class_keeps_its_share_in_every_split():
    labels = labels_of()
    parts, how = assign_splits(labels, True, [0.8, 0.1, 0.1], seed=1)
    assert how == "stratified by label"
    assert sorted(i for part in parts for i in part) == list(range(len(labels)))
    for part, share in zip(parts, (0.8, 0.1, 0.1)):
        counts = Counter(labels[i][0] for i in part)
        assert counts == {"a": 40 * share, "b": 40 * share, "c": 20 * share}


def test_the_same_seed_gives_the_same_splits_and_another_seed_others():
    labels = labels_of()
    first = assign_splits(labels, True, [0.8, 0.1, 0.1], seed=1)
    assert assign_splits(labels, True, [0.8, 0.1, 0.1], seed=1) == first
    assert assign_splits(labels, True, [0.8, 0.1, 0.1], seed=2)[0] != first[0]


def test_a_class_too_small_to_stratify_is_said_and_the_cut_stays_seeded():
    labels = labels_of((10, 10, 1))
    parts, how = assign_splits(labels, True, [0.8, 0.1, 0.1], seed=3)
    assert "not stratified" in how and "'c' has 1 example" in how
    assert assign_splits(labels, True, [0.8, 0.1, 0.1], seed=3) == (parts, how)


def test_label_sets_stratify_by_the_set_else_by_their_rarest_label():
    sets = [("a", "b")] * 20 + [("a",)] * 20
    assert assign_splits(sets, False, [0.5, 0.25, 0.25], seed=0)[1] == "stratified by label set"
    sets = [("a", f"x{i}") for i in range(20)] + [("b",)] * 20
    parts, how = assign_splits(sets, False, [0.5, 0.25, 0.25], seed=0)
    assert how == "stratified by rarest label"
