"""multirun.py: seeds and splits run train.py in subprocesses; the summary is the runs' own numbers."""
import os

import numpy as np
import pytest
from helpers import logged_losses, read_json

import multirun
from conftest import FAST
from utils.errors import run_cli
from utils.training.multirun import Run, aggregate, markdown_table, train_argv, without_flag
from utils.testing.synthetic import PROMPT, write_keyword_dataset

FAST_NO_SEED = without_flag(FAST, "--seed")  # multirun sets --seed per run


def train_flags(model_dir, data_dir=None, steps=20, predict=True):
    flags = ["--model_name_or_path", model_dir, "--prompt", PROMPT, "--do_train", "--do_eval",
             "--max_steps", str(steps), "--eval_steps", "10", "--logging_steps", "5", "--save_total_limit", "1",
             *FAST_NO_SEED]
    if predict:
        flags.append("--do_predict")
    return flags + (["--data_dir", data_dir] if data_dir else [])


def losses(run_dir):
    return list(logged_losses(run_dir).values())


@pytest.mark.slow
def test_two_seeds(tiny_model_dir, keyword_data, tmp_path, capsys):
    out = tmp_path / "multi"
    argv = ["--output_dir", str(out), "--seeds", "1", "2", "--ensemble", "--",
            *train_flags(tiny_model_dir, keyword_data)]
    assert run_cli(multirun.main, argv) == 0
    stdout = capsys.readouterr().out

    summary = read_json(out / "summary.json")
    assert [r["name"] for r in summary["runs"]] == ["seed1", "seed2"]
    assert [r["seed"] for r in summary["runs"]] == [1, 2]
    for run in summary["runs"]:
        run_dir = out / "runs" / run["name"]
        with open(run_dir / "train.log", encoding="utf-8") as fp:
            assert f"--seed {run['seed']}" in fp.readline()
        own = {**read_json(run_dir / "eval_results.json"), **read_json(run_dir / "test_results.json")}
        assert run["metrics"] == {k: own[k] for k in ("eval_accuracy", "eval_macro_f1", "test_accuracy",
                                                        "test_macro_f1")}
    assert losses(out / "runs" / "seed1") != losses(out / "runs" / "seed2")  # the seed reached train.py

    for key, stats in summary["metrics"].items():
        values = [r["metrics"][key] for r in summary["runs"]]
        assert stats["values"] == values and stats["n"] == 2
        assert stats["mean"] == pytest.approx(np.mean(values))
        assert stats["std"] == pytest.approx(np.std(values, ddof=1))
    acc = summary["metrics"]["eval_accuracy"]
    mean_cell = f"{100 * acc['mean']:.2f} ± {100 * acc['std']:.2f}"
    table = stdout[stdout.index("| run |"):]
    assert mean_cell in table.splitlines()[-2] and table.splitlines()[-2].startswith("| mean ± std |")
    assert len(table.splitlines()) == 2 + 2 + 1 + 1  # header, rule, two runs, mean, ensemble
    assert table in (out / "summary.md").read_text(encoding="utf-8")

    # --ensemble: one export over both runs, its metrics beside theirs (from ensemble.py's own evaluation)
    ensemble = summary["ensemble"]
    ensemble_json = read_json(out / "ensemble" / "ensemble.json")
    assert ensemble_json["members"] == [str(out / "runs" / name) for name in ("seed1", "seed2")]
    assert ensemble["metrics"]["test_accuracy"] == ensemble_json["metrics"]["test"]["ensemble"]["accuracy"]
    assert ensemble["members_mean"]["eval_accuracy"] == pytest.approx(summary["metrics"]["eval_accuracy"]["mean"])
    assert table.splitlines()[-1] == "| ensemble of 2 |  | " + " | ".join(
        f"{100 * ensemble['metrics'][k]:.2f}" for k in summary["metrics"]) + " |"
    assert os.path.isfile(out / "ensemble" / "export" / "model.onnx")
    assert "against the mean of its members" in (out / "summary.md").read_text(encoding="utf-8")

    # the set's model card: the runs' mean as its results, mean ± std beside; each run has its own card
    card = (out / "README.md").read_text(encoding="utf-8")
    assert f"eval_accuracy: {acc['mean']:.4f} ± {acc['std']:.4f} (n=2)" in card
    assert f"value: {round(acc['mean'], 4)}" in card
    for name in ("seed1", "seed2"):
        assert "model-index" in (out / "runs" / name / "README.md").read_text(encoding="utf-8")
    assert os.path.isfile(out / "ensemble" / "export" / "README.md")


