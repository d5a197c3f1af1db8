"""Checkpoints are whole or invisible, verified before use, and rotated without ever being half-deleted."""
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

import export as export_cli
import train
from conftest import FAST, ROOT, assert_same_run, interrupted_at
from helpers import flip_byte
from utils.rundir import checkpoints
from utils.errors import UserError, run_cli
from utils.testing.synthetic import PROMPT

CHECKPOINT_FILES = ["model_state.pdparams", "optimizer.pdopt", "scheduler.pdparams", "rng_state.pth",
                    "trainer_state.json", "vocab.txt", "ptuning_config.json", "tokenizer_config.json",
                    "special_tokens_map.json", "training_args.bin", "template_config.json", "loss_state.json"]


@pytest.fixture(scope="module")
def checkpoint_run(tiny_model_dir, tmp_path_factory):
    """A short run with one checkpoint (step 4) to damage in copies."""
    from utils.testing.synthetic import write_keyword_dataset

    base = tmp_path_factory.mktemp("ckpt")
    data = write_keyword_dataset(str(base / "data"))
    out = base / "run"
    argv = ["--model_name_or_path", tiny_model_dir, "--data_dir", data, "--output_dir", str(out), "--prompt", PROMPT,
            "--do_train", "--max_steps", "4", "--save_steps", "4", "--logging_steps", "1",
            "--lr_scheduler_type", "constant", *FAST]
    assert run_cli(train.main, argv) == 0
    return data, out, argv


