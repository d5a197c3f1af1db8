"""One run per output directory: reruns, resumes and concurrent runs never mix two runs."""
import json
import os
import shutil
import subprocess
import sys

import pytest

import train
from conftest import FAST, ROOT
from utils.errors import UserError, run_cli
from utils.rundir.plan import owned_outputs
from utils.testing.synthetic import PROMPT


def train_argv(model, data, out, *extra):
    return ["--model_name_or_path", model, "--data_dir", data, "--output_dir", str(out), "--prompt", PROMPT, *FAST,
            *extra]


def run(capsys, argv):
    code = run_cli(train.main, argv)
    return code, capsys.readouterr().err


def read(path):
    with open(path, encoding="utf-8") as fp:
        return json.load(fp)


def steps(out):
    return sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))


@pytest.fixture
def finished_run(trained, tmp_path):
    """A copy of a complete run (train, eval, predict, export) to rerun into."""
    data_dir, out = trained
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    return data_dir, copy


def test_overwrite_leaves_nothing_of_the_previous_run(finished_run, tiny_model_dir, capsys):
    data_dir, out = finished_run
    (out / "my_notes.txt").write_text("the user's own file", encoding="utf-8")
    (out / "my-model").mkdir()
    code, err = run(capsys, train_argv(tiny_model_dir, data_dir, out, "--do_train", "--max_steps", "3",
                                       "--save_steps", "3", "--overwrite_output_dir"))
    assert code == 0, err
    left = set(owned_outputs(str(out)))
    for old in ("eval_results.json", "test_results.json", "test_predictions.tsv", "data_predictions.tsv", "export",
                "eval_report.json", "test_confusion_matrix.png"):
        assert old not in left, old
    assert steps(out) == [3]
    assert set(read(out / "all_results.json")) == set(read(out / "train_results.json"))
    assert read(out / "trainer_state.json")["global_step"] == 3
    assert (out / "my_notes.txt").read_text(encoding="utf-8") == "the user's own file" and (out / "my-model").is_dir()


def test_resume_from_the_output_dir_means_its_latest_checkpoint(tiny_model_dir, keyword_data, tmp_path, capsys):
    out = tmp_path / "run"
    base = train_argv(tiny_model_dir, keyword_data, out, "--do_train", "--save_steps", "2", "--logging_steps", "1",
                      "--save_total_limit", "5")
    assert run(capsys, base + ["--max_steps", "4"])[0] == 0
    code, err = run(capsys, base + ["--max_steps", "6", "--resume_from_checkpoint", str(out)])
    assert code == 0, err
    history = read(out / "trainer_state.json")["log_history"]
    assert [h["step"] for h in history if "loss" in h] == [1, 2, 3, 4, 5, 6]  # continued from step 4
    assert steps(out) == [2, 4, 6]


def test_resume_in_place_refuses_newer_checkpoints_unless_overwriting(tiny_model_dir, keyword_data, tmp_path, capsys):
    out = tmp_path / "run"
    base = train_argv(tiny_model_dir, keyword_data, out, "--do_train", "--save_steps", "2", "--max_steps", "6",
                      "--save_total_limit", "5")
    assert run(capsys, base)[0] == 0
    code, err = run(capsys, base + ["--resume_from_checkpoint", str(out / "checkpoint-2")])
    assert code == 2 and "checkpoint-4" in err and "--overwrite_output_dir" in err
    code, err = run(capsys, base + ["--resume_from_checkpoint", str(out / "checkpoint-2"), "--overwrite_output_dir",
                                    "--max_steps", "4"])
    assert code == 0, err
    assert steps(out) == [2, 4] and read(out / "trainer_state.json")["global_step"] == 4


def test_copied_run_resumes_from_its_own_checkpoints(tiny_model_dir, keyword_data, tmp_path, capsys):
    original = tmp_path / "original"
    base = ["--do_train", "--do_eval", "--eval_steps", "4", "--save_total_limit", "2", "--logging_steps", "1"]
    assert run(capsys, train_argv(tiny_model_dir, keyword_data, original, *base, "--max_steps", "8"))[0] == 0
    best = read(original / "checkpoint-8" / "trainer_state.json")["best_model_checkpoint"]
    assert best.startswith(str(original))
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    shutil.rmtree(original)  # the copy must not need (or read) the original
    code, err = run(capsys, train_argv(tiny_model_dir, keyword_data, copy, *base, "--max_steps", "12",
                                       "--resume_from_checkpoint", str(copy / "checkpoint-8")))
    assert code == 0, err
    state = read(copy / "trainer_state.json")
    assert state["best_model_checkpoint"].startswith(str(copy)), state["best_model_checkpoint"]
    assert not original.exists()


