"""The uncertainty and disagreement scores on hand-made probabilities: exact values and orders."""
import numpy as np
import pytest

from utils.selection.scores import entropy, kl_to_consensus, margin, scorer, vote_entropy

PROBS = np.array([[0.98, 0.01, 0.01],   # sure
                  [0.34, 0.33, 0.33],   # nearly uniform
                  [0.50, 0.49, 0.01],   # two-way tie
                  [0.70, 0.20, 0.10]])


def order(strategy, probs, **kwargs):
    s = scorer(strategy, **kwargs)
    return list(np.argsort(-s.priority(s.score(probs)), kind="stable"))


def test_entropy_ranks_the_most_uniform_first_and_is_exact():
    assert order("entropy", PROBS) == [1, 3, 2, 0]
    assert entropy(np.array([[0.5, 0.5]]))[0] == pytest.approx(np.log(2))
    assert entropy(np.array([[1.0, 0.0]]))[0] == pytest.approx(0.0, abs=1e-9)


def test_margin_ranks_the_smallest_gap_first():
    np.testing.assert_allclose(margin(PROBS), [0.97, 0.01, 0.01, 0.5])
    assert order("margin", PROBS) == [1, 2, 3, 0]  # equal margins: input order


def test_label_sets_sum_binary_entropies_and_take_the_decision_closest_to_its_threshold():
    probs = np.array([[0.9, 0.1], [0.5, 0.9], [0.6, 0.4]])
    expected = [2 * -(0.9 * np.log(0.9) + 0.1 * np.log(0.1)), -(2 * 0.5 * np.log(0.5)) - (0.9 * np.log(0.9) + 0.1 * np.log(0.1)),
                2 * -(0.6 * np.log(0.6) + 0.4 * np.log(0.4))]
    np.testing.assert_allclose(entropy(probs, multi_label=True), expected)
    assert order("entropy", probs, multi_label=True) == [2, 1, 0]
    np.testing.assert_allclose(margin(probs, True, thresholds=[0.5, 0.5]), [0.4, 0.0, 0.1])
    np.testing.assert_allclose(margin(probs, True, thresholds=[0.85, 0.5]), [0.05, 0.35, 0.1])
    assert order("margin", probs, multi_label=True, thresholds=[0.85, 0.5]) == [0, 2, 1]


def test_disagreement_kl_to_consensus_and_vote_entropy():
    agree = [[0.8, 0.2], [0.8, 0.2], [0.8, 0.2]]
    split = [[0.9, 0.1], [0.1, 0.9], [0.9, 0.1]]
    mild = [[0.6, 0.4], [0.4, 0.6], [0.6, 0.4]]
    members = np.array([agree, split, mild])
    kl = kl_to_consensus(members)
    assert kl[0] == pytest.approx(0.0, abs=1e-12)
    consensus = np.mean(split, axis=0)
    expected = np.mean([sum(p * np.log(p / q) for p, q in zip(m, consensus)) for m in split])
    assert kl[1] == pytest.approx(expected)
    assert order("disagreement", members) == [1, 2, 0]
    votes = vote_entropy(members)
    assert votes[0] == pytest.approx(0.0, abs=1e-9)
    assert votes[1] == pytest.approx(votes[2]) == pytest.approx(-(2 / 3 * np.log(2 / 3) + 1 / 3 * np.log(1 / 3)))
    assert order("disagreement", members, disagreement="vote") == [1, 2, 0]  # the tie: input order


def test_label_set_disagreement_is_per_label():
    members = np.array([[[0.9, 0.2], [0.9, 0.8]],     # label 1 split
                        [[0.9, 0.2], [0.9, 0.2]]])    # all agree
    assert order("disagreement", members, multi_label=True) == [0, 1]
    np.testing.assert_allclose(vote_entropy(members, True), [np.log(2), 0.0], atol=1e-9)
