"""End to end: train.py on the tiny model (in-process), resume after kill -9, predict from a checkpoint,
the seed command, a built-in model name offline."""
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import train
from conftest import EXAMPLE_DATA, FAST, ROOT, read_tsv, shared_path
from utils.errors import run_cli
from utils.testing.synthetic import PROMPT


def test_keyword_task_is_learned(trained):
    data_dir, out = trained
    with open(os.path.join(out, "eval_results.json"), encoding="utf-8") as fp:
        metrics = json.load(fp)
    assert metrics["eval_accuracy"] >= 0.9
    assert 0.85 <= metrics["eval_macro_f1"] <= 1.0  # a fraction, like accuracy (not a percentage)


def test_outputs_layout(trained):
    data_dir, out = trained
    assert os.path.isfile(os.path.join(out, "export", "manifest.json"))  # --do_export
    for name in ["train_results.json", "eval_results.json", "test_results.json", "model_state.pdparams",
                 "template_config.json", "verbalizer_config.json", "ptuning_config.json", "vocab.txt",
                 "trainer_state.json", "checkpoint_complete.json"]:
        assert os.path.isfile(os.path.join(out, name)), name
    # Every tensor is stored once: the template's and verbalizer's weights are in model_state.pdparams.
    assert not os.path.exists(os.path.join(out, "template_state.pdparams"))
    checkpoints = [d for d in os.listdir(out) if d.startswith("checkpoint-")]
    assert checkpoints, "Trainer checkpoints are kept"
    for ckpt in checkpoints:
        assert {"model_state.pdparams", "optimizer.pdopt", "ptuning_config.json",
                "template_config.json"} <= set(os.listdir(os.path.join(out, ckpt)))
    with open(os.path.join(out, "test_results.json"), encoding="utf-8") as fp:
        test_metrics = json.load(fp)
    assert {"test_accuracy", "test_macro_f1"} <= set(test_metrics)

    header, rows = read_tsv(os.path.join(out, "test_predictions.tsv"))
    assert header == ["text", "gold", "label", "confidence"]  # infer.py's vocabulary
    with open(os.path.join(data_dir, "test.txt"), encoding="utf-8") as fp:
        test_lines = [line.rstrip("\n").split("\t") for line in fp if line.strip()]
    assert [r[:2] for r in rows] == test_lines
    accuracy = np.mean([r[1] == r[2] for r in rows])
    assert accuracy == pytest.approx(test_metrics["test_accuracy"])
    assert all(1 / 3 <= float(r[3]) <= 1.0 for r in rows)  # softmax prob of the argmax of 3 labels

    header, rows = read_tsv(os.path.join(out, "data_predictions.tsv"))
    assert header == ["text", "label", "confidence"]
    with open(os.path.join(data_dir, "data.txt"), encoding="utf-8") as fp:
        assert [r[0] for r in rows] == [line.strip() for line in fp if line.strip()]
    assert {r[1] for r in rows} <= {"apple", "banana", "grape"}


def test_predict_from_checkpoint_needs_no_pretrained_model(trained, tmp_path):
    """The upstream evaluation command: --do_predict --resume_from_checkpoint (default model name, offline)."""
    data_dir, out = trained
    pred_dir = str(tmp_path / "pred")
    assert run_cli(train.main, ["--do_predict", "--data_dir", data_dir, "--output_dir", pred_dir,
                                "--resume_from_checkpoint", out, "--max_seq_length", "40"]) == 0
    _, first = read_tsv(os.path.join(out, "test_predictions.tsv"))
    _, again = read_tsv(os.path.join(pred_dir, "test_predictions.tsv"))
    assert [r[2] for r in first] == [r[2] for r in again]
    np.testing.assert_allclose([float(r[3]) for r in first], [float(r[3]) for r in again], atol=1e-5)


