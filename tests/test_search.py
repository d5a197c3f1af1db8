"""search.py end to end: bad input refused before any trial; on the keyword task the search finds a
configuration whose dev mean - std is >= 0.9 and its best_command.txt reproduces it; a killed search resumes;
--ray runs the trials as Ray Tune trials on a 2-node cluster, and resumes after a kill too."""
import json
import os
import shlex
import signal
import subprocess
import sys

import pytest
from helpers import read_json, require_ray

import search
from conftest import FAST, ROOT, killed_at, paused_at, read_tsv
from utils.errors import run_cli
from utils.search.space import Space, parse_param
from utils.search.study import default_storage, open_storage, open_study
from utils.testing.synthetic import PROMPT
from utils.training.multirun import without_flag

BASE = without_flag(without_flag(without_flag(FAST, "--seed"), "--learning_rate"), "--ppt_learning_rate")


def train_flags(model, data_dir, steps=None):
    flags = ["--model_name_or_path", model, "--data_dir", data_dir, "--prompt", PROMPT, "--do_train",
             "--logging_steps", "20", "--save_total_limit", "1", *BASE]
    return flags + (["--max_steps", str(steps), "--eval_steps", str(steps)] if steps else ["--eval_steps", "20"])


def write_space(tmp_path, text, name="space.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def run_search(capsys, *argv):
    code = run_cli(search.main, list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


ENCODERS = "soft_encoder: {choices: [lstm, mlp]}\n"


@pytest.mark.parametrize("case", ["empty space", "mask count", "metric", "storage", "another space", "no cluster"])
def test_bad_input_is_one_error_before_any_trial(case, tmp_path, tiny_model_dir, keyword_data, capsys,
                                                 no_model_loads):
    out = tmp_path / "search"
    space, extra, message = write_space(tmp_path, ENCODERS), [], None
    if case == "empty space":
        space, message = write_space(tmp_path, "# nothing yet\n"), "the search space is empty"
    elif case == "mask count":
        space = write_space(tmp_path, 'prompt: {choices: ["' + PROMPT + '", "{\'text\': \'text_a\'}{\'mask\'}'
                                      '{\'mask\'}"]}\n')
        message = "prompt: candidate \"{'text': 'text_a'}{'mask'}{'mask'}\": "
    elif case == "metric":
        extra, message = ["--metric", "eval_f1"], "--metric: no such dev metric 'eval_f1'"
    elif case == "storage":
        extra, message = ["--storage", "sqlite:////proc/study.db"], "cannot create a file in /proc"
    elif case == "no cluster":  # a port nothing listens on
        require_ray()
        from utils.testing.ray_local import free_ports

        extra, message = ["--ray", f"127.0.0.1:{free_ports(1)[0]}"], "--ray: no Ray cluster answers at "
    else:  # a study made with another space
        other = Space([parse_param("soft_encoder", {"choices": ["lstm"]}, "old.yaml")], "old.yaml")
        open_study(open_storage(default_storage(str(out))), "search", {"space": other.fingerprint()}, 0, True)
        message = "study 'search' in this storage was made with another space"
    flags = train_flags(tiny_model_dir, keyword_data, steps=4)
    if case == "mask count":
        flags = without_flag(flags, "--prompt")  # searched instead
    code, _, err = run_search(capsys, "--output_dir", str(out), "--n_trials", "2", "--space", space, *extra, "--",
                              *flags)
    assert code == 2 and message in err, err
    assert err.startswith("error: ") and "Traceback" not in err
    assert not (out / "trials").exists()
    if case == "no cluster":
        assert not out.exists()  # refused before the study was made


KEYWORD_SPACE = """
learning_rate: {choices: [1.0e-5, 1.0e-3, 3.0e-3]}
ppt_learning_rate: {choices: [1.0e-4, 3.0e-3, 3.0e-2]}
max_steps: {choices: [20, 120]}
"""


@pytest.mark.slow
def test_the_search_finds_a_good_configuration_and_its_command_reproduces_it(tiny_model_dir, keyword_data, tmp_path,
                                                                           capsys):
    """From train.py's defaults for the searched flags (dev accuracy 1/3 on this task), 6 trials of 2 seeds find a
    configuration whose dev accuracy mean - std is >= 0.9; the space holds bad ones too (trials below 0.5)."""
    out = tmp_path / "search"
    code, stdout, err = run_search(capsys, "--output_dir", str(out), "--n_trials", "6", "--seeds", "1", "2",
                                   "--space", write_space(tmp_path, KEYWORD_SPACE), "--",
                                   *train_flags(tiny_model_dir, keyword_data))
    assert code == 0, err
    header, rows = read_tsv(out / "trials.tsv")
    assert len(rows) == 6 and header[:6] == ["trial", "state", "value", "mean", "std", "runs"]
    done = [dict(zip(header, row)) for row in rows if row[1] == "complete"]
    best = max(done, key=lambda row: float(row["value"]))
    assert float(best["value"]) >= 0.9, rows
    assert any(float(row[3]) < 0.5 for row in rows), rows  # a search, not a given: bad configurations exist
    record = read_json(out / "search.json")
    assert record["best_trial"] == int(best["trial"]) and record["value"] == pytest.approx(float(best["value"]))
    assert "best trial" in stdout and record["best_command"] in stdout
    for name in ("optimization_history.png", "param_importances.png"):
        assert (out / name).stat().st_size > 1000

    # search.json beside each chosen run, and its card names the search; no other trial's runs have one
    best_runs = out / "trials" / best["trial"] / "runs"
    for run in ("seed1", "seed2"):
        assert read_json(best_runs / run / "search.json")["best_trial"] == int(best["trial"])
        assert "Chosen by a search" in (best_runs / run / "README.md").read_text(encoding="utf-8")
    others = [row[0] for row in rows if row[0] != best["trial"]]
    assert not any((out / "trials" / n / "runs" / "seed1" / "search.json").exists() for n in others)

    # best_command.txt is train.py's command of the best trial's first run: it gives the same dev metric
    command = shlex.split((out / "best_command.txt").read_text(encoding="utf-8"))
    assert command[:2] == ["python", "train.py"]
    result = subprocess.run([sys.executable, *command[1:]], cwd=ROOT, capture_output=True, text=True,
                            env=dict(os.environ, PTUNING_OFFLINE="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    again = read_json(out / "best" / "eval_results.json")["eval_accuracy"]
    assert again == read_json(best_runs / "seed1" / "eval_results.json")["eval_accuracy"]


@pytest.mark.slow
def test_a_killed_search_resumes_and_retries_the_killed_trial(tiny_model_dir, keyword_data, tmp_path, capsys):
    """kill -9 after trial 0's first run (its second not started): the same command goes on, trial 0 is marked
    failed and its parameters run again as a new trial; the study ends with --n_trials finished trials."""
    out, pause = tmp_path / "search", tmp_path / "paused"
    argv = ["--output_dir", str(out), "--n_trials", "2", "--seeds", "1", "2", "--space",
            write_space(tmp_path, ENCODERS), "--", *train_flags(tiny_model_dir, keyword_data, steps=4)]
    killed_at("search.py", argv, "trial 0 run 1 done", pause)
    assert (out / "trials" / "0" / "runs" / "seed1" / "eval_results.json").is_file()
    assert not (out / "trials" / "0" / "runs" / "seed2").exists()

    code, _, err = run_search(capsys, *argv)
    assert code == 0, err
    assert "1 trial(s) killed mid-run are queued again" in err
    header, rows = read_tsv(out / "trials.tsv")
    states = {row[0]: dict(zip(header, row)) for row in rows}
    assert states["0"]["state"] == "fail" and "killed" in states["0"]["note"]
    assert sorted(row["state"] for n, row in states.items() if n != "0") == ["complete", "complete"]
    retried = [row for n, row in states.items() if n != "0" and row["soft_encoder"] == states["0"]["soft_encoder"]]
    assert retried, rows  # the killed trial's configuration ran again
    assert json.loads((out / "search.json").read_text(encoding="utf-8"))["trials"]["COMPLETE"] == 2


@pytest.fixture(scope="module")
def ray_cluster():
    """A local 2-node Ray cluster (1 CPU each) shared by this file's --ray tests."""
    require_ray()
    from utils.testing.ray_local import LocalRayCluster

    cluster = LocalRayCluster(["node_a", "node_b"], cpus=1, start_timeout=180)
    # not inherited from this process (importing utils.search.ray_tune sets it): search.py must pass it on itself
    cluster.env.pop("RAY_DISABLE_PYARROW_VERSION_CHECK", None)
    with cluster:
        yield cluster
    assert cluster.leftover_pids() == []


def search_on_ray(cluster, argv, **env):
    return subprocess.run([sys.executable, "search.py", "--ray", cluster.address, *argv], cwd=ROOT,
                          env=dict(cluster.env, **env), capture_output=True, text=True, timeout=1200)


def tune_records(out):
    """{Optuna trial number: the last result.json line of each Ray Tune trial that ran it} (Tune's experiment)."""
    experiment = out / "ray_tune" / "search"
    assert list(experiment.glob("experiment_state-*.json")), "no Ray Tune experiment"
    records = {}
    for path in experiment.glob("optuna_trial_*/result.json"):
        lines = path.read_text(encoding="utf-8").strip().splitlines()
        if lines:  # a trial killed before its first report has none
            last = json.loads(lines[-1])
            records.setdefault(last["optuna_trial"], []).append(last)
    return records


@pytest.mark.slow
def test_ray_runs_the_trials_as_tune_trials_into_the_study_and_the_best_command_reproduces(
        tiny_model_dir, keyword_data, tmp_path, ray_cluster):
    out = tmp_path / "search"
    result = search_on_ray(ray_cluster, ["--output_dir", str(out), "--n_trials", "2", "--seeds", "1", "--space",
                                         write_space(tmp_path, ENCODERS), "--",
                                         *train_flags(tiny_model_dir, keyword_data, steps=4)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("best trial"), result.stdout  # Tune's own lines went to stderr
    assert "[ray] 2 trial(s) at once, as Ray Tune trials" in result.stderr
    header, rows = read_tsv(out / "trials.tsv")
    assert [row[1] for row in rows] == ["complete", "complete"]
    # Tune ran them: one Tune trial per Optuna trial, on the cluster's nodes, its last report the record told
    records, nodes = tune_records(out), set(ray_cluster.nodes().values())
    assert sorted(records) == sorted(int(row[0]) for row in rows)
    for row in rows:
        (last,) = records[int(row[0])]
        assert last["last"] and last["outcome"] == "ran" and last["node"] in nodes
        assert json.loads(last["record"])["value"] == pytest.approx(float(row[2]), rel=1e-5)  # trials.tsv: 6 digits

    best = read_json(out / "search.json")["best_trial"]
    command = shlex.split((out / "best_command.txt").read_text(encoding="utf-8"))
    again = subprocess.run([sys.executable, *command[1:]], cwd=ROOT, capture_output=True, text=True,
                           env=dict(os.environ, PTUNING_OFFLINE="1"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert read_json(out / "best" / "eval_results.json")["eval_accuracy"] == \
        read_json(out / "trials" / str(best) / "runs" / "seed1" / "eval_results.json")["eval_accuracy"]


@pytest.mark.slow
def test_a_killed_ray_search_resumes_with_a_new_tuner_on_its_study(tiny_model_dir, keyword_data, tmp_path,
                                                                  ray_cluster):
    """kill -9 of the driver while trial 0's Tune trial holds after its first run (its second not started): the
    same command retries trial 0's values as a new trial and ends with --n_trials finished trials."""
    out, pause = tmp_path / "search", tmp_path / "paused"
    argv = ["--output_dir", str(out), "--n_trials", "1", "--seeds", "1", "2", "--parallel", "1", "--space",
            write_space(tmp_path, ENCODERS), "--", *train_flags(tiny_model_dir, keyword_data, steps=4)]
    env = dict(ray_cluster.env, PTUNING_OFFLINE="1", PTUNING_TEST_PAUSE=f"trial 0 run 1 done={pause}")
    driver = subprocess.Popen([sys.executable, "search.py", "--ray", ray_cluster.address, *argv], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    paused_at(driver, pause)  # the Tune trial, on a node, waits there (PTUNING_* reach the trials)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert (out / "trials" / "0" / "runs" / "seed1" / "eval_results.json").is_file()
    assert not (out / "trials" / "0" / "runs" / "seed2").exists()

    result = search_on_ray(ray_cluster, argv)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "1 trial(s) killed mid-run are queued again" in result.stderr
    header, rows = read_tsv(out / "trials.tsv")
    states = {row[0]: dict(zip(header, row)) for row in rows}
    assert sorted(states) == ["0", "1"] and states["0"]["state"] == "fail" and "killed" in states["0"]["note"]
    assert states["1"]["state"] == "complete" and states["1"]["runs"] == "2"
    assert states["1"]["soft_encoder"] == states["0"]["soft_encoder"]  # the killed trial's values, run again
    # both Tuners' trials in the one experiment folder: the killed one's trial 0, the new one's trial 1
    assert [path.name.split("_")[2] for path in sorted((out / "ray_tune" / "search").glob("optuna_trial_*"))] == \
        ["0", "1"]
    assert sorted(tune_records(out)) == [1]
