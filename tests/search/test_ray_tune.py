"""--ray's Tune parts without a cluster: Tune's results are told to the search's study as the local loop tells
them, and the study's pruner decides which Tune trial stops (tests/test_search.py runs them on a cluster)."""
import types

import pytest
from helpers import require_ray

from utils.errors import UserError
from utils.search.space import Space, parse_param
from utils.search.study import WORKER_ATTR, default_storage, open_storage, open_study, worker_id

SPACE = Space([parse_param("soft_encoder", {"choices": ["lstm", "mlp", "none"]}, "s.yaml")], "s.yaml")


def record(values):
    """A trial's record over runs scoring `values` (what objective.run_trial returns)."""
    mean = sum(values) / len(values)
    return {"value": min(values), "mean": mean, "std": 0.0 if len(values) > 1 else None, "n": len(values),
            "pruned": False, "seconds": 1.0, "runs": []}


class Search:
    """The searcher and scheduler of one `search.py --ray` on a fresh study, and a stand-in for Tune's calls."""

    def __init__(self, tmp_path, pruning=True):
        require_ray()
        from utils.search import ray_tune

        self.rt = ray_tune
        storage = open_storage(default_storage(str(tmp_path)))
        self.study = open_study(storage, "search", {"space": SPACE.fingerprint()}, 0, pruning)
        self.told = 0
        self.searcher = ray_tune.StudySearch(self.study, storage, SPACE, self.count)
        self.scheduler = ray_tune.StudyPruning(self.study, self.searcher)
        self.configs = {}

    def count(self):
        self.told += 1

    def start(self, trial_id):
        self.configs[trial_id] = self.searcher.suggest(trial_id)
        return self.configs[trial_id]

    def run(self, trial_id, metric, step):
        """A run's report: Tune asks the scheduler first, then (unless it stops the trial) the searcher."""
        result = self.rt.trial_result(self.configs[trial_id], self.rt.RAN, record([metric]), False, "node-a",
                                      metric, step)
        decision = self.scheduler.on_trial_result(None, types.SimpleNamespace(trial_id=trial_id), result)
        if decision == self.scheduler.CONTINUE:
            self.searcher.on_trial_result(trial_id, result)
        return decision, result

    def end(self, trial_id, outcome, rec, last=True):
        result = self.rt.trial_result(self.configs[trial_id], outcome, rec, last, "node-a")
        self.searcher.on_trial_complete(trial_id, result)

    def trial(self, number):
        return next(t for t in self.study.get_trials() if t.number == number)


def test_each_tune_trial_is_told_to_the_study_as_a_local_trial_is(tmp_path):
    s = Search(tmp_path)
    config = s.start("a")
    assert config[s.rt.TRIAL] == 0 and config[s.rt.SAME_AS] == -1 and config["soft_encoder"] in ("lstm", "mlp", "none")
    assert s.trial(0).state.name == "RUNNING" and s.trial(0).user_attrs[WORKER_ATTR] == worker_id()
    decision, _ = s.run("a", 0.5, 0)
    assert decision == s.scheduler.CONTINUE and s.trial(0).intermediate_values == {0: 0.5}  # the local step
    s.end("a", s.rt.RAN, record([0.5, 0.7]))
    done = s.trial(0)
    assert done.state.name == "COMPLETE" and done.value == 0.5
    assert done.user_attrs["n"] == 2 and done.user_attrs["node"] == "node-a" and not done.user_attrs["pruned"]

    s.start("b")
    _, last = s.run("b", 0.2, 0)  # the scheduler stopped it after this run: its last result is not `last`
    s.searcher.on_trial_complete("b", last)
    pruned = s.trial(1)
    assert pruned.state.name == "PRUNED" and pruned.user_attrs["n"] == 1 and pruned.user_attrs["pruned"]
    assert pruned.value == 0.2  # Optuna's value of a pruned trial: its last intermediate value, as locally

    s.start("c")
    s.end("c", s.rt.INVALID, {"note": "not run: --freeze_plm with --method finetune"})
    assert s.trial(2).state.name == "PRUNED" and s.trial(2).user_attrs["note"].startswith("not run: --freeze_plm")

    s.start("d")
    s.end("d", s.rt.FAILED, {"note": "train.log: run seed1 failed", "message": "run seed1 failed", "path": "train.log"})
    assert s.trial(3).state.name == "FAIL" and "run seed1 failed" in s.trial(3).user_attrs["note"]
    assert s.searcher.fatal is None  # a trial completed: one failure does not end the search

    s.study.enqueue_trial(dict(done.params))  # the sampler draws a finished configuration again
    config = s.start("e")
    assert config[s.rt.SAME_AS] == 0
    s.end("e", s.rt.SAME, {})
    again = s.trial(4)
    assert again.state.name == "COMPLETE" and again.value == 0.5 and "the configuration of trial 0" in \
        again.user_attrs["note"]

    s.start("f")
    s.searcher.on_trial_complete("f", error=True)  # the trainable raised (a bug): failed, the search goes on
    assert s.trial(5).state.name == "FAIL"
    assert s.told == 6  # trials.tsv rewritten after each


def test_a_run_failing_before_any_trial_completed_stops_the_tune_run(tmp_path):
    s = Search(tmp_path)
    stopper = s.rt.StopOnFatal(s.searcher)
    s.start("a")
    s.start("b")
    assert not stopper.stop_all()
    s.end("a", s.rt.FAILED, {"note": "x/train.log: run seed1 failed (exit 1)", "message": "run seed1 failed (exit 1)",
                             "path": "x/train.log"})
    assert stopper.stop_all()
    assert isinstance(s.searcher.fatal, UserError) and s.searcher.fatal.path == "x/train.log"
    assert "run seed1 failed (exit 1)" in str(s.searcher.fatal)


@pytest.mark.parametrize("pruning", [True, False])
def test_the_study_pruner_stops_a_tune_trial_below_the_median(tmp_path, pruning):
    """MedianPruner (2 startup trials): a first run below the median of earlier trials' first runs stops the
    Tune trial there; one above goes on; with --pruning false every trial goes on."""
    s = Search(tmp_path, pruning)
    for trial_id in ("a", "b"):
        s.start(trial_id)
        assert s.run(trial_id, 0.9, 0)[0] == s.scheduler.CONTINUE
        s.end(trial_id, s.rt.RAN, record([0.9, 0.9]))
    s.start("c")
    s.start("d")
    assert s.run("c", 0.1, 0)[0] == (s.scheduler.STOP if pruning else s.scheduler.CONTINUE)
    assert s.run("d", 0.95, 0)[0] == s.scheduler.CONTINUE