def test_existing_results_are_not_overwritten(trained, capsys):
    data_dir, out = trained
    before = os.path.getmtime(os.path.join(out, "eval_results.json"))
    code = run_cli(train.main, ["--do_eval", "--data_dir", data_dir, "--output_dir", out,
                                "--resume_from_checkpoint", out])
    assert code == 2
    assert "--overwrite_output_dir" in capsys.readouterr().err
    assert os.path.getmtime(os.path.join(out, "eval_results.json")) == before


def tiny_tnews_copy(root, source):
    """data/tnews for the seed command: the first lines of `source`'s train/dev and its label.txt."""
    target = os.path.join(root, "data", "tnews")
    os.makedirs(target)
    for name, n in (("train.txt", 48), ("dev.txt", 16), ("label.txt", None)):
        with open(os.path.join(source, name), encoding="utf-8") as fp:
            lines = fp.readlines()
        with open(os.path.join(target, name), "w", encoding="utf-8") as fp:
            fp.writelines(lines[:n] if n else lines)
    return target


SEED_COMMAND = ('python train.py --data_dir ./data/tnews --output_dir ./checkpoints/ --prompt "这条新闻标题的主题是" '
                "--max_seq_length 128 --learning_rate 3e-5 --ppt_learning_rate 3e-4 --do_train --do_eval "
                "--max_steps 1000 --eval_steps 100 --logging_steps 10 --per_device_eval_batch_size 32 "
                "--per_device_train_batch_size 32")


@pytest.mark.slow
@pytest.mark.parametrize("data", ["FewCLUE tnews", "example data"])
def test_seed_command_runs_unchanged(data, tmp_path):
    """The seed document's command verbatim, from a fresh working directory, with 20 steps (evaluating every
    10) instead of 1000 (every 100), plus --model_name_or_path for the offline tiny model, on a slice of the
    real FewCLUE tnews (skipped, saying so, without ../shared) and of the example data. What the defaults
    make of these flags is tested flag by flag in test_flags.py."""
    source = shared_path("data", "fewclue", "tnews") if data == "FewCLUE tnews" else EXAMPLE_DATA
    data_dir = tiny_tnews_copy(str(tmp_path), source)
    env = dict(os.environ, PTUNING_OFFLINE="1", PYTHONPATH=ROOT)
    subprocess.run([sys.executable, "-m", "utils.tiny_ernie", "--output_dir", str(tmp_path / "tiny"),
                    "--data_dir", data_dir, "--extra_text", "这条新闻标题的主题是"], check=True, env=env,
                   cwd=str(tmp_path), capture_output=True)
    seed = SEED_COMMAND.replace("--max_steps 1000 --eval_steps 100", "--max_steps 20 --eval_steps 10")
    assert seed != SEED_COMMAND
    command = seed.replace("python train.py", f"{sys.executable} {os.path.join(ROOT, 'train.py')}")
    command += f" --model_name_or_path {tmp_path / 'tiny'}"
    result = subprocess.run(command, shell=True, cwd=str(tmp_path), env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "checkpoints"  # the default ./checkpoints/ of the working directory
    with open(out / "eval_results.json", encoding="utf-8") as fp:
        assert {"eval_accuracy", "eval_macro_f1"} <= set(json.load(fp))
    assert (out / "train_results.json").is_file()
    with open(out / "trainer_state.json", encoding="utf-8") as fp:
        state = json.load(fp)
    assert state["global_step"] == 20
    assert [h["step"] for h in state["log_history"] if "eval_accuracy" in h] == [10, 20]  # every --eval_steps
    best = tmp_path / state["best_model_checkpoint"]  # ... and kept the best checkpoint, in ./checkpoints/
    assert best.parent == out and (best / "model_state.pdparams").is_file(), state["best_model_checkpoint"]


def test_builtin_name_offline_fails_fast_with_a_clear_message(tmp_path, keyword_data):
    """The CLI end to end (the probe itself: test_plm.py): one paragraph naming the flag, exit 2, in seconds."""
    env = dict(os.environ, PTUNING_OFFLINE="1")
    start = time.monotonic()
    result = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--model_name_or_path",
                             "ernie-3.0-base-zh", "--data_dir", keyword_data, "--output_dir", str(tmp_path / "o"),
                             "--do_train", "--do_eval", "--prompt", PROMPT, "--device", "cpu"], env=env,
                            capture_output=True, text=True)
    assert time.monotonic() - start < 60  # seconds of start-up, no download attempt or hang
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "--model_name_or_path" in errors[0] and "ernie-3.0-base-zh" in errors[0] and "unreachable" in errors[0]
    assert "utils.tiny_ernie" in result.stderr
    assert not (tmp_path / "o").exists() or not [p for p in (tmp_path / "o").iterdir() if p.name != ".ptuning.lock"]