def damage(path, how):
    if how == "missing":
        os.remove(path)
    elif how == "truncated":
        with open(path, "r+b") as fp:
            fp.truncate(max(0, os.path.getsize(path) // 2))
    else:  # same size, one byte changed
        flip_byte(path)


@pytest.mark.parametrize("how", ["missing", "truncated", "one byte changed"])
@pytest.mark.parametrize("name", CHECKPOINT_FILES)
def test_a_damaged_checkpoint_file_is_named_before_resuming(name, how, checkpoint_run, tmp_path, capsys):
    data, out, argv = checkpoint_run
    run_dir = tmp_path / "run"
    shutil.copytree(out / "checkpoint-4", run_dir / "checkpoint-4")
    damage(run_dir / "checkpoint-4" / name, how)
    code = run_cli(train.main, [a if a != str(out) else str(run_dir) for a in argv] +
                   ["--max_steps", "6", "--resume_from_checkpoint", str(run_dir / "checkpoint-4")])
    err = capsys.readouterr().err
    assert code == 2 and name in err and "Traceback" not in err, err
    assert not (run_dir / "checkpoint-6").exists() and not (run_dir / "train_results.json").exists()


def test_a_checkpoint_without_its_marker_is_never_resumed(checkpoint_run, tmp_path, capsys):
    data, out, argv = checkpoint_run
    copy = tmp_path / "checkpoint-4"
    shutil.copytree(out / "checkpoint-4", copy)
    os.remove(copy / checkpoints.COMPLETE_MARKER)
    code = run_cli(train.main, argv[:argv.index("--output_dir")] + ["--output_dir", str(tmp_path / "o")] +
                   argv[argv.index("--output_dir") + 2:] + ["--resume_from_checkpoint", str(copy)])
    assert code == 2 and "never completed" in capsys.readouterr().err


def test_a_damaged_marker_is_an_error(checkpoint_run, tmp_path):
    _, out, _ = checkpoint_run
    copy = tmp_path / "c"
    shutil.copytree(out / "checkpoint-4", copy)
    (copy / checkpoints.COMPLETE_MARKER).write_text('{"files": [1, 2', encoding="utf-8")
    with pytest.raises(UserError, match="checkpoint_complete.json:1"):
        checkpoints.verify(str(copy), "resume")
    (copy / checkpoints.COMPLETE_MARKER).write_text('{"files": "all of them"}', encoding="utf-8")
    with pytest.raises(UserError, match="is damaged"):
        checkpoints.verify(str(copy), "model")


def test_resuming_an_intact_checkpoint_is_exact(checkpoint_run, tmp_path):
    """What the damaged copies above are refused for, the intact copy does: checkpoint-4 (the run's
    last) resumed in a directory of its own ends exactly as the run it came from."""
    _, out, argv = checkpoint_run
    marker = checkpoints.verify(str(out / "checkpoint-4"), "resume")
    assert marker["global_step"] == 4 and set(CHECKPOINT_FILES) <= set(marker["files"])
    assert all(len(entry["sha256"]) == 64 for entry in marker["files"].values())
    run_dir = tmp_path / "run"
    shutil.copytree(out / "checkpoint-4", run_dir / "checkpoint-4")
    assert run_cli(train.main, [a if a != str(out) else str(run_dir) for a in argv] +
                   ["--resume_from_checkpoint", str(run_dir / "checkpoint-4")]) == 0
    assert_same_run(str(out), str(run_dir))


# -- resuming at a boundary: the last checkpoint, an epoch's end, an accumulation group cut by an epoch --
# A constant learning rate, so that one optimizer step too many cannot hide behind a zero rate.

def boundary_argv(model, data, out, *flags):
    return ["--model_name_or_path", model, "--data_dir", data, "--output_dir", str(out), "--prompt", PROMPT,
            "--do_train", "--lr_scheduler_type", "constant", "--save_total_limit", "3", *FAST, *flags]


def interrupt_and_resume(argv_for, tmp_path, point, resume="in place"):
    """Run `argv_for(dir)` until it reaches `point` (stopped there, before the final model), then resume it:
    in place from its directory, or into another one from the checkpoint named. Returns the resumed run's
    directory and what it printed."""
    import io
    from contextlib import redirect_stderr

    interrupted = tmp_path / "interrupted"
    with interrupted_at(point):
        assert run_cli(train.main, argv_for(interrupted)) == 130
    assert not (interrupted / checkpoints.COMPLETE_MARKER).exists()  # no final model
    target = interrupted if resume == "in place" else tmp_path / "resumed"
    source = interrupted if resume == "in place" else interrupted / resume
    err = io.StringIO()
    with redirect_stderr(err):
        code = run_cli(train.main, argv_for(target) + ["--resume_from_checkpoint", str(source)])
    assert code == 0, err.getvalue()[-3000:]
    return target, err.getvalue()


@pytest.fixture(scope="module")
def four_steps(tiny_model_dir, tmp_path_factory):
    """4 steps of a 12-batch epoch, a checkpoint every 2, the loss logged every 3 (so a checkpoint holds a
    loss not logged yet); the uninterrupted run."""
    from utils.testing.synthetic import write_keyword_dataset

    base = tmp_path_factory.mktemp("four")
    data = write_keyword_dataset(str(base / "data"))

    def argv(out):
        return boundary_argv(tiny_model_dir, data, out, "--max_steps", "4", "--save_steps", "2",
                             "--logging_steps", "3")

    reference = base / "uninterrupted"
    assert run_cli(train.main, argv(reference)) == 0
    return argv, str(reference)


@pytest.mark.parametrize("point, resume", [("checkpoint-4 saved", "in place"), ("checkpoint-4 saved", "checkpoint-4"),
                                           ("checkpoint-2 saved", "in place")],
                         ids=["last checkpoint, in place", "last checkpoint, elsewhere", "mid-way"])
def test_resuming_at_max_steps_takes_no_step_and_ends_as_the_uninterrupted_run(point, resume, four_steps, tmp_path):
    """Stopped after checkpoint-4 of --max_steps 4 was saved (before the final model): resumed, the run
    takes no further optimizer step (paddlenlp took a fifth: `train: 5/4 steps`, other weights, another
    train_loss); resumed mid-way it continues exactly."""
    argv, reference = four_steps
    resumed, err = interrupt_and_resume(argv, tmp_path, point, resume)
    assert "train: 5/4" not in err and "train: 4/4 steps (100%)" in err
    assert_same_run(reference, str(resumed))


def test_resuming_at_an_epoch_end_is_exact(tiny_model_dir, tmp_path):
    """--num_train_epochs 2 of 3 steps each, evaluated and saved every epoch's end: resumed from the first
    epoch's end (paddlenlp restored the random state only after skipping batches, so never here: other
    dropout) and from the last (no step is taken), the run ends as the uninterrupted one, the best
    checkpoint reloaded at the end included."""
    from utils.testing.synthetic import write_keyword_dataset

    data = write_keyword_dataset(str(tmp_path / "data"), train_per_class=8)  # 24 texts: 3 batches of 8

    def argv(out):
        return boundary_argv(tiny_model_dir, data, out, "--num_train_epochs", "2", "--do_eval", "--eval_steps", "3",
                             "--logging_steps", "2")

    reference = tmp_path / "uninterrupted"
    assert run_cli(train.main, argv(reference)) == 0
    for step in (3, 6):
        resumed, _ = interrupt_and_resume(argv, tmp_path / f"at{step}", f"checkpoint-{step} saved")
        assert_same_run(str(reference), str(resumed))


def test_resuming_after_an_epoch_with_batches_left_over_from_accumulation_is_exact(dropout_free_model, tmp_path):
    """6 batches an epoch, accumulated 4 at a time: one optimizer step an epoch. paddlenlp added the 2 batches
    left over to the next epoch's first step, which no checkpoint holds: resumed at an epoch's end (a
    model without dropout, so only that can differ) the run lost them. Now an epoch ends with its last
    full group, and resuming there is exact."""
    from utils.testing.synthetic import write_keyword_dataset

    data = write_keyword_dataset(str(tmp_path / "data"), train_per_class=8)

    def argv(out):
        return boundary_argv(dropout_free_model, data, out, "--per_device_train_batch_size", "4",
                             "--gradient_accumulation_steps", "4", "--max_steps", "3", "--save_steps", "1",
                             "--logging_steps", "1")

    reference = tmp_path / "uninterrupted"
    assert run_cli(train.main, argv(reference)) == 0
    resumed, _ = interrupt_and_resume(argv, tmp_path / "at1", "checkpoint-1 saved")
    assert_same_run(str(reference), str(resumed))


CONFIG_EDITS = [
    ("unknown key", lambda c: c.update(learning_rate=1), "unknown key"),
    ("template not a list", lambda c: c.update(template="{'text': 'text_a'}{'mask'}"), "template"),
    ("template part with an unknown key", lambda c: c["template"].append({"masks": None}), "unknown key 'masks'"),
    ("template without text", lambda c: c.update(template=[{"mask": None}]), "text_a"),
    ("two masks for the soft verbalizer", lambda c: c["template"].append({"mask": None}), "exactly one mask"),
    ("labels not a list", lambda c: c.update(labels="apple"), "labels"),
    ("labels out of order", lambda c: c["labels"].reverse(), "output order"),
    ("label words of another length", lambda c: c["label_words"].pop(), "label_words"),
    ("max_seq_length a string", lambda c: c.update(max_seq_length="40"), "max_seq_length"),
    ("max_seq_length beyond the positions", lambda c: c.update(max_seq_length=100000), "positions"),
    ("hidden size not divisible by heads", lambda c: c["plm_config"].update(hidden_size=65), "num_attention_heads"),
    ("vocab size zero", lambda c: c["plm_config"].update(vocab_size=0), "vocab_size"),
    ("model class not a model", lambda c: c.update(model_class="os.system"), "model_class"),
    ("unknown method", lambda c: c.update(method="lora"), "method"),
    ("not an object", lambda c: c.clear() or c.update(x=1), "unknown key"),
    ("unknown task type", lambda c: c.update(task_type="multilabel"), "task_type: 'multilabel' is not one of"),
    ("thresholds on a multi-class model", lambda c: c.update(thresholds=[0.5, 0.5, 0.5]),
     "a multi-class model has no thresholds"),
    ("thresholds one short", lambda c: c.update(task_type="multi-label", thresholds=[0.5]),
     "thresholds: must be null or a list of 3 numbers"),
    ("threshold above one", lambda c: c.update(task_type="multi-label", thresholds=[0.5, 2, 0.5]),
     "thresholds: must be null or a list of 3 numbers in [0, 1]"),
    ("unknown threshold search", lambda c: c.update(task_type="multi-label", threshold_search="best"),
     "threshold_search: 'best' is not one of none, global, per-label"),
]


@pytest.mark.parametrize("case, edit, message", CONFIG_EDITS, ids=[c[0] for c in CONFIG_EDITS])
def test_a_hand_edited_run_config_is_refused_with_its_key(case, edit, message, checkpoint_run, tmp_path, capsys):
    data, out, _ = checkpoint_run
    model = tmp_path / "model"
    shutil.copytree(out, model, ignore=shutil.ignore_patterns("checkpoint-*"))
    config_path = model / "ptuning_config.json"
    with open(config_path, encoding="utf-8") as fp:
        config = json.load(fp)
    edit(config)
    config_path.write_text(json.dumps(config), encoding="utf-8")
    argv = ["--do_predict", "--data_dir", data, "--output_dir", str(tmp_path / "p"), "--resume_from_checkpoint",
            str(model)]
    # With the marker, any edit is caught as such; without it, the config itself is validated.
    code = run_cli(train.main, argv)
    err = capsys.readouterr().err
    assert code == 2 and "ptuning_config.json" in err and "differs" in err, err
    os.remove(model / checkpoints.COMPLETE_MARKER)
    code = run_cli(train.main, argv)
    err = capsys.readouterr().err
    assert code == 2 and "ptuning_config.json" in err and message in err and "Traceback" not in err, err
    code = run_cli(export_cli.main, ["--resume_from_checkpoint", str(model), "--output_dir", str(tmp_path / "e")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and not (tmp_path / "e").exists()


def test_rotation_never_leaves_a_half_deleted_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    for step in (2, 4, 6):
        (run_dir / f"checkpoint-{step}").mkdir(parents=True)
        (run_dir / f"checkpoint-{step}" / "model_state.pdparams").write_bytes(b"w" * step)
        checkpoints.write_marker(str(run_dir / f"checkpoint-{step}"), step, 1)
    # What a kill in the middle of a deletion leaves: the directory is already out of sight.
    os.replace(run_dir / "checkpoint-2", run_dir / ".deleting-checkpoint-2-99")
    os.remove(run_dir / ".deleting-checkpoint-2-99" / "model_state.pdparams")
    assert [os.path.basename(p) for p in checkpoints.complete_checkpoints(str(run_dir))] == ["checkpoint-4",
                                                                                            "checkpoint-6"]
    assert checkpoints.clean_leftovers(str(run_dir)) == [".deleting-checkpoint-2-99"]
    deleted = checkpoints.rotate(str(run_dir), keep=1, best=str(run_dir / "checkpoint-4"))
    assert deleted == [] and sorted(os.listdir(run_dir)) == ["checkpoint-4", "checkpoint-6"]  # the best stays
    deleted = checkpoints.rotate(str(run_dir), keep=1, best=None)
    assert [os.path.basename(p) for p in deleted] == ["checkpoint-4"] and os.listdir(run_dir) == ["checkpoint-6"]


# (where the run is killed, the complete checkpoints it leaves, other names it may leave)
KILL_POINTS = [("checkpoint-2 written", [1], {"checkpoint-2"}),            # a save without its marker
               ("checkpoint-3 marked", [2, 3], set()),                      # before rotation
               ("deleting checkpoint-3", [4], {".deleting-checkpoint-3-"}),  # renamed, not removed yet
               ("checkpoint-5 saved", [5], set()),
               ("final model written", [8], {"final model"})]               # its files, no marker yet


@pytest.mark.slow
def test_killed_at_each_moment_of_saving_every_visible_checkpoint_verifies(tiny_model_dir, keyword_data, tmp_path):
    """kill -9 at each moment of saving and rotating (a checkpoint every step, one kept), each time resumed
    from the latest checkpoint: what is left always verifies, a checkpoint counts only with its marker,
    anything else is a leftover the next start removes, and the run ends as one never killed."""
    from conftest import assert_same_run, pause_env, paused_at

    def argv(out):
        return ["--model_name_or_path", tiny_model_dir, "--data_dir", keyword_data, "--output_dir", str(out),
                "--prompt", PROMPT, "--do_train", "--max_steps", "8", "--save_steps", "1", "--save_total_limit", "1",
                "--logging_steps", "1", *FAST]

    out = tmp_path / "run"
    for attempt, (point, complete, others) in enumerate(KILL_POINTS):
        resume = checkpoints.latest_checkpoint(str(out)) if out.exists() else None
        pause = tmp_path / f"paused-{attempt}"
        process = subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *argv(out)] +
                                   (["--resume_from_checkpoint", resume] if resume else []),
                                   env=pause_env(point, pause), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        paused_at(process, pause)
        process.send_signal(signal.SIGKILL)
        process.communicate()
        visible = checkpoints.complete_checkpoints(str(out))
        assert [checkpoints.checkpoint_step(c) for c in visible] == complete, point
        for path in visible:
            checkpoints.verify(path, "resume")
        # run.json is the run's record, written when it starts (utils/rundir/record.py)
        left = {name for name in os.listdir(out) if name not in (".ptuning.lock", "run.json")} - {
            os.path.basename(c) for c in visible}
        if "final model" in others:  # the final model's files without its marker: not a model
            assert not (out / checkpoints.COMPLETE_MARKER).exists() and (out / "model_state.pdparams").exists()
        else:
            assert {name.rsplit("-", 1)[0] + "-" if name.startswith(".deleting-") else name for name in left} == \
                others, (point, left)
    assert run_cli(train.main, argv(out) + ["--resume_from_checkpoint", str(out)]) == 0
    uninterrupted = tmp_path / "uninterrupted"
    assert run_cli(train.main, argv(uninterrupted)) == 0
    assert_same_run(str(uninterrupted), str(out))
    assert not [n for n in os.listdir(out) if n.startswith(".deleting-")]


@pytest.mark.parametrize("cli", ["ensemble", "teacher"])
def test_an_unfinished_run_or_a_language_model_is_named_where_a_final_model_is_expected(cli, tiny_model_dir, tmp_path,
                                                                                       capsys):
    """--members and --teacher: a run directory with checkpoints but no final model points to its
    newest complete checkpoint; a pretrain.py model says it is no classifier."""
    import ensemble

    unfinished = tmp_path / "unfinished"
    for step in (5, 10):
        checkpoint = unfinished / f"checkpoint-{step}"
        checkpoint.mkdir(parents=True)
        (checkpoint / "model_state.pdparams").write_bytes(b"weights")
        checkpoints.write_marker(str(checkpoint), step, 1)
    language_model = tmp_path / "tapt"
    language_model.mkdir()
    (language_model / "pretraining.json").write_text("{}", encoding="utf-8")
    (language_model / "model_state.pdparams").write_bytes(b"weights")
    for directory, message in ((unfinished, f"holds no final model (training did not finish?); give one of its "
                                            f"checkpoints, e.g. {unfinished / 'checkpoint-10'}"),
                               (language_model, "is a pretrain.py language model, not a classifier")):
        if cli == "ensemble":
            code = run_cli(ensemble.main, ["--members", str(directory), str(tmp_path / "other"), "--output_dir",
                                           str(tmp_path / "ens")])
        else:
            from utils.testing.synthetic import write_keyword_dataset

            data_dir = write_keyword_dataset(str(tmp_path / "data"))
            (tmp_path / "u.txt").write_text("苹果很甜\n", encoding="utf-8")
            code = run_cli(train.main, ["--model_name_or_path", tiny_model_dir, "--data_dir", data_dir,
                                        "--output_dir", str(tmp_path / "student"), "--do_train",
                                        "--teacher", str(directory), "--unlabeled_file", str(tmp_path / "u.txt")])
        err = capsys.readouterr().err
        assert code == 2 and message in err and "Traceback" not in err, err
