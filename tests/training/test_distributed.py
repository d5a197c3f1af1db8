"""Data parallelism through Paddle's own launcher: 2 CPU processes (gloo) train one model.

The specification: 2 processes x batch B train exactly what 1 process x batch 2B trains (same
seed, same data order): the same per-step losses and the same final weights, and both processes
hold bit-identical weights all along. Compared on every state-dict tensor of each process,
dumped at the end of training, before any best-model reload.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import FAST, ROOT
from utils.testing.synthetic import PROMPT

WORKER = os.path.join(ROOT, "tests", "training", "dp_worker.py")

pytestmark = pytest.mark.slow  # every test here launches 2 (and 1) training processes


def launch(tmp_path, name, flags, processes):
    """Run dp_worker.py (train.py + weight dump) in `processes` processes; return (out dir, dump dir)."""
    out, dump, log = tmp_path / name, tmp_path / f"{name}-dump", tmp_path / f"{name}-log"
    dump.mkdir()
    env = dict(os.environ, PTUNING_OFFLINE="1", DUMP_DIR=str(dump))
    if processes > 1:
        command = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", str(processes),
                   "--log_dir", str(log), WORKER]
    else:
        command = [sys.executable, WORKER]
    result = subprocess.run(command + flags + ["--output_dir", str(out)], cwd=str(tmp_path), env=env,
                            capture_output=True, text=True)
    logs = "".join((log / f"workerlog.{i}").read_text(errors="replace")[-3000:] for i in range(processes)
                   if (log / f"workerlog.{i}").exists())
    assert result.returncode == 0, logs + result.stderr[-3000:]
    return out, dump


def step_losses(out):
    with open(out / "trainer_state.json", encoding="utf-8") as fp:
        return {h["step"]: h["loss"] for h in json.load(fp)["log_history"] if "loss" in h}


def weights(dump, rank, when=""):
    with np.load(dump / f"rank{rank}{when}.npz") as npz:
        return {name: npz[name] for name in npz.files}


CASES = {
    "full model": [],
    "freeze_plm": ["--freeze_plm"],
    "gradient accumulation": ["--gradient_accumulation_steps", "2"],
}


@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_train_the_model_one_process_trains_with_the_global_batch(case, dropout_free_model,
                                                                               keyword_data, tmp_path):
    accumulate = 2 if case == "gradient accumulation" else 1
    base = ["--model_name_or_path", dropout_free_model, "--data_dir", keyword_data, "--prompt", PROMPT,
            "--do_train", "--max_steps", "6", "--logging_steps", "1", "--device", "cpu", "--max_seq_length", "40",
            "--learning_rate", "1e-3", "--ppt_learning_rate", "3e-3", "--seed", "7", *CASES[case]]
    per_process = 8 // (2 * accumulate)
    dp_out, dp_dump = launch(tmp_path, "dp", base + ["--per_device_train_batch_size", str(per_process)], 2)
    one_out, one_dump = launch(tmp_path, "one", base + ["--per_device_train_batch_size", str(8 // accumulate)], 1)

    rank0, rank1, single = weights(dp_dump, 0), weights(dp_dump, 1), weights(one_dump, 0)
    differing = [name for name in rank0 if not np.array_equal(rank0[name], rank1[name])]
    assert not differing, f"{len(differing)} of {len(rank0)} tensors differ between the processes: {differing[:8]}"
    assert set(rank0) == set(single)
    for name in single:
        np.testing.assert_allclose(rank0[name], single[name], rtol=1e-4, atol=2e-5, err_msg=name)
    # Training moved the weights it trains, from the same start on both processes, and no other.
    initial0, initial1 = weights(dp_dump, 0, "-initial"), weights(dp_dump, 1, "-initial")
    assert all(np.array_equal(initial0[name], initial1[name]) for name in initial0)
    moved = {name for name in rank0 if not np.array_equal(rank0[name], initial0[name])}
    # the soft prompt and its encoder (not the PLM's word embeddings the template refers to), the label words
    prompt = {name for name in rank0 if name.startswith("template.") and "word_embeddings" not in name}
    prompt.add("verbalizer.head.decoder.weight")
    encoder = {name for name in rank0 if name.startswith("plm.ernie.encoder.")}
    assert len(prompt) > 10 and prompt <= moved, sorted(prompt - moved)
    if case == "freeze_plm":
        assert not {name for name in moved if name.startswith("plm.")}
    else:
        assert encoder and encoder <= moved, sorted(encoder - moved)[:8]

    dp_losses, one_losses = step_losses(dp_out), step_losses(one_out)
    assert sorted(dp_losses) == sorted(one_losses) == list(range(1, 7))
    np.testing.assert_allclose([dp_losses[s] for s in range(1, 7)], [one_losses[s] for s in range(1, 7)],
                               rtol=1e-4, atol=1e-5)


def test_processes_that_diverge_are_stopped_not_saved(tiny_model_dir, keyword_data, tmp_path):
    """A real 2-process run whose process 1 drifts by 1e-6 in one bias after step 1: the run stops at its next
    save (step 2), on both processes, naming that tensor, and saves no checkpoint and no final model."""
    out, log = tmp_path / "out", tmp_path / "log"
    flags = ["--model_name_or_path", tiny_model_dir, "--data_dir", keyword_data, "--output_dir", str(out),
             "--prompt", PROMPT, "--do_train", "--max_steps", "4", "--save_steps", "2", "--logging_steps", "1",
             "--device", "cpu", *FAST]
    result = subprocess.run([sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2",
                             "--log_dir", str(log), os.path.join(ROOT, "tests", "training", "dp_diverge_worker.py"), *flags],
                            cwd=str(tmp_path), env=dict(os.environ, PTUNING_OFFLINE="1"), capture_output=True,
                            text=True)
    logs = [(log / f"workerlog.{i}").read_text(errors="replace") for i in range(2)]
    assert result.returncode != 0, logs[0][-2000:]
    nudged = [line.split()[1] for line in logs[1].splitlines() if line.startswith("NUDGED ")]
    assert len(nudged) == 1, logs[1][-2000:]
    for text in logs:
        assert ("checkpoint at step 2: the 2 data-parallel processes hold different weights for 1 of" in text
                and nudged[0] in text and "refusing to save" in text), text[-3000:]
    assert not list(out.glob("checkpoint-*")) and not list(out.glob(".saving*"))
    for name in ("model_state.pdparams", "checkpoint_complete.json", "train_results.json", "trainer_state.json"):
        assert not (out / name).exists(), name


def test_two_process_training_writes_once_and_gathers_metrics(tiny_model_dir, keyword_data, tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, PTUNING_OFFLINE="1")
    command = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir",
               str(tmp_path / "log"), os.path.join(ROOT, "train.py"), "--model_name_or_path", tiny_model_dir,
               "--data_dir", keyword_data, "--output_dir", str(out), "--prompt", PROMPT, "--do_train", "--do_eval",
               "--do_predict", "--max_steps", "20", "--eval_steps", "10", "--logging_steps", "5", "--device", "cpu",
               *FAST]
    result = subprocess.run(command, cwd=str(tmp_path), env=env, capture_output=True, text=True)
    logs = "".join((tmp_path / "log" / f"workerlog.{i}").read_text(errors="replace")[-2000:] for i in range(2)
                   if (tmp_path / "log" / f"workerlog.{i}").exists())
    assert result.returncode == 0, logs + result.stderr[-2000:]

    with open(out / "trainer_state.json", encoding="utf-8") as fp:
        state = json.load(fp)
    assert state["global_step"] == 20
    for checkpoint in out.glob("checkpoint-*"):
        marker = json.loads((checkpoint / "checkpoint_complete.json").read_text(encoding="utf-8"))
        assert marker["world_size"] == 2 and "rng_state_2.pth" in marker["files"]

    # Metrics cover the whole dev/test set (gathered from both processes), files are written once.
    with open(out / "eval_results.json", encoding="utf-8") as fp:
        dp_eval = json.load(fp)
    with open(out / "test_results.json", encoding="utf-8") as fp:
        assert json.load(fp)["test_samples"] == 24
    with open(out / "test_predictions.tsv", encoding="utf-8") as fp:
        assert len(fp.read().splitlines()) == 1 + 24

    # Re-evaluating the saved model in one process gives the same dev metrics.
    single = tmp_path / "single"
    subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--do_eval", "--data_dir", keyword_data,
                    "--output_dir", str(single), "--resume_from_checkpoint", str(out), "--device", "cpu",
                    "--per_device_eval_batch_size", "32"], cwd=str(tmp_path), env=env, check=True, capture_output=True)
    with open(single / "eval_results.json", encoding="utf-8") as fp:
        single_eval = json.load(fp)
    assert single_eval["eval_accuracy"] == pytest.approx(dp_eval["eval_accuracy"])
    assert single_eval["eval_macro_f1"] == pytest.approx(dp_eval["eval_macro_f1"])