def test_a_second_run_into_a_busy_directory_is_refused(tiny_model_dir, keyword_data, tmp_path, capsys):
    """The directory's lock held here, as a running train.py holds it: a second train.py process into it is
    refused, one paragraph naming the holder, and writes nothing; once the lock is released it runs."""
    from utils.rundir.plan import DirLock

    out = tmp_path / "run"
    lock = DirLock(str(out)).acquire()  # the first run, in the middle of its training
    try:
        second = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"),
                                 *train_argv(tiny_model_dir, keyword_data, out, "--do_train", "--max_steps", "2",
                                             "--overwrite_output_dir")],
                                env=dict(os.environ, PTUNING_OFFLINE="1"), capture_output=True, text=True)
        assert second.returncode == 2 and f"is in use by train.py (pid {os.getpid()})" in second.stderr, \
            second.stderr[-2000:]
        assert "Traceback" not in second.stderr and os.listdir(out) == [".ptuning.lock"]
        code, err = run(capsys, train_argv(tiny_model_dir, keyword_data, out, "--do_train", "--max_steps", "2"))
        assert code == 2 and "is in use by train.py" in err  # in this process too
    finally:
        lock.release()
    code, err = run(capsys, train_argv(tiny_model_dir, keyword_data, out, "--do_train", "--max_steps", "2"))
    assert code == 0, err
    assert read(out / "trainer_state.json")["global_step"] == 2


def test_predicting_without_a_trained_model_is_refused(keyword_data, tmp_path, capsys):
    code, err = run(capsys, ["--do_predict", "--data_dir", keyword_data, "--output_dir", str(tmp_path / "p")])
    assert code == 2 and "needs a trained model" in err and "--resume_from_checkpoint" in err
    assert not (tmp_path / "p").exists()


def test_a_checkpoint_of_a_finished_run_is_evaluated_into_another_directory(finished_run, capsys):
    data_dir, out = finished_run
    checkpoint = sorted(out.glob("checkpoint-*"))[0]
    code, err = run(capsys, ["--do_eval", "--data_dir", data_dir, "--output_dir", str(out),
                             "--resume_from_checkpoint", str(checkpoint), "--overwrite_output_dir"])
    assert code == 2 and "another --output_dir" in err


def test_evaluating_a_run_into_its_own_directory_replaces_only_that_kind(finished_run, capsys):
    data_dir, out = finished_run
    test_before = (out / "test_results.json").read_bytes()
    code, err = run(capsys, ["--do_eval", "--data_dir", data_dir, "--output_dir", str(out),
                             "--resume_from_checkpoint", str(out), "--overwrite_output_dir"])
    assert code == 0, err
    assert (out / "test_results.json").read_bytes() == test_before and (out / "export").is_dir()
    assert set(read(out / "all_results.json")) >= set(read(out / "eval_results.json")) | set(
        read(out / "test_results.json"))


@pytest.mark.parametrize("case", ["file", "pretrained model dir"])
def test_output_dir_that_is_not_ours_is_refused(case, tiny_model_dir, keyword_data, tmp_path, capsys):
    if case == "file":
        out = tmp_path / "a-file"
        out.write_text("x", encoding="utf-8")
    else:
        out = tmp_path / "model"
        shutil.copytree(tiny_model_dir, out)
    before = sorted(os.listdir(out)) if out.is_dir() else out.read_text(encoding="utf-8")
    code, err = run(capsys, train_argv(tiny_model_dir if case == "file" else str(out), keyword_data, out,
                                       "--do_train", "--max_steps", "1", "--overwrite_output_dir"))
    assert code == 2 and "Traceback" not in err
    assert (sorted(p for p in os.listdir(out) if p != ".ptuning.lock") if out.is_dir()
            else out.read_text(encoding="utf-8")) == before


def test_leftovers_of_killed_runs_are_removed_at_the_next_start(finished_run, tiny_model_dir, capsys):
    data_dir, out = finished_run
    last = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[-1]
    for junk in (".saving/checkpoint-999", ".deleting-checkpoint-3-4242", "export.tmp-4242", ".saving-model"):
        (out / junk).mkdir(parents=True)
        (out / junk / "model_state.pdparams").write_bytes(b"half")
    code, err = run(capsys, train_argv(tiny_model_dir, data_dir, out, "--do_train", "--resume_from_checkpoint",
                                       str(last), "--max_steps", str(int(last.name.split("-")[1]) + 2)))
    assert code == 0, err
    assert not [p for p in os.listdir(out) if p.startswith((".saving", ".deleting-", "export.tmp-"))]


def test_a_record_alone_is_no_earlier_run_so_a_retry_after_a_failure_is_not_refused(tmp_path):
    """run.json is written when a run starts; a run that failed or was killed before writing anything
    else leaves nothing to protect."""
    from utils.rundir.plan import plan_output_dir

    (tmp_path / "run.json").write_text("{}", encoding="utf-8")
    assert plan_output_dir(str(tmp_path), True, [], False, None).remove == []
    (tmp_path / "all_results.json").write_text("{}", encoding="utf-8")
    with pytest.raises(UserError, match="already holds results of an earlier run"):
        plan_output_dir(str(tmp_path), True, [], False, None)


def test_the_tools_card_is_an_output_and_the_users_readme_is_not(tmp_path):
    from utils.rundir.names import CARD_MARKER
    from utils.rundir.plan import owned_outputs

    (tmp_path / "README.md").write_text("# my project\n", encoding="utf-8")
    assert owned_outputs(str(tmp_path)) == []
    (tmp_path / "README.md").write_text(f"---\n---\n{CARD_MARKER} -->\n", encoding="utf-8")
    assert owned_outputs(str(tmp_path)) == ["README.md"]
