"""Helpers shared by the test files: reading what a run wrote, damaging files, failing disks,
a process without Paddle. (Fixtures live in conftest.py; these are plain functions.)"""
import errno
import json
import os


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
