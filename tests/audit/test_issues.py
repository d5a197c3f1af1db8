"""utils/audit/issues.py: cleanlab finds the planted label errors in out-of-fold probabilities, multi-class and
label sets, suggests the right label, and ranks the most suspect first."""
import numpy as np

from utils.audit.issues import find_issues, ranking


def noisy_probabilities(n=90, labels=3, flips=(4, 17, 33, 58, 71), seed=0):
    """Confident, right out-of-fold probabilities (about 0.9 for the true label) of `n` examples whose given
    labels are wrong at `flips`."""
    rng = np.random.default_rng(seed)
    truth = np.arange(n) % labels
    probs = np.full((n, labels), 0.1 / (labels - 1)) + rng.uniform(0, 0.005, (n, labels))
    probs[np.arange(n), truth] = 0.9
    probs /= probs.sum(axis=1, keepdims=True)
    given = truth.copy()
    for index in flips:
        given[index] = (truth[index] + 1) % labels
    return truth, [[int(g)] for g in given], probs


def test_planted_multi_class_errors_are_flagged_first_with_the_true_label_suggested():
    truth, given, probs = noisy_probabilities()
    decided = probs == probs.max(axis=1, keepdims=True)
    issues, scores = find_issues(given, probs, decided, "multi-class")
    flips = {4, 17, 33, 58, 71}
    assert {issue.index for issue in issues[:5]} == flips
    assert [issue.score for issue in issues] == sorted(issue.score for issue in issues)  # most suspect first
    for issue in issues[:5]:
        assert issue.suggested == [truth[issue.index]] and issue.given != issue.suggested
        assert issue.p_given == [probs[issue.index, issue.given[0]]]
        assert issue.score == scores[issue.index] == issue.p_given[0]  # self-confidence: p(given label)
    assert set(ranking(scores)[:5]) == flips


def test_the_suggestion_is_never_the_given_label():
    _, given, probs = noisy_probabilities()
    probs[10] = [0.34, 0.33, 0.33]  # given 1 (10 % 3), the best is 0
    probs[11] = [0.30, 0.30, 0.40]  # given 2 is also the best: the suggestion is the next best
    issues, _ = find_issues([[1]] * 12 + given[12:], probs, probs == probs.max(1, keepdims=True), "multi-class")
    for issue in issues:
        assert issue.suggested != issue.given


def test_label_sets_a_missing_and_a_spurious_label_are_found_and_the_models_set_is_suggested():
    """The multi-label variant (cleanlab.multilabel_classification): label sets over 4 labels, two lines wrong."""
    rng = np.random.default_rng(1)
    n, width = 80, 4
    truth = rng.random((n, width)) < 0.35
    truth[~truth.any(axis=1), 0] = True
    probs = np.where(truth, rng.uniform(0.8, 0.98, (n, width)), rng.uniform(0.02, 0.2, (n, width)))
    given = [list(np.flatnonzero(row)) for row in truth]
    given[5] = sorted(set(given[5]) ^ {3})     # label 3 added or dropped
    given[40] = sorted(set(given[40]) ^ {1})
    decided = probs > 0.5
    issues, scores = find_issues(given, probs, decided, "multi-label")
    assert {issue.index for issue in issues[:2]} == {5, 40}
    for issue in issues[:2]:
        assert issue.suggested == list(np.flatnonzero(truth[issue.index]))
        assert issue.p_suggested == [probs[issue.index, i] for i in issue.suggested]
    assert scores.shape == (n,) and (scores >= 0).all() and (scores <= 1).all()
