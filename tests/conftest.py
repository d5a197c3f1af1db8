"""Shared fixtures: a tiny random ERNIE and the keyword task, built once per session."""
import contextlib
import json
import os
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

os.environ.setdefault("PTUNING_OFFLINE", "1")  # never probe the network from tests

from utils.model import compat  # noqa: E402

compat.apply()  # what train.py and export.py do first

SHARED = os.environ.get("PTUNING_SHARED", os.path.join(os.path.dirname(ROOT), "shared"))
EXAMPLE_DATA = os.path.join(ROOT, "data", "example")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random ERNIE whose vocab covers the keyword task, the example data and the test prompts."""
    from utils.testing import synthetic
    from utils.testing.tiny_ernie import build_ernie, texts_of_data_dirs, vocab_from_texts

    texts = synthetic.vocab_texts() + texts_of_data_dirs([EXAMPLE_DATA]) + ["这条新闻标题的主题是这条新闻的主题是"]
    path = str(tmp_path_factory.mktemp("models") / "tiny-ernie")
    return build_ernie(path, vocab_from_texts(texts), seed=0)


@pytest.fixture(scope="session")
def dropout_free_model(tmp_path_factory):
    """The tiny ERNIE without dropout: no randomness in a training step (the data order aside)."""
    from utils.testing import synthetic
    from utils.testing.tiny_ernie import build_ernie, texts_of_data_dirs, vocab_from_texts

    texts = synthetic.vocab_texts() + texts_of_data_dirs([EXAMPLE_DATA]) + [synthetic.PROMPT]
    path = str(tmp_path_factory.mktemp("models") / "tiny-no-dropout")
    return build_ernie(path, vocab_from_texts(texts), seed=0, hidden_dropout_prob=0.0,
                       attention_probs_dropout_prob=0.0)


FAST = ["--max_seq_length", "40", "--learning_rate", "1e-3", "--ppt_learning_rate", "3e-3",
        "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "32", "--seed", "42"]


@pytest.fixture(scope="session")
def trained(tiny_model_dir, tmp_path_factory):
    """One real run on the keyword task: train -> eval (every 20 steps) -> predict -> export.

    Returns `(data_dir, output_dir)`; the export is in output_dir/export.
    """
    import train
    from utils.errors import run_cli
    from utils.testing.synthetic import PROMPT, write_keyword_dataset

    base = tmp_path_factory.mktemp("trained")
    data_dir = write_keyword_dataset(str(base / "data"))
    out = str(base / "out")
    argv = ["--model_name_or_path", tiny_model_dir, "--data_dir", data_dir, "--output_dir", out, "--prompt", PROMPT,
            "--do_train", "--do_eval", "--do_predict", "--do_export", "--max_steps", "160", "--eval_steps", "20",
            "--logging_steps", "10", "--save_total_limit", "1", *FAST]
    assert run_cli(train.main, argv) == 0
    return data_dir, out


@pytest.fixture(scope="session")
def trained_multilabel(tiny_model_dir, tmp_path_factory):
    """The keyword task as multi-label (a text's labels are the fruits it names): train -> eval -> predict ->
    export (fp16 and int8 too), with a global threshold searched on dev."""
    import train
    from utils.errors import run_cli
    from utils.testing.synthetic import MULTI_LABEL_PROMPT, write_multilabel_keyword_dataset

    base = tmp_path_factory.mktemp("multilabel")
    data_dir = write_multilabel_keyword_dataset(str(base / "data"))
    out = str(base / "out")
    argv = ["--model_name_or_path", tiny_model_dir, "--data_dir", data_dir, "--output_dir", out,
            "--task_type", "multi_label", "--prompt", MULTI_LABEL_PROMPT, "--threshold_search", "global",
            "--do_train", "--do_eval", "--do_predict", "--do_export", "--export_fp16", "--quantize", "int8",
            "--max_steps", "160", "--eval_steps", "40", "--logging_steps", "40", *FAST]
    assert run_cli(train.main, argv) == 0
    return data_dir, out


LONG_TEXT_RUN = ["--max_steps", "800", "--eval_steps", "80", "--logging_steps", "80", "--save_total_limit", "1", *FAST]


def long_keyword_run(model_dir, base, mode, *flags):
    """train -> eval -> predict -> export on the keyword task with the keyword after the first 32
    tokens (a 40-token input holds 29 text tokens beside the prompt): `(data_dir, output_dir)`."""
    import train
    from utils.errors import run_cli
    from utils.testing.synthetic import PROMPT, write_long_keyword_dataset

    # 300 test documents: an accuracy measured to about ±2 points, not 24 where one text is 4 points
    data_dir = write_long_keyword_dataset(str(base / "data"), hidden=32, tail=12, test_per_class=100)
    out = str(base / f"out-{mode}")
    argv = ["--model_name_or_path", model_dir, "--data_dir", data_dir, "--output_dir", out, "--prompt", PROMPT,
            "--do_train", "--do_eval", "--do_predict", "--do_export", "--long_text", mode, *flags, *LONG_TEXT_RUN]
    assert run_cli(train.main, argv) == 0
    return data_dir, out


@pytest.fixture(scope="session")
def trained_windows(tiny_model_dir, tmp_path_factory):
    """A --long_text window model of the long keyword task (about 40 s), exported."""
    return long_keyword_run(tiny_model_dir, tmp_path_factory.mktemp("long"), "window")


@pytest.fixture
def keyword_data(tmp_path):
    from utils.testing.synthetic import write_keyword_dataset

    return write_keyword_dataset(str(tmp_path / "keyword"))


def read_tsv(path):
    """`(header, rows)` of a TSV file the tool wrote."""
    with open(path, encoding="utf-8") as fp:
        rows = [line.rstrip("\n").split("\t") for line in fp]
    return rows[0], rows[1:]


@pytest.fixture
def no_model_loads(monkeypatch):
    """Fail the test if a PLM or a checkpoint starts loading: flags and data are checked before that."""
    import utils.training.plan

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the flags and data were checked")

    monkeypatch.setattr(utils.training.plan, "load_plm", refuse)
    monkeypatch.setattr(utils.training.plan, "rebuild_from_checkpoint", refuse)


@contextlib.contextmanager
def ready_client(app, timeout=60.0):
    """A Starlette TestClient on `app`, yielded once /ready answers 200 (the model loads in a thread)."""
    from fastapi.testclient import TestClient

    with TestClient(app) as client:
        deadline = time.monotonic() + timeout
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, "the service was not ready in time"
            time.sleep(0.05)
        yield client


def until(condition, what, guard=300.0):
    """Ask `condition()` again until it is true: for a state the test holds, or one the product must
    reach (never a sleep to let something happen). `guard` seconds only turn a hang into a failure."""
    deadline = time.monotonic() + guard
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not reached after {guard:.0f} s"


def metric_value(metrics_text, name):
    """The value of the unlabelled metric `name` in a Prometheus /metrics text."""
    for line in metrics_text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def shared_path(*parts):
    path = os.path.join(SHARED, *parts)
    if not os.path.exists(path):
        pytest.skip(f"{path} not present (../shared is optional)")
    return path


def resign(export_dir, name):
    """Record `name`'s current size and sha256 in the export's manifest.json (a hand-edited export)."""
    import json

    from utils.files import sha256_file

    manifest_path = os.path.join(export_dir, "manifest.json")
    with open(manifest_path, encoding="utf-8") as fp:
        manifest = json.load(fp)
    path = os.path.join(export_dir, name)
    manifest["files"][name] = {"bytes": os.path.getsize(path), "sha256": sha256_file(path)}
    with open(manifest_path, "w", encoding="utf-8") as fp:
        json.dump(manifest, fp)


def train_quick(tiny_model_dir, data_dir, out, *flags, steps=60):
    """A short train.py run on the tiny model (in-process) into `out`; returns `out`."""
    import train
    from utils.errors import run_cli

    argv = ["--model_name_or_path", tiny_model_dir, "--data_dir", data_dir, "--output_dir", out, "--do_train",
            "--do_eval", "--max_steps", str(steps), "--eval_steps", str(steps), "--logging_steps", "20",
            "--save_total_limit", "1", *FAST, *flags]
    assert run_cli(train.main, argv) == 0
    return out


@pytest.fixture(scope="session")
def ensemble_members(trained, tiny_model_dir, tmp_path_factory):
    """Three members on the keyword task: the `trained` run, a P-tuning run of another seed and a
    fine-tuning run (another template: a second input view)."""
    from utils.testing.synthetic import PROMPT

    data_dir, first = trained
    base = tmp_path_factory.mktemp("members")
    second = train_quick(tiny_model_dir, data_dir, str(base / "seed7"), "--prompt", PROMPT, "--seed", "7", steps=40)
    finetune = train_quick(tiny_model_dir, data_dir, str(base / "finetune"), "--method", "finetune", "--seed", "3",
                           steps=30)
    return data_dir, [first, second, finetune]


@pytest.fixture(scope="session")
def ensemble_run(ensemble_members, tmp_path_factory):
    """ensemble.py over the three members, evaluated on dev and test: `(data_dir, output_dir)`."""
    import ensemble
    from utils.errors import run_cli

    data_dir, members = ensemble_members
    out = str(tmp_path_factory.mktemp("ensemble") / "ens")
    assert run_cli(ensemble.main, ["--members", *members, "--output_dir", out, "--data_dir", data_dir,
                                   "--do_eval", "--do_predict"]) == 0
    return data_dir, out


class Interrupted(KeyboardInterrupt):
    """What `interrupted_at` raises: a Ctrl-C at a known moment (run_cli exits 130)."""


@contextlib.contextmanager
def interrupted_at(point, directory=None):
    """Runs in this process stop, as if by Ctrl-C, when they reach `point` (utils.rundir.checkpoints.reached:
    `checkpoint-4 saved`, `final model written`, ...), in `directory` when given: "killed after
    checkpoint-4 was saved but before the final model was written", deterministically."""
    from utils.rundir import checkpoints

    original = checkpoints.reached

    def reached(name, where):
        original(name, where)
        if name == point and (directory is None or os.path.realpath(where) == os.path.realpath(directory)):
            raise Interrupted(f"{point} in {where}")

    checkpoints.reached = reached
    try:
        yield
    finally:
        checkpoints.reached = original


TIMING = ("_runtime", "_per_second")


def without_timing(record):
    return {k: v for k, v in record.items() if not k.endswith(TIMING)}


def assert_same_run(reference, resumed, final_results=True):
    """`resumed` ended as `reference` did: every weight equal (max |Δw| == 0), the same global step, log
    history (losses, learning rates, evaluations; timings aside) and train results, and the same
    output files (checkpoint directories aside)."""
    import json

    import numpy as np
    import paddle

    def state(run):
        with open(os.path.join(run, "trainer_state.json"), encoding="utf-8") as fp:
            return json.load(fp)

    a, b = paddle.load(os.path.join(reference, "model_state.pdparams")), paddle.load(
        os.path.join(resumed, "model_state.pdparams"))
    assert set(a) == set(b)
    deltas = {k: float(np.abs(a[k].numpy().astype("float64") - b[k].numpy().astype("float64")).max()) for k in a
              if a[k].size}
    assert max(deltas.values()) == 0.0, sorted(deltas.items(), key=lambda kv: -kv[1])[:5]
    sa, sb = state(reference), state(resumed)
    for key in ("global_step", "max_steps", "num_train_epochs", "epoch", "best_metric"):
        assert sa[key] == sb[key], (key, sa[key], sb[key])
    assert [without_timing(h) for h in sa["log_history"]] == [without_timing(h) for h in sb["log_history"]]
    if final_results:
        with open(os.path.join(reference, "train_results.json"), encoding="utf-8") as fp:
            ra = json.load(fp)
        with open(os.path.join(resumed, "train_results.json"), encoding="utf-8") as fp:
            rb = json.load(fp)
        assert without_timing(ra) == without_timing(rb)

    def outputs(run):
        return sorted(n for n in os.listdir(run) if not n.startswith(("checkpoint-", ".")) and not n.endswith(".log"))

    assert outputs(reference) == outputs(resumed)


def paused_at(process, pause_file):
    """The pid of the process that stopped at a PTUNING_TEST_PAUSE point (it waits there until killed),
    once `pause_file` exists; `process` (the one launched, or its parent) must still be running. The
    loop waits for a state this test holds, not for time to pass."""
    import pathlib

    pause_file = pathlib.Path(pause_file)
    while not pause_file.exists():
        assert process.poll() is None, "the run ended before it reached the pause point"
        time.sleep(0.05)
    return int(pause_file.read_text(encoding="utf-8"))


def killed_at(script, argv, point, pause_file):
    """Run `python script argv` until it stops at the PTUNING_TEST_PAUSE `point`, then kill -9 it."""
    import signal
    import subprocess

    process = subprocess.Popen([sys.executable, os.path.join(ROOT, script), *argv], env=pause_env(point, pause_file),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert paused_at(process, pause_file) == process.pid
    process.send_signal(signal.SIGKILL)
    process.wait()


def pause_env(point, pause_file):
    """The environment for a subprocess that pauses at `point` (utils.rundir.checkpoints.reached)."""
    return dict(os.environ, PTUNING_OFFLINE="1", PTUNING_TEST_PAUSE=f"{point}={pause_file}")


@pytest.fixture
def pair_export(trained, tmp_path):
    """The keyword export with a `text_b` part added to its template: a pair model as far as
    preprocessing goes (the graph finds [MASK] wherever it is), enough to compare API and infer.py."""
    import shutil

    export = str(tmp_path / "pair-export")
    shutil.copytree(os.path.join(trained[1], "export"), export)
    path = os.path.join(export, "preprocess.json")
    with open(path, encoding="utf-8") as fp:
        config = json.load(fp)
    at = next(i for i, part in enumerate(config["parts"]) if part.get("text") == "text_a") + 1
    sep = config["special_ids"]["sep"]
    config["parts"][at:at] = [{"truncate": False, "token_type": 0, "position": -1, "ids": [sep], "soft": False},
                              {"truncate": True, "token_type": 0, "position": -1, "text": "text_b", "add_space": False}]
    with open(path, "w", encoding="utf-8") as fp:
        json.dump(config, fp)
    resign(export, "preprocess.json")
    return export
