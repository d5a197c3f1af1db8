"""audit.py's run (utils/audit/pipeline.py): what it tells the user about its own reliability."""
from utils.audit.pipeline import weak_models_warning


def test_fold_models_near_the_majority_baseline_are_called_guesses():
    given = [[0]] * 50 + [[1]] * 25 + [[2]] * 25               # always answering label 0: 50%
    assert "close to guesses" in weak_models_warning(0.55, given)
    assert "50.0%" in weak_models_warning(0.55, given)


def test_fold_models_well_above_the_baseline_give_no_warning():
    given = [[0]] * 50 + [[1]] * 25 + [[2]] * 25
    assert weak_models_warning(0.75, given) == ""           # half way from the baseline to perfect
    assert weak_models_warning(0.95, [[0], [1], [2], [3]] * 10) == ""


def test_the_next_round_trains_without_the_suspects_while_every_label_keeps_k_examples_that_train():
    from types import SimpleNamespace

    from utils.audit.pipeline import next_exclusions

    pool = SimpleNamespace(given=lambda: [[0]] * 10 + [[1]] * 4 + [[2]] * 6)
    issues = [SimpleNamespace(index=i, given=pool.given()[i]) for i in (12, 0, 13, 1, 2, 10, 15)]  # most suspect first
    # label 1 (4 examples, K = 3) can lose only one: its most suspect (12) goes, 13 and 10 stay to train
    assert next_exclusions(pool, issues, folds=3) == [0, 1, 2, 12, 15]
    assert next_exclusions(pool, [], folds=3) == []
