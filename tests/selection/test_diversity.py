"""k-center greedy and the class balance on hand-made vectors."""
import numpy as np

from utils.selection.diversity import k_center, k_means, ranked_pick


def test_k_center_picks_the_farthest_direction_each_time():
    vectors = np.array([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0], [-1.0, 0.0], [0.0, 5.0]])
    picks = k_center(vectors, 3, first=0)
    assert [i for i, _ in picks] == [0, 3, 2]  # opposite first, then the orthogonal (index 2 before its copy 4)
    assert [round(d, 6) for _, d in picks] == [2.0, 2.0, round(np.sqrt(2), 6)]


def test_k_center_with_balance_caps_each_class():
    vectors = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0], [0.7, 0.7]])
    classes = [0, 0, 0, 0, 1]
    assert [i for i, _ in k_center(vectors, 2, 0)] == [0, 1]
    assert [i for i, _ in k_center(vectors, 2, 0, classes)] == [0, 4]  # class 0 is at its cap of 1


def test_ranked_pick_spreads_over_classes_and_fills_from_the_rest():
    classes = [0, 0, 0, 1, 2, 0]
    assert ranked_pick(6, 3) == [0, 1, 2]
    assert ranked_pick(6, 3, classes) == [0, 3, 4]
    assert ranked_pick(6, 5, classes) == [0, 1, 3, 4, 2]  # cap 2 per class; then the cap is lifted


def test_k_means_takes_one_pick_from_each_separated_cluster_largest_first():
    rng = np.random.default_rng(0)
    directions = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    sizes = [5, 20, 10]
    vectors = np.concatenate([d + rng.normal(0, 0.05, (n, 3)) for d, n in zip(directions, sizes)])
    cluster_of = np.repeat([0, 1, 2], sizes)
    picks = k_means(vectors, 3, seed=1)
    assert [int(cluster_of[i]) for i, _ in picks] == [1, 2, 0]  # one per cluster, the largest first
    assert all(0.0 <= d < 0.2 for _, d in picks)  # each pick near its centroid
    assert k_means(vectors, 3, seed=1) == picks  # seeded


def test_k_means_with_balance_and_more_picks_than_candidates():
    vectors = np.array([[1.0, 0.0], [0.98, 0.2], [0.0, 1.0], [0.2, 0.98]])
    assert sorted(i for i, _ in k_means(vectors, 10)) == [0, 1, 2, 3]  # all of them, once
    classes = [0, 0, 0, 1]
    picks = [i for i, _ in k_means(vectors, 2, seed=0, classes=classes)]
    assert 3 in picks and len(set(picks)) == 2  # class 0 is capped at one pick: class 1's only text is taken
