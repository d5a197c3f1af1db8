"""utils/rundir/record.py: run.json tells the whole history of a model's weights."""
import json
import os
import shlex

from utils.files import sha256_file
from utils.rundir.record import command_line, read_run_record, run_history, write_run_record


def test_the_command_line_is_a_shell_line_that_gives_back_the_arguments():
    argv = ["--prompt", "这条新闻讲的是 '什么'", "--data_dir", "my data"]
    assert shlex.split(command_line("train.py", argv)) == ["python", "train.py", *argv]


def test_a_run_from_a_checkpoint_carries_that_runs_commands_before_its_own(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoint-4").mkdir(parents=True)
    (tmp_path / "train.txt").write_text("a\tx\n", encoding="utf-8")
    write_run_record(str(run), ["--do_train"], {"train": str(tmp_path / "train.txt"), "test": str(tmp_path / "no")})
    first = read_run_record(str(run / "checkpoint-4"))  # a checkpoint finds its run's record
    assert [c["argv"] for c in first["commands"]] == [["--do_train"]]
    assert first["commands"][0]["data"] == {"train": {"path": str(tmp_path / "train.txt"), "bytes": 4,
                                                      "sha256": sha256_file(str(tmp_path / "train.txt"))}}
    history = run_history(str(run / "checkpoint-4"))
    (tmp_path / "eval").mkdir()
    write_run_record(str(tmp_path / "eval"), ["--do_eval"], {}, history)
    assert [c["argv"] for c in read_run_record(str(tmp_path / "eval"))["commands"]] == [["--do_train"], ["--do_eval"]]


def test_a_model_without_a_record_is_said_to_have_none_and_a_damaged_record_reads_as_none(tmp_path):
    assert run_history(None) == []
    [entry] = run_history(str(tmp_path))
    assert entry["command"] is None and "no readable run.json" in entry["note"]
    (tmp_path / "run.json").write_text("{trunc", encoding="utf-8")
    assert read_run_record(str(tmp_path)) is None
    (tmp_path / "run.json").write_text(json.dumps({"commands": "no list"}), encoding="utf-8")
    assert read_run_record(str(tmp_path)) is None
    assert os.listdir(tmp_path) == ["run.json"]


def test_a_failed_run_that_wrote_nothing_else_takes_its_record_away(tmp_path):
    from utils.rundir.record import discard_lone_record

    write_run_record(str(tmp_path), ["--do_train"], {})
    (tmp_path / ".ptuning.lock").write_text("", encoding="utf-8")
    discard_lone_record(str(tmp_path))
    assert os.listdir(tmp_path) == [".ptuning.lock"]
    write_run_record(str(tmp_path), ["--do_train"], {})
    (tmp_path / "checkpoint-2").mkdir()
    discard_lone_record(str(tmp_path))  # a checkpoint is worth its record
    assert sorted(os.listdir(tmp_path)) == [".ptuning.lock", "checkpoint-2", "run.json"]