@pytest.mark.slow
def test_a_member_killed_after_its_last_checkpoint_resumes_as_the_uninterrupted_member(tiny_model_dir, keyword_data,
                                                                                     tmp_path):
    """multirun's first member killed (-9) after its checkpoint-4 of --max_steps 4 was saved, before its final
    model: its own command (train.log) with --resume_from_checkpoint takes no further step and ends as the
    member of an uninterrupted multirun (a constant learning rate, so an extra step cannot hide)."""
    import shlex
    import signal
    import subprocess
    import sys

    import train
    from conftest import ROOT, assert_same_run, pause_env, paused_at

    flags = ["--model_name_or_path", tiny_model_dir, "--data_dir", keyword_data, "--prompt", PROMPT, "--do_train",
             "--do_eval", "--max_steps", "4", "--eval_steps", "2", "--logging_steps", "3", "--lr_scheduler_type",
             "constant", *FAST_NO_SEED]
    uninterrupted = tmp_path / "uninterrupted"
    assert run_cli(multirun.main, ["--output_dir", str(uninterrupted), "--seeds", "1", "2", "--", *flags]) == 0

    out, pause = tmp_path / "killed", tmp_path / "paused"
    process = subprocess.Popen([sys.executable, os.path.join(ROOT, "multirun.py"), "--output_dir", str(out),
                                "--seeds", "1", "2", "--", *flags], env=pause_env("checkpoint-4 saved", pause),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    os.kill(paused_at(process, pause), signal.SIGKILL)
    _, err = process.communicate()
    assert process.returncode == 2 and "run seed1 failed" in err, err[-2000:]
    member = out / "runs" / "seed1"
    assert (member / "checkpoint-4").is_dir() and not (member / "train_results.json").exists()

    with open(member / "train.log", encoding="utf-8") as fp:
        command = shlex.split(fp.readline()[len("$ "):])
    assert command[1] == os.path.join(ROOT, "train.py")
    assert run_cli(train.main, command[2:] + ["--resume_from_checkpoint", str(member)]) == 0
    assert_same_run(str(uninterrupted / "runs" / "seed1"), str(member))


def make_task_with_splits(root, sizes=((30, 12), (27, 9))):
    """A keyword task folder with splits/train_<i>.txt, dev_<i>.txt of distinct sizes (+ train_few_all.txt)."""
    task = write_keyword_dataset(str(root / "task"))
    with open(os.path.join(task, "train.txt"), encoding="utf-8") as fp:
        train = fp.read().splitlines()
    with open(os.path.join(task, "dev.txt"), encoding="utf-8") as fp:
        dev = fp.read().splitlines()
    splits = os.path.join(task, "splits")
    os.makedirs(splits)
    for i, (n_train, n_dev) in enumerate(sizes):
        for name, lines, n in (("train", train, n_train), ("dev", dev, n_dev)):
            with open(os.path.join(splits, f"{name}_{i}.txt"), "w", encoding="utf-8") as fp:
                fp.write("\n".join(lines[i * 3:i * 3 + n]) + "\n")
    with open(os.path.join(splits, "train_few_all.txt"), "w", encoding="utf-8") as fp:
        fp.write("\n".join(train) + "\n")
    return task, splits


@pytest.mark.slow
def test_splits(tiny_model_dir, tmp_path, capsys):
    task, splits = make_task_with_splits(tmp_path)
    out = tmp_path / "multi"
    argv = ["--output_dir", str(out), "--splits_dir", splits, "--",
            *train_flags(tiny_model_dir, str(tmp_path / "not-used"), steps=10, predict=False)]
    assert run_cli(multirun.main, argv) == 0
    summary = read_json(out / "summary.json")
    assert [(r["name"], r["split"], r["seed"]) for r in summary["runs"]] == [
        ("split0_seed42", 0, 42), ("split1_seed42", 1, 42)]  # ids found in the folder; default seed
    for split, n_train in ((0, 30), (1, 27)):
        data = out / "data" / f"split_{split}"
        for name, source in (("train.txt", f"splits/train_{split}.txt"), ("dev.txt", f"splits/dev_{split}.txt"),
                             ("label.txt", "label.txt"), ("test.txt", "test.txt"), ("data.txt", "data.txt")):
            assert not os.path.islink(data / name)
            assert (data / name).read_bytes() == open(os.path.join(task, source), "rb").read(), name
        log = (out / "runs" / f"split{split}_seed42" / "train.log").read_text(encoding="utf-8")
        assert f"--data_dir {data}" in log.splitlines()[0] and "not-used" not in log.splitlines()[0]
        assert f"Num examples = {n_train}" in log  # the run trained on its split
    assert set(summary["metrics"]) == {"eval_accuracy", "eval_macro_f1"}  # no --do_predict: no test columns
    table = capsys.readouterr().out
    assert "| run | split | seed | dev acc | dev macro-F1 |" in table and "test acc" not in table


@pytest.mark.slow
def test_failing_run_stops_and_names_it(tiny_model_dir, keyword_data, tmp_path, capsys):
    out = tmp_path / "multi"
    stale = out / "runs" / "seed1"
    stale.mkdir(parents=True)
    (stale / "eval_results.json").write_text('{"eval_accuracy": 1.0}', encoding="utf-8")
    (out / "summary.json").write_text("{}", encoding="utf-8")
    argv = ["--output_dir", str(out), "--seeds", "1", "2", "--overwrite_output_dir", "--",
            *train_flags(tiny_model_dir, keyword_data), "--no_such_flag", "1"]
    assert run_cli(multirun.main, argv) == 2
    err = capsys.readouterr().err
    log = stale / "train.log"
    assert "run seed1 failed" in err and str(log) in err and "--no_such_flag" in err
    assert "--overwrite_output_dir" in log.read_text(encoding="utf-8").splitlines()[0]
    assert not (stale / "eval_results.json").exists()  # the stale result was cleared, not summarised
    assert not (out / "summary.json").exists() and not (out / "runs" / "seed2").exists()


@pytest.fixture
def splits_without_dev_1(tmp_path):
    task, splits = make_task_with_splits(tmp_path)
    os.remove(os.path.join(splits, "dev_1.txt"))
    return task, splits


@pytest.mark.parametrize("case, expected", [
    ("no_separator", "after `--`"),
    ("nothing_to_repeat", "--seeds and/or --splits_dir"),
    ("split_ids_without_splits_dir", "--split_ids: needs --splits_dir"),
    ("missing_split_file", "dev_1.txt: split 1 file not found"),
    ("unknown_split_id", "train_7.txt: split 7 file not found"),
    ("missing_label_file", "label.txt: label.txt not found"),
    ("output_dir_forwarded", "--output_dir: multirun.py sets --output_dir"),
    ("seed_forwarded", "--seed: multirun.py sets --seed"),
    ("no_eval_or_predict", "add --do_eval and/or --do_predict"),
    ("ensemble_of_one_run", "--ensemble: needs at least two runs"),
    ("non_empty_output_dir", "is not empty; pass --overwrite_output_dir"),
])
def test_user_errors(case, expected, splits_without_dev_1, tmp_path, capsys):
    task, splits = splits_without_dev_1
    out = str(tmp_path / "multi")
    flags = ["--data_dir", task, "--do_train", "--do_eval"]
    argv = {
        "no_separator": ["--output_dir", out, "--seeds", "1", *flags],
        "nothing_to_repeat": ["--output_dir", out, "--", *flags],
        "split_ids_without_splits_dir": ["--output_dir", out, "--seeds", "1", "--split_ids", "0", "--", *flags],
        "missing_split_file": ["--output_dir", out, "--splits_dir", splits, "--", *flags],
        "unknown_split_id": ["--output_dir", out, "--splits_dir", splits, "--split_ids", "0", "7", "--", *flags],
        "missing_label_file": ["--output_dir", out, "--splits_dir", splits, "--split_ids", "0", "--", *flags],
        "output_dir_forwarded": ["--output_dir", out, "--seeds", "1", "--", *flags, "--output_dir=x"],
        "seed_forwarded": ["--output_dir", out, "--seeds", "1", "--", *flags, "--seed", "3"],
        "no_eval_or_predict": ["--output_dir", out, "--seeds", "1", "--", "--data_dir", task, "--do_train"],
        "ensemble_of_one_run": ["--output_dir", out, "--seeds", "1", "--ensemble", "--", *flags],
        "non_empty_output_dir": ["--output_dir", task, "--seeds", "1", "--", *flags],
    }[case]
    if case == "missing_label_file":
        os.remove(os.path.join(task, "label.txt"))
    assert run_cli(multirun.main, argv) == 2
    assert expected in capsys.readouterr().err
    assert not os.path.exists(out)  # nothing ran, nothing was written


def test_train_argv_overrides_data_dir_and_sets_run_flags(tmp_path):
    run = Run("split3_seed7", 7, 3, str(tmp_path / "runs" / "split3_seed7"), str(tmp_path / "data" / "split_3"))
    command = train_argv(run, ["--data_dir", "a", "--do_train", "--data_dir=b", "--prompt", "x"], overwrite=True)
    assert command[2:] == ["--do_train", "--prompt", "x", "--data_dir", run.data_dir, "--output_dir",
                           run.output_dir, "--seed", "7", "--overwrite_output_dir"]
    plain = train_argv(Run("seed1", 1, None, "o"), ["--data_dir", "a"], overwrite=False)
    assert plain[2:] == ["--data_dir", "a", "--output_dir", "o", "--seed", "1"]


def test_markdown_table_and_single_run_std():
    values = [0.5, 0.75, 0.8125]
    summary = {"runs": [{"name": f"seed{i}", "seed": i, "split": None,
                         "metrics": {"eval_accuracy": v, **({"test_accuracy": 0.375} if i == 1 else {})}}
                        for i, v in enumerate(values)],
               "metrics": {"eval_accuracy": aggregate(values), "test_accuracy": aggregate([0.375])}}
    assert summary["metrics"]["test_accuracy"]["std"] is None  # one value: no sample std
    lines = markdown_table(summary).splitlines()
    assert lines[0] == "| run | seed | dev acc | test acc |"
    assert lines[2] == "| seed0 | 0 | 50.00 | – |"
    assert lines[3] == "| seed1 | 1 | 75.00 | 37.50 |"
    assert lines[4] == "| seed2 | 2 | 81.25 | – |"
    std = np.std(values, ddof=1)
    assert lines[-1] == f"| mean ± std |  | {100 * np.mean(values):.2f} ± {100 * std:.2f} | 37.50 ± – |"
    assert f"{100 * std:.2f}" == "16.54"


def test_multi_label_runs_add_micro_f1_columns():
    from utils.training.multirun import Run, markdown_table, summarize

    runs = [Run("seed1", 1, None, "o/runs/seed1"), Run("seed2", 2, None, "o/runs/seed2")]
    results = [{"eval_accuracy": 0.5, "eval_micro_f1": 0.8, "eval_macro_f1": 0.7},
               {"eval_accuracy": 0.7, "eval_micro_f1": 0.9, "eval_macro_f1": 0.6}]
    summary = summarize(runs, results, [1.0, 1.0], ["--task_type", "multi-label"])
    assert summary["metrics"]["eval_micro_f1"]["mean"] == pytest.approx(0.85)
    assert summary["metrics"]["eval_micro_f1"]["std"] == pytest.approx(np.std([0.8, 0.9], ddof=1))
    table = markdown_table(summary)
    assert table.splitlines()[0] == "| run | seed | dev acc | dev micro-F1 | dev macro-F1 |"
    assert table.splitlines()[-1].startswith("| mean ± std |  | 60.00 ± 14.14 | 85.00 ± 7.07 | 65.00 ± 7.07 |")
