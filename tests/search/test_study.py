"""The study: storage checked before any trial, one space per study, killed trials retried, the ask/tell loop."""
import os
import subprocess
import sys

import pytest

from utils.errors import UserError
from utils.search.objective import InvalidConfiguration
from utils.search.space import Space, parse_param
from utils.search.study import (TrialLoop, WORKER_ATTR, default_storage, finished_count, open_storage, open_study,
                                retry_killed_trials)

SPACE = Space([parse_param("learning_rate", {"low": 1e-5, "high": 1e-2, "log": True}, "s.yaml"),
               parse_param("soft_encoder", {"choices": ["lstm", "mlp"]}, "s.yaml")], "s.yaml")
IDENTITY = {"space": SPACE.fingerprint(), "metric": "eval_accuracy"}


def study_in(tmp_path, identity=IDENTITY, name="search"):
    return open_study(open_storage(default_storage(str(tmp_path))), name, identity, 0, True)


def fake_run(values):
    """A trial whose runs score `values[i]` for run i, reporting each as the objective does."""

    def run(number, params, report):
        done = []
        for step, value in enumerate(values(params)):
            done.append(value)
            if step + 1 < 2 and report(value, step):
                return {"pruned": True, "value": None, "mean": value, "std": None, "n": 1}
        return {"pruned": False, "value": min(done), "mean": sum(done) / len(done), "std": 0.0, "n": len(done)}

    return run


def test_the_loop_runs_until_the_study_has_n_finished_trials(tmp_path):
    study = study_in(tmp_path)
    loop = TrialLoop(study, SPACE, 6, fake_run(lambda p: [p["learning_rate"] * 100, p["learning_rate"] * 100]))
    loop.work()
    assert finished_count(study) == 6
    assert {t.state.name for t in study.trials} <= {"COMPLETE", "PRUNED"}
    assert any(t.state.name == "PRUNED" for t in study.trials)  # the median pruner stopped a worse one
    # a second start with the same budget runs nothing; a larger one only the rest
    TrialLoop(study_in(tmp_path), SPACE, 6, fake_run(lambda p: pytest.fail("ran again"))).work()
    TrialLoop(study_in(tmp_path), SPACE, 8, fake_run(lambda p: [0.5, 0.5])).work()
    assert finished_count(study_in(tmp_path)) == 8


def test_a_configuration_train_py_refuses_is_pruned_with_the_reason(tmp_path):
    def refuse(number, params, report):
        raise InvalidConfiguration("--freeze_plm with --method finetune")

    study = study_in(tmp_path)
    TrialLoop(study, SPACE, 2, refuse).work()
    assert [t.state.name for t in study.trials] == ["PRUNED", "PRUNED"]
    assert "not run: --freeze_plm" in study.trials[0].user_attrs["note"]


def test_a_failing_trial_before_any_completed_stops_the_search(tmp_path):
    def fail(number, params, report):
        raise UserError("run seed1 failed (train.py exit code 1)", "train.log")

    study = study_in(tmp_path)
    with pytest.raises(UserError, match="run seed1 failed"):
        TrialLoop(study, SPACE, 3, fail).work()
    assert [t.state.name for t in study.trials] == ["FAIL"]


def test_another_space_metric_or_flags_in_one_study_is_refused(tmp_path):
    study_in(tmp_path)
    other = Space(SPACE.params[:1], "s.yaml")
    with pytest.raises(UserError, match="made with another space") as caught:
        study_in(tmp_path, {**IDENTITY, "space": other.fingerprint()})
    assert caught.value.path == "--study_name"
    with pytest.raises(UserError, match="another metric"):
        study_in(tmp_path, {**IDENTITY, "metric": "eval_macro_f1"})
    study_in(tmp_path, {**IDENTITY, "space": other.fingerprint()}, name="other")  # another study: fine


