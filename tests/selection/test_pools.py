"""The bounded pools: what they hold never exceeds their size, repeats are refused, the sample is seeded."""
import numpy as np

from utils.selection.pools import Reservoir, TopK, read_exclusions, text_key


def test_top_k_keeps_the_k_best_and_never_holds_more():
    heap = TopK(3)
    rng = np.random.default_rng(0)
    values = rng.random(1000)
    for i, v in enumerate(values):
        heap.offer(v, i, i, i)
        assert len(heap) <= 3
    assert heap.peak == 3
    assert [item for _, item in heap.ranked()] == list(np.argsort(-values)[:3])


def test_top_k_ties_go_to_the_earlier_text_and_a_repeat_is_refused():
    heap = TopK(2)
    assert heap.offer(0.5, 0, "a", "first")
    assert not heap.offer(0.9, 1, "a", "repeat of a")  # the same text again
    assert heap.offer(0.5, 2, "b", "second")
    assert not heap.offer(0.5, 3, "c", "tied but later")
    assert [item for _, item in heap.ranked()] == ["first", "second"]


def test_the_reservoir_is_bounded_seeded_and_uniform():
    def sample(seed):
        pool = Reservoir(50, seed)
        for i in range(5000):
            pool.offer(i, i)
            assert len(pool) <= 50
        return sorted(pool.items())

    assert sample(1) == sample(1) and sample(1) != sample(2)
    means = [np.mean(sample(seed)) for seed in range(20)]
    assert abs(np.mean(means) - 2499.5) < 200  # uniform over the input, not its head or tail


def test_exclusions_read_labelled_splits_and_plain_texts(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("苹果很甜\tapple\n\n香蕉\n", encoding="utf-8")
    keys = read_exclusions(str(path), pair=False)
    assert keys == {text_key({"text_a": "苹果很甜"}), text_key({"text_a": "香蕉"})}
