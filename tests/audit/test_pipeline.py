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