def test_a_trial_left_running_by_a_dead_process_is_failed_and_queued_again(tmp_path):
    study = study_in(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    killed = study.ask()
    killed.suggest_float("learning_rate", 1e-5, 1e-2, log=True)
    killed.suggest_categorical("soft_encoder", ["lstm", "mlp"])
    killed.set_user_attr(WORKER_ATTR, f"{os.uname().nodename}:{dead.stdout.strip()}")
    alive = study.ask()
    alive.set_user_attr(WORKER_ATTR, f"{os.uname().nodename}:{os.getpid()}")  # a live worker's: left alone
    assert retry_killed_trials(study) == 1
    states = {t.number: t.state.name for t in study.trials}
    assert states[killed.number] == "FAIL" and states[alive.number] == "RUNNING"
    TrialLoop(study, SPACE, 1, fake_run(lambda p: [0.9, 0.9])).work()
    retried = [t for t in study.trials if t.user_attrs.get("retry_of") == killed.number]
    assert len(retried) == 1 and retried[0].params == killed.params and retried[0].state.name == "COMPLETE"


@pytest.mark.parametrize("storage, message", [
    ("not-a-url", "neither an SQLAlchemy URL"),
    ("sqlite:////proc/study.db", "cannot create a file in /proc"),
    ("postgresql://nobody@127.0.0.1:1/none", "cannot open the study's storage"),
])
def test_a_storage_that_cannot_be_written_is_refused(storage, message):
    with pytest.raises(UserError, match=message):
        open_storage(storage)


def test_a_read_only_study_file_is_refused(tmp_path):
    path = tmp_path / "study.db"
    path.write_bytes(b"")
    path.chmod(0o444)
    if os.access(path, os.W_OK):
        pytest.skip("root writes read-only files")
    with pytest.raises(UserError, match="read-only"):
        open_storage(f"sqlite:///{path}")


def test_a_journal_file_is_a_storage(tmp_path):
    storage = open_storage(str(tmp_path / "study.journal"))
    study = open_study(storage, "search", IDENTITY, 0, True)
    TrialLoop(study, SPACE, 2, fake_run(lambda p: [0.5, 0.6])).work()
    assert finished_count(open_study(open_storage(str(tmp_path / "study.journal")), "search", IDENTITY, 0, True)) == 2


def test_a_configuration_already_run_is_not_run_again(tmp_path):
    """Two configurations, four trials: the sampler draws repeats; each configuration trains once and a repeat
    is told its first trial's outcome, its note naming that trial."""
    choices = Space([parse_param("soft_encoder", {"choices": ["lstm", "mlp"]}, "s.yaml")], "s.yaml")
    ran = []

    def run(number, params, report):
        ran.append(params["soft_encoder"])
        return {"pruned": False, "value": 0.5 if params["soft_encoder"] == "lstm" else 0.7, "mean": 0.6, "std": 0.1,
                "n": 2}

    study = open_study(open_storage(default_storage(str(tmp_path))), "search",
                       {"space": choices.fingerprint()}, 0, True)
    TrialLoop(study, choices, 4, run).work()
    assert sorted(ran) == sorted(set(ran)) and finished_count(study) == 4
    repeats = [t for t in study.trials if "not run again" in t.user_attrs.get("note", "")]
    assert len(repeats) == 4 - len(ran)
    for t in repeats:
        first = next(o for o in study.trials if o.params == t.params and o.number < t.number)
        assert t.value == first.value and f"trial {first.number}" in t.user_attrs["note"]


def test_workers_sharing_a_study_with_one_seed_draw_different_configurations(tmp_path):
    """Two search processes on one study, both with --sampler_seed 0 (a resumed search's processes too):
    each trial's draws are seeded with its own number, so the second worker does not draw (and train)
    the first one's configuration again; a fresh study with that seed draws the same sequence again."""
    first, second = study_in(tmp_path), study_in(tmp_path)  # two workers' handles on one storage
    drawn = []
    for study in (first, second, first, second):
        trial = study.ask()
        drawn.append(tuple(sorted(suggest_all(trial).items())))
    assert len(set(drawn)) == 4
    again = study_in(tmp_path / "again")
    assert [tuple(sorted(suggest_all(again.ask()).items())) for _ in range(4)] == drawn


def suggest_all(trial):
    from utils.search.study import suggest

    return suggest(trial, SPACE)


def test_two_killed_trials_with_one_configuration_are_queued_once(tmp_path):
    """Two workers killed while both ran one configuration (as an older search could draw): it is
    queued again once, not twice."""
    study = study_in(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    same = {"learning_rate": 1e-3, "soft_encoder": "lstm"}
    for _ in range(2):
        study.enqueue_trial(same)
        killed = study.ask()
        suggest_all(killed)
        killed.set_user_attr(WORKER_ATTR, f"{os.uname().nodename}:{dead.stdout.strip()}")
    assert retry_killed_trials(study) == 2
    waiting = [t for t in study.trials if t.state.name == "WAITING"]
    assert len(waiting) == 1 and waiting[0].system_attrs["fixed_params"] == same


def test_the_sampler_survives_pickling_as_ray_tunes_checkpoints_do(tmp_path):
    """Tune pickles its searcher (the study's sampler with it) into the experiment checkpoint: the
    per-trial-seeded sampler comes back as one that draws what the original draws."""
    import pickle

    study = study_in(tmp_path)
    copy = pickle.loads(pickle.dumps(study.sampler))
    assert type(copy).__name__ == type(study.sampler).__name__
    twin = study_in(tmp_path / "twin")
    twin.sampler = copy
    assert suggest_all(twin.ask()) == suggest_all(study_in(tmp_path / "third").ask())
