"""--report_to visualdl works with current protobuf, and a failing writer never stops training."""
import glob
import os

import train
from conftest import FAST
from utils.errors import run_cli
from utils.testing.synthetic import PROMPT


def test_visualdl_logging_writes_records(tiny_model_dir, keyword_data, tmp_path):
    out = tmp_path / "out"
    argv = ["--model_name_or_path", tiny_model_dir, "--data_dir", keyword_data, "--output_dir", str(out),
            "--prompt", PROMPT, "--do_train", "--max_steps", "4", "--logging_steps", "1", "--report_to", "visualdl",
            *FAST]
    assert run_cli(train.main, argv) == 0
    records = glob.glob(str(out / "runs" / "**" / "vdlrecords*"), recursive=True)
    assert records and max(os.path.getsize(r) for r in records) > 0


def test_broken_writer_is_switched_off(caplog):
    from types import SimpleNamespace

    from utils.training.visualdl import SafeVisualDLCallback

    class BrokenWriter:
        def add_scalar(self, *args, **kwargs):
            raise TypeError("Expected an int, got a boolean")

        def flush(self):
            pass

        def close(self):
            pass

    callback = SafeVisualDLCallback(vdl_writer=BrokenWriter())
    state = SimpleNamespace(is_world_process_zero=True, global_step=1)
    callback.on_log(None, state, None, logs={"loss": 1.0})  # must not raise
    assert callback.vdl_writer is None
    assert "VisualDL logging disabled" in caplog.text
    callback.on_log(None, state, None, logs={"loss": 0.5})  # stays off, still no error
