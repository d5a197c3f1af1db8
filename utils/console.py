"""What the console shows: what helps a user, not the libraries' chatter (`--debug` shows it all).

Silenced unless `--debug`/`PTUNING_DEBUG=1`: import-time warnings ("No ccache found",
"Setuptools is replacing distutils"), glog warnings from Paddle's C++ core, paddlenlp's DEBUG
configuration dump and its model-loading/saving chatter, fontTools' INFO lines, and everything paddle2onnx, Polygraphy
and onnxruntime's quantizer print while exporting (kept and shown if that step fails).
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import warnings
from typing import Iterator

# paddlenlp INFO lines that only describe its own mechanics.
CHATTER = (
    "We are using <class", "Loading configuration file", "Loading weights file", "Loaded weights file",
    "All model checkpoint weights were used", "All the weights of", "tokenizer config file saved",
    "Special tokens file saved", "Trainer.model is not a `PretrainedModel`", "[timelog]", "Saving model checkpoint",
    "Saving optimizer files", "Configuration saved in", "Model weights saved in", "set state-dict",
    "Starting training from resume_from_checkpoint", "The global seed is set", "max_steps is given",
    "Loading model from",
)
IMPORT_WARNINGS = ("No ccache found", "Setuptools is replacing distutils",
                   "Tensor do not have 'place' interface for pir graph mode")
_state = {"setup": False, "debug": False}


class _DropChatter(logging.Filter):
    """paddlenlp's DEBUG lines (it sets its own logger to DEBUG when imported: the configuration
    dump) and its INFO chatter."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        return record.levelno >= logging.INFO and not str(record.getMessage()).lstrip().startswith(CHATTER)


def setup(debug: bool = False) -> None:
    """Install the filters (idempotent); call before paddle is imported where possible."""
    _state["debug"] = debug
    if _state["setup"] or debug:
        return
    _state["setup"] = True
    os.environ.setdefault("GLOG_minloglevel", "2")  # Paddle's C++ warnings; read when paddle loads
    for message in IMPORT_WARNINGS:
        warnings.filterwarnings("ignore", message=message + ".*")
    # A filter, not paddlenlp's set_level: that would import paddlenlp, and with it Paddle, into
    # infer.py and serve.py, which need neither (4 s and ~300 MB).
    logging.getLogger("PaddleNLP").addFilter(_DropChatter())
    # fontTools logs each table it prunes at INFO while report pages embed a CJK font subset.
    logging.getLogger("fontTools").setLevel(logging.WARNING)


def debug() -> bool:
    return _state["debug"]


@contextlib.contextmanager
def quiet_native_output(what: str) -> Iterator[None]:
    """Capture what C++ and third-party code print on stdout/stderr during `what`.

    Shown on failure (with `what`), dropped on success, passed through with `--debug`.
    """
    if _state["debug"]:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    loggers = [logging.getLogger(name) for name in ("root", "onnxruntime", "polygraphy")]
    levels = [logger.level for logger in loggers]
    with tempfile.TemporaryFile(mode="w+b") as capture:
        try:
            os.dup2(capture.fileno(), 1)
            os.dup2(capture.fileno(), 2)
            for logger in loggers:
                logger.setLevel(max(logger.level, logging.ERROR))
            yield
        except BaseException:
            _restore(saved)
            capture.seek(0)
            text = capture.read().decode("utf-8", "replace").strip()
            if text:
                sys.stderr.write(f"--- output of {what} ---\n{text[-20000:]}\n--- end ---\n")
            raise
        finally:
            _restore(saved)
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


def _restore(saved) -> None:
    if saved[0] is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(saved[0], 1)
    os.dup2(saved[1], 2)
    os.close(saved[0])
    os.close(saved[1])
    saved[0] = saved[1] = None


RESULT_LINES = (  # micro_f1: multi-label and hierarchical runs (their accuracy is exact match)
    ("eval_results.json", "dev metrics", ("eval_accuracy", "eval_micro_f1", "eval_macro_f1")),
    ("test_results.json", "test metrics", ("test_accuracy", "test_micro_f1", "test_macro_f1")),
    ("train_results.json", "training", ("train_loss",)),
)


def run_summary(output_dir: str) -> str:
    """The closing lines of a train.py run: where each result is."""
    import json

    def exists(name: str) -> bool:
        return os.path.exists(os.path.join(output_dir, name))

    lines = [f"Results in {output_dir}:"]
    if exists("pretraining.json") and exists("config.json"):
        lines.append(f"  model        {output_dir} (a PaddleNLP model directory: python train.py --model_name_or_path "
                     f"{output_dir} ...)")
    if exists("ptuning_config.json"):
        lines.append(f"  model        {output_dir} (model_state.pdparams + ptuning_config.json; "
                     "--resume_from_checkpoint takes this directory)")
    for name, what, keys in RESULT_LINES:
        if exists(name):
            with open(os.path.join(output_dir, name), encoding="utf-8") as fp:
                metrics = json.load(fp)
            shown = ", ".join(f"{k.split('_', 1)[1]} {metrics[k]:.4f}" for k in keys if k in metrics)
            lines.append(f"  {what:<12} {name}: {shown}")
    predictions = [n for n in ("test_predictions.tsv", "data_predictions.tsv") if exists(n)]
    if predictions:
        lines.append(f"  predictions  {', '.join(predictions)}")
    reports = sorted(n for n in os.listdir(output_dir) if n.endswith((".png", "_report.txt")))
    if reports:
        lines.append(f"  reports      {', '.join(reports)}")
    if exists("export"):
        export = os.path.join(output_dir, "export")
        lines.append(f"  export       {export} (python infer.py --model_path_prefix {export} --input_file TEXTS)")
    return "\n".join(lines)
