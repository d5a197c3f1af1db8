"""VisualDL logging that works with current protobuf and never stops a run.

paddlenlp's `VisualDLCallback` passes the training arguments to `LogWriter.add_hparams`; bool
values there raise `TypeError: ... Expected an int, got a boolean` with protobuf >= 4. This
callback logs bools as ints, and any other writer failure disables VisualDL with one warning.
"""
from __future__ import annotations

import logging

from paddlenlp.trainer.integrations import VisualDLCallback, rewrite_logs

logger = logging.getLogger(__name__)


def _sanitize(value):
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float, str)):
        return value
    return str(value)


class SafeVisualDLCallback(VisualDLCallback):
    def _disable(self, exc: Exception) -> None:
        logger.warning("VisualDL logging disabled after an error (training continues): %s: %s",
                       type(exc).__name__, exc)
        try:
            if self.vdl_writer is not None:
                self.vdl_writer.close()
        except Exception:  # the writer is already broken; nothing more to save
            pass
        self.vdl_writer = None
        self._LogWriter = None

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        try:
            if self.vdl_writer is None:
                self._init_summary_writer(args)
            if self.vdl_writer is not None:
                self.vdl_writer.add_text("args", args.to_json_string())
                hparams = {k: _sanitize(v) for k, v in args.to_sanitized_dict().items()}
                self.vdl_writer.add_hparams(hparams, metrics_list=[])
        except Exception as exc:  # logging must never end a training run
            self._disable(exc)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or self.vdl_writer is None:
            return
        try:
            for key, value in rewrite_logs(logs or {}).items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.vdl_writer.add_scalar(key, value, state.global_step)
            self.vdl_writer.flush()
        except Exception as exc:
            self._disable(exc)

    def on_train_end(self, args, state, control, **kwargs):
        try:
            super().on_train_end(args, state, control, **kwargs)
        except Exception as exc:
            self._disable(exc)


def take_visualdl_from_report_to(training_args) -> list:
    """Remove `visualdl` from `report_to` (the Trainer would add the broken callback) and return
    the callbacks to use instead."""
    report_to = list(training_args.report_to or [])
    if "visualdl" not in report_to and "all" not in report_to:
        return []
    training_args.report_to = [r for r in report_to if r not in ("visualdl", "all")]
    try:
        return [SafeVisualDLCallback()]
    except RuntimeError as exc:  # visualdl not installed
        logger.warning("--report_to visualdl ignored: %s", exc)
        return []