@pytest.mark.slow
def test_sigkill_then_resume_continues_exactly(tiny_model_dir, keyword_data, tmp_path):
    """Kill -9 a training process while it saves checkpoint-30 (checkpoint-20 complete); resuming from its
    last complete checkpoint, into another output directory or in place, gives the losses and weights of a
    run that was never interrupted, and the half-written checkpoint is never used and is removed."""
    from conftest import assert_same_run, killed_at

    base = ["--model_name_or_path", tiny_model_dir, "--data_dir", keyword_data, "--prompt", PROMPT,
            "--do_train", "--max_steps", "40", "--save_steps", "10", "--logging_steps", "1", "--device", "cpu",
            *FAST]
    killed, pause = tmp_path / "killed", tmp_path / "paused"
    killed_at("train.py", [*base, "--output_dir", str(killed)], "checkpoint-30 written", pause)
    assert not (killed / "train_results.json").exists()
    assert sorted(p.name for p in killed.glob("checkpoint-*")) == ["checkpoint-20", "checkpoint-30"]
    marker = json.loads((killed / "checkpoint-20" / "checkpoint_complete.json").read_text(encoding="utf-8"))
    assert set(marker["files"]) <= {p.name for p in (killed / "checkpoint-20").iterdir()}
    assert {"model_state.pdparams", "optimizer.pdopt", "rng_state.pth"} <= set(marker["files"])
    assert not (killed / "checkpoint-30" / "checkpoint_complete.json").exists()  # the save the kill interrupted

    uninterrupted = str(tmp_path / "uninterrupted")
    assert run_cli(train.main, base + ["--output_dir", uninterrupted]) == 0
    elsewhere = str(tmp_path / "elsewhere")  # first: resuming in place rotates checkpoint-20 away
    assert run_cli(train.main, base + ["--output_dir", elsewhere, "--resume_from_checkpoint",
                                       str(killed / "checkpoint-20")]) == 0
    assert_same_run(uninterrupted, elsewhere)
    assert run_cli(train.main, base + ["--output_dir", str(killed), "--resume_from_checkpoint", str(killed)]) == 0
    assert_same_run(uninterrupted, str(killed))
    assert all((c / "checkpoint_complete.json").is_file() for c in killed.glob("checkpoint-*"))  # leftovers gone


def test_data_order_depends_only_on_seed_and_epoch():
    from utils.training.trainer import SeededBatchSampler

    data = list(range(20))

    def order(seed, epoch):
        sampler = SeededBatchSampler(data, batch_size=4, shuffle=True, seed=seed)
        sampler.set_epoch(epoch)
        return [i for batch in sampler for i in batch]

    assert order(1, 0) == order(1, 0) and sorted(order(1, 0)) == data
    assert order(1, 0) != order(1, 1) and order(1, 0) != order(2, 0)
    sampler = SeededBatchSampler(data, batch_size=4, shuffle=True, seed=1)
    first, second = [list(sampler) for _ in range(2)]  # consecutive epochs without set_epoch
    assert first == [order(1, 0)[i:i + 4] for i in range(0, 20, 4)]
    assert second == [order(1, 1)[i:i + 4] for i in range(0, 20, 4)]


