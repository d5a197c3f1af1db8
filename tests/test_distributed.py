"""Data parallelism through Paddle's own launcher: 2 CPU processes (gloo)."""
import json
import os
import subprocess
import sys

import pytest

from conftest import FAST, ROOT
from utils.synthetic import PROMPT


def test_two_process_training_writes_once_and_gathers_metrics(tiny_model_dir, keyword_data, tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, PTUNING_OFFLINE="1")
    command = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir",
               str(tmp_path / "log"), os.path.join(ROOT, "train.py"), "--model_name_or_path", tiny_model_dir,
               "--data_dir", keyword_data, "--output_dir", str(out), "--prompt", PROMPT, "--do_train", "--do_eval",
               "--do_predict", "--max_steps", "20", "--eval_steps", "10", "--logging_steps", "5", "--device", "cpu",
               *FAST]
    result = subprocess.run(command, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600)
    logs = "".join((tmp_path / "log" / f"workerlog.{i}").read_text(errors="replace")[-2000:] for i in range(2)
                   if (tmp_path / "log" / f"workerlog.{i}").exists())
    assert result.returncode == 0, logs + result.stderr[-2000:]

    with open(out / "trainer_state.json", encoding="utf-8") as fp:
        state = json.load(fp)
    assert state["global_step"] == 20
    for checkpoint in out.glob("checkpoint-*"):
        assert (checkpoint / "checkpoint_complete.json").is_file()

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
