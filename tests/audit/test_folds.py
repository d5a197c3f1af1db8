"""utils/audit/folds.py and the fold plan: stratified, seeded folds, each example held out exactly once, and
model selection that never sees a held-out example."""
import collections
import os

import numpy as np
import pytest

from utils.audit.folds import assign_folds, check_label_counts, read_pool, selection_slice, strata
from utils.audit.oof import plan_folds, write_fold_data
from utils.errors import UserError


def test_every_example_is_held_out_exactly_once_and_each_label_is_spread_evenly():
    groups = [0] * 17 + [1] * 9 + [2] * 30
    folds = assign_folds(groups, 5, seed=3)
    assert folds.shape == (56,) and set(folds) == set(range(5))  # one fold per example, all folds used
    sizes = collections.Counter(folds.tolist())
    assert max(sizes.values()) - min(sizes.values()) <= 1
    for group in (0, 1, 2):
        per_fold = collections.Counter(f for f, g in zip(folds, groups) if g == group)
        assert max(per_fold.values()) - min(per_fold.get(k, 0) for k in range(5)) <= 1, (group, per_fold)


def test_folds_are_seeded():
    groups = [i % 3 for i in range(60)]
    assert (assign_folds(groups, 4, seed=1) == assign_folds(groups, 4, seed=1)).all()
    assert (assign_folds(groups, 4, seed=1) != assign_folds(groups, 4, seed=2)).any()


def test_a_label_sets_stratum_is_its_rarest_label():
    assert strata([[0, 1], [0], [0, 2], [], [1]]) == [1, 0, 2, -1, 1]


def test_the_selection_slice_takes_a_share_of_each_label_and_leaves_singletons_to_train():
    groups = [0] * 20 + [1] * 10 + [2]
    chosen = selection_slice(groups, list(range(31)), 0.1, seed=0)
    counts = collections.Counter(groups[i] for i in chosen)
    assert counts == {0: 2, 1: 1}


def test_the_fold_plan_holds_out_each_line_once_and_trains_and_selects_without_it(keyword_data, tmp_path):
    pool = read_pool(keyword_data, "multi-class", include_dev=True)
    assert len(pool.examples) == 96 + 24 and pool.dev == []  # dev.txt audited: selection slices instead
    folds = plan_folds(pool, str(tmp_path), 4, seed=42, fraction=0.1)
    held = sorted(i for fold in folds for i in fold.held_out)
    assert held == list(range(len(pool.examples)))
    for fold in folds:
        held_out = set(fold.held_out)
        assert not held_out & set(fold.train) and not held_out & set(fold.selection)
        assert not set(fold.train) & set(fold.selection)
        assert set(fold.train) | set(fold.selection) | held_out == set(range(len(pool.examples)))
        assert {pool.given()[i][0] for i in fold.selection} == {0, 1, 2}
    write_fold_data(folds[0], pool)
    lines = {name: open(os.path.join(folds[0].data_dir, name), encoding="utf-8").read().splitlines()
             for name in ("train.txt", "dev.txt", "test.txt")}
    assert lines["test.txt"] == [pool.examples[i].text for i in folds[0].held_out]   # the user's lines as written
    assert not set(lines["test.txt"]) & (set(lines["train.txt"]) | set(lines["dev.txt"]))


def test_without_include_dev_dev_txt_selects_the_model(keyword_data, tmp_path):
    pool = read_pool(keyword_data, "multi-class", include_dev=False)
    assert len(pool.examples) == 96 and len(pool.dev) == 24
    assert all(fold.selection == [] for fold in plan_folds(pool, str(tmp_path), 3, seed=0, fraction=0.1))


def test_a_label_with_fewer_examples_than_folds_is_refused_naming_its_label_txt_line(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "label.txt").write_text("a\nb\nc\n", encoding="utf-8")
    (data / "train.txt").write_text("".join(f"x{i}\t{'a' if i < 6 else 'b'}\n" for i in range(12)) + "y\tc\nz\tc\n",
                                    encoding="utf-8")
    pool = read_pool(str(data), "multi-class", include_dev=False)
    check_label_counts(pool, 2)  # two of each: every fold's training sees the label
    with pytest.raises(UserError) as error:
        check_label_counts(pool, 3)
    assert error.value.path.endswith("label.txt") and error.value.line == 3 and "'c'" in error.value.message
    assert "lower --folds to 2 or fewer" in error.value.message


def test_a_label_with_one_example_is_not_told_to_lower_the_folds(tmp_path):
    """No number of folds trains a model that sees a label whose only example is held out."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "label.txt").write_text("a\nb\n", encoding="utf-8")
    (data / "train.txt").write_text("".join(f"x{i}\ta\n" for i in range(6)) + "y\tb\n", encoding="utf-8")
    with pytest.raises(UserError) as error:
        check_label_counts(read_pool(str(data), "multi-class", include_dev=False), 2)
    assert "no --folds can audit a single example" in error.value.message
    assert "lower --folds" not in error.value.message


def test_pool_lines_keep_their_file_and_line(keyword_data):
    pool = read_pool(keyword_data, "multi-class", include_dev=True)
    assert pool.examples[0].where == "train.txt:1" and pool.examples[96].where == "dev.txt:1"
    assert np.all([e.text.split("\t")[0] == e.example["text_a"] for e in pool.examples])


def test_a_later_round_holds_out_every_line_but_never_trains_or_selects_on_the_last_rounds_suspects(keyword_data,
                                                                                                     tmp_path):
    pool = read_pool(keyword_data, "multi-class", include_dev=True)
    excluded = list(range(0, len(pool.examples), 7))
    folds = plan_folds(pool, str(tmp_path), 4, seed=42, fraction=0.1, round_=2, excluded=excluded)
    assert sorted(i for fold in folds for i in fold.held_out) == list(range(len(pool.examples)))
    for fold in folds:
        assert not set(excluded) & (set(fold.train) | set(fold.selection))
        assert fold.excluded == excluded and fold.round == 2
        assert fold.directory == str(tmp_path / "folds" / "round-2" / f"fold-{fold.number}")
        assert {pool.given()[i][0] for i in fold.train} == {0, 1, 2}
    # the excluded form strata of their own: every fold holds out (and trains without) its share of them
    held = collections.Counter(fold.number for fold in folds for i in fold.held_out if i in excluded)
    assert max(held.values()) - min(held.values()) <= 1
    trained = [len(fold.train) + len(fold.selection) for fold in folds]
    assert max(trained) - min(trained) <= 2