def test_an_epoch_ends_with_its_last_full_accumulation_group():
    """With accumulation over 4 batches, an epoch of 6 batches yields 4 (the 2 left over differ by epoch);
    fewer batches than a group are all kept (paddlenlp then accumulates over the epoch)."""
    from utils.training.trainer import SeededBatchSampler

    data = list(range(24))
    sampler = SeededBatchSampler(data, batch_size=4, shuffle=True, seed=1, accumulation=4)
    epochs = [list(sampler) for _ in range(3)]
    assert len(sampler) == 4 and all(len(epoch) == 4 for epoch in epochs)
    everything = SeededBatchSampler(data, batch_size=4, shuffle=True, seed=1)
    assert [list(everything)[:4] for _ in range(3)] == epochs  # the same order, cut after the last group
    assert len({tuple(i for batch in epoch for i in batch) for epoch in epochs}) == 3
    few = SeededBatchSampler(data, batch_size=8, shuffle=True, seed=1, accumulation=4)
    assert len(few) == len(list(few)) == 3


def test_freeze_plm_trains_the_epochs_asked_for(dropout_free_model, tmp_path):
    """--freeze_plm sets max_steps from --num_train_epochs: counted as the Trainer counts an epoch's steps
    (24 texts in batches of 4, accumulated 4 at a time: one step an epoch), 2 epochs are 2 steps (it
    counted 4, so the run went on for 4 epochs)."""
    from utils.testing.synthetic import write_keyword_dataset

    data = write_keyword_dataset(str(tmp_path / "data"), train_per_class=8)
    out = tmp_path / "out"
    assert run_cli(train.main, ["--model_name_or_path", dropout_free_model, "--data_dir", data, "--output_dir",
                                str(out), "--prompt", PROMPT, "--do_train", "--freeze_plm", "--num_train_epochs", "2",
                                "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "4",
                                "--max_seq_length", "40"]) == 0
    with open(out / "trainer_state.json", encoding="utf-8") as fp:
        state = json.load(fp)
    assert (state["global_step"], state["max_steps"], state["epoch"]) == (2, 2, 2.0)


def test_predict_needs_test_txt_only_for_metrics(trained, tmp_path, capsys):
    """test.txt is optional: with data.txt alone --do_predict writes predictions (and no test metrics)."""
    data_dir, out = trained
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    os.remove(data / "test.txt")
    pred = tmp_path / "pred"
    assert run_cli(train.main, ["--do_predict", "--data_dir", str(data), "--output_dir", str(pred),
                                "--resume_from_checkpoint", out]) == 0
    assert (pred / "data_predictions.tsv").is_file() and not (pred / "test_results.json").exists()
    os.remove(data / "data.txt")
    code = run_cli(train.main, ["--do_predict", "--data_dir", str(data), "--output_dir", str(tmp_path / "p2"),
                                "--resume_from_checkpoint", out])
    assert code == 2 and "needs test.txt" in capsys.readouterr().err


def test_the_effective_template_is_logged_and_unknown_text_is_warned(tiny_model_dir, tmp_path, caplog):
    import logging

    data = tmp_path / "data"
    data.mkdir()
    (data / "label.txt").write_text("apple\nbanana\n", encoding="utf-8")
    korean = "안녕하세요 반갑습니다\tapple\n감사합니다 좋은 하루\tbanana\n"  # no Hangul in the tiny vocab
    for name in ("train.txt", "dev.txt"):
        (data / name).write_text(korean, encoding="utf-8")
    with caplog.at_level(logging.INFO):
        assert run_cli(train.main, ["--model_name_or_path", tiny_model_dir, "--data_dir", str(data), "--output_dir",
                                    str(tmp_path / "o"), "--prompt", PROMPT, "--do_train", "--max_steps", "1",
                                    *FAST]) == 0
    messages = "\n".join(r.getMessage() for r in caplog.records)
    assert f"Using template: {{'soft': '{PROMPT}', 'encoder': 'lstm', 'hidden_size': 200}}{{'text': 'text_a'}}" \
           "{'mask': None}" in messages
    assert "100% of the text tokens are [UNK]" in messages
