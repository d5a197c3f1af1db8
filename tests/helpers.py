"""Helpers shared by the test files: reading what a run wrote, damaging files, failing disks,
a process without Paddle, inference outputs, trained-model copies, Ray. (Fixtures live in conftest.py;
these are plain functions.)"""
import contextlib
import errno
import json
import os
import random
import shutil
import socket
import sys
from importlib import import_module

import pytest

from utils.errors import run_cli
from utils.rundir import checkpoints
from utils.testing import synthetic


def read_json(path):
    with open(path, encoding="utf-8") as fp:
        return json.load(fp)


def logged_losses(run_dir):
    """`{step: loss}` of every logged training loss in a run's trainer_state.json."""
    history = read_json(os.path.join(run_dir, "trainer_state.json"))["log_history"]
    return {entry["step"]: entry["loss"] for entry in history if "loss" in entry}


def flip_byte(path, where=0.5, mask=0x01):
    """Same size, one byte changed at `where` (a fraction of the file): only a content check sees it."""
    with open(path, "r+b") as fp:
        fp.seek(int(os.path.getsize(path) * where))
        byte = fp.read(1)
        fp.seek(-1, os.SEEK_CUR)
        fp.write(bytes([byte[0] ^ mask]))


def break_onnx_conversion(monkeypatch):
    """From now on every export's model.onnx comes out subtly wrong (noise on its biggest weight), as
    a converter bug would leave it: only the parity gate can tell."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from utils.export import graph

    real_convert = graph.convert_to_onnx

    def broken_convert(directory, files, opset, *output_names):
        path = real_convert(directory, files, opset, *output_names)
        model = onnx.load(path)
        biggest = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
        array = numpy_helper.to_array(biggest).copy()
        array += np.random.default_rng(0).normal(0, 0.05, array.shape).astype(array.dtype)
        biggest.CopyFrom(numpy_helper.from_array(array, biggest.name))
        onnx.save(model, path)
        return path

    monkeypatch.setattr(graph, "convert_to_onnx", broken_convert)


class FullDisk:
    """A file object whose writes fail with ENOSPC once `room` bytes were written."""

    def __init__(self, real, room):
        self.real, self.room = real, room

    def write(self, text):
        self.room -= len(text.encode("utf-8") if isinstance(text, str) else text)
        if self.room < 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.real.write(text)

    def __getattr__(self, name):
        return getattr(self.real, name)


# Python code run first in a subprocess (`python -c BLOCK_PADDLE + ...`): any import of Paddle,
# paddlenlp or paddle2onnx fails, so the rest of the code proves it needs none of them.
BLOCK_PADDLE = """
import sys
class BlockPaddle:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('paddle', 'paddlenlp', 'paddle2onnx'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, BlockPaddle())
"""


def import_script(name):
    """A top-level script as a module, by name (`infer`, ...). select.py shares its name with the
    standard library's `select`, which `import select` gives; it is loaded from its path instead."""
    if name != "select":
        return import_module(name)
    if "select_script" not in sys.modules:
        import importlib.util

        path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "select.py")
        spec = importlib.util.spec_from_file_location("select_script", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules["select_script"] = module
    return sys.modules["select_script"]


# -- inference: texts, infer.py's output ------------------------------------------------------------


def texts_and_file(tmp_path, n=100, pair=False):
    """`n` texts of varied lengths (pairs: each with the next), and a file of them in infer.py's layout."""
    lines = synthetic.make_split(random.Random(3), n // 3 + 1, min_len=1, max_len=30)[:n]
    texts = [line.split("\t")[0] for line in lines]
    if pair:
        texts = list(zip(texts, texts[1:] + texts[:1]))
    path = tmp_path / "texts.txt"
    path.write_text("".join(("\t".join(t) if pair else t) + "\n" for t in texts), encoding="utf-8")
    return texts, str(path)


def infer_jsonl(capsys, export, input_path, output_path, *flags):
    argv = ["--model_path_prefix", export, "--input_file", input_path, "--output_file", output_path, "--device", "cpu",
            *flags]
    assert run_cli(import_module("infer").main, argv) == 0, capsys.readouterr().err
    capsys.readouterr()
    with open(output_path, encoding="utf-8") as fp:
        return [json.loads(line) for line in fp]


# -- trained model directories and exports ----------------------------------------------------------


def copy_member(source, target, edit_spec=None, edit_vocab=None):
    """A copy of a trained model directory with its config or vocabulary changed, marker rewritten (so
    the checkpoint verifies and the ensemble's own checks are what is tested)."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("checkpoint-*", "export", "*.png"))
    if edit_spec:
        path = os.path.join(target, "ptuning_config.json")
        spec = read_json(path)
        edit_spec(spec)
        with open(path, "w", encoding="utf-8") as fp:
            json.dump(spec, fp)
    if edit_vocab:
        with open(os.path.join(target, "vocab.txt"), "a", encoding="utf-8") as fp:
            fp.write(edit_vocab + "\n")
    checkpoints.write_marker(target, None, 1)
    return target


def rename_label(spec):
    spec["labels"][-1] = "melon"


def tempered_export(trained, tmp_path, temperature=3.0):
    """A copy of the trained export calibrated to `temperature` (as train.py --calibrate records it:
    in manifest.json, which holds the other files' sha256 and is not itself hashed)."""
    export = str(tmp_path / "tempered-export")
    shutil.copytree(os.path.join(trained[1], "export"), export)
    with open(os.path.join(export, "manifest.json"), encoding="utf-8") as fp:
        manifest = json.load(fp)
    manifest["temperature"] = temperature
    with open(os.path.join(export, "manifest.json"), "w", encoding="utf-8") as fp:
        json.dump(manifest, fp)
    return export


# -- Ray -------------------------------------------------------------------------------------------


def require_ray():
    """Ray is part of the test environment (`make test` installs requirements-ray.txt): missing, the
    Ray tests fail. Only where requirements-ray.txt installs nothing (Python 3.9: no Ray wheels) do they skip."""
    try:
        import ray  # noqa: F401
    except ImportError:
        if sys.version_info < (3, 10):
            pytest.skip("ray 2.60 has no Python 3.9 wheels (requirements-ray.txt installs nothing here)")
        pytest.fail("Ray is not installed: `make install-ray` (or pip install -r requirements-ray.txt); "
                    "`make test` installs it")


@contextlib.contextmanager
def closed_port():
    """A loopback port where nothing listens, for as long as the block runs: bound, not listening,
    so no other process can take it meanwhile and every connection to it is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


def post_raw_or_json(client, path: str, body):
    """POST `body` as it is (bytes, for malformed JSON) or as JSON."""
    if isinstance(body, bytes):
        return client.post(path, content=body, headers={"content-type": "application/json"})
    return client.post(path, json=body)


def assert_error_names(response, status: int, field: str) -> dict:
    """The service's one error shape: the status, the field at fault, a message, no traceback."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["field"] == field and error["status"] == status and error["message"]
    assert "Traceback" not in response.text
    return error


def run_in_a_thread(fn):
    """`fn()`'s result, run in a fresh thread (nice values and background marks are per thread)."""
    import threading

    out = []
    thread = threading.Thread(target=lambda: out.append(fn()))
    thread.start()
    thread.join()
    return out[0]
