"""Evaluation reports and training curves as files: per-class metrics, confusion matrix, loss/metric plots.

Paddle-free (sklearn + matplotlib), so reports can also be drawn from saved predictions or from a
finished run's `trainer_state.json`. Figures are rendered with matplotlib's Agg canvas directly,
without pyplot's global state, so this works headless and inside other programs.
"""
from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
import warnings
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .files import atomic_path, read_json, write_json_atomic, write_text_atomic
from .fonts import cjk_font_context

logger = logging.getLogger(__name__)

MAX_TICK_LABEL_CHARS = 20
PNG_DPI = 120


def write_classification_report(output_dir: str, prefix: str, gold: Sequence[int], predicted: Sequence[int],
                                labels: Sequence[str]) -> dict:
    """Write `{prefix}_report.json/.txt` and `{prefix}_confusion_matrix.csv/.png` into `output_dir`.

    `gold`/`predicted` are label ids, `labels` the label names in id order. Returns sklearn's
    report dict (per label, `accuracy`, `macro avg`, `weighted avg`); absent classes score 0.
    """
    from sklearn.metrics import classification_report, confusion_matrix

    gold, predicted = _check_ids(gold, predicted, len(labels))
    ids = list(range(len(labels)))
    names = list(labels)
    report = classification_report(gold, predicted, labels=ids, target_names=names, output_dict=True,
                                   zero_division=0)
    text = classification_report(gold, predicted, labels=ids, target_names=names, digits=4, zero_division=0)
    matrix = confusion_matrix(gold, predicted, labels=ids)

    path = os.path.join(output_dir, prefix)
    write_json_atomic(f"{path}_report.json", report)
    write_text_atomic(f"{path}_report.txt", text)
    write_text_atomic(f"{path}_confusion_matrix.csv", confusion_matrix_csv(matrix, names))
    plot_confusion_matrix(matrix, names, f"{path}_confusion_matrix.png")
    return report


def _check_ids(gold: Sequence[int], predicted: Sequence[int], num_labels: int) -> Tuple[np.ndarray, np.ndarray]:
    gold = np.asarray(gold, dtype=np.int64).reshape(-1)
    predicted = np.asarray(predicted, dtype=np.int64).reshape(-1)
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold labels but {len(predicted)} predictions")
    if len(gold) == 0:
        raise ValueError("no examples to report on")
    for name, ids in (("gold", gold), ("predicted", predicted)):
        if ids.min() < 0 or ids.max() >= num_labels:
            raise ValueError(f"{name} label ids must be in [0, {num_labels}), got {ids.min()}..{ids.max()}")
    return gold, predicted


def confusion_matrix_csv(matrix: np.ndarray, labels: Sequence[str]) -> str:
    """CSV text: header `gold\\predicted,<labels>`, then one row of counts per gold label."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["gold\\predicted", *labels])
    for label, row in zip(labels, matrix):
        writer.writerow([label, *(int(v) for v in row)])
    return buffer.getvalue()


def plot_confusion_matrix(matrix: np.ndarray, labels: Sequence[str], png_path: str):
    """Draw the confusion matrix (gold rows, predicted columns) with label names on both axes into
    `png_path`; return the figure."""
    from sklearn.metrics import ConfusionMatrixDisplay

    n = len(labels)
    side = max(5.0, 0.55 * n + 3.0)  # about half an inch per class keeps 15 classes' counts legible
    with _plot_context(labels, png_path):  # text takes its fonts when created: the figure too
        fig = _new_figure((side + 1.0, side))
        ax = fig.subplots()
        ConfusionMatrixDisplay(matrix, display_labels=[_shorten(x) for x in labels]).plot(
            ax=ax, cmap="Blues", values_format="d", xticks_rotation=45, colorbar=True)
        for tick in ax.get_xticklabels():
            tick.set_horizontalalignment("right")
            tick.set_rotation_mode("anchor")
        ax.set_xlabel("predicted")
        ax.set_ylabel("gold")
        _save_png(fig, png_path)
    return fig


def curve_series(log_history: Sequence[dict],
                 metric: str = "eval_accuracy") -> Dict[str, Tuple[List[int], List[float]]]:
    """`{name: (steps, values)}` for `loss`, `eval_loss`, `metric` and `eval_macro_f1`, where logged.

    Training entries carry `loss`; evaluation entries `eval_loss` and the `eval_*` metrics; the
    closing summary entry (`train_loss`) is not a curve point.
    """
    series: Dict[str, Tuple[List[int], List[float]]] = {}
    names = ["loss", "eval_loss", metric] + (["eval_macro_f1"] if metric != "eval_macro_f1" else [])
    for name in dict.fromkeys(names):
        points = [(int(entry["step"]), float(entry[name])) for entry in log_history
                  if name in entry and "step" in entry and entry[name] is not None]
        if points:
            steps, values = zip(*points)
            series[name] = (list(steps), list(values))
    return series


def plot_training_curves(trainer_state_path: str, png_path: str, metric: str = "eval_accuracy") -> Optional[str]:
    """Plot losses (top) and evaluation metrics (bottom) vs step from paddlenlp's `trainer_state.json`.

    The bottom panel shows `metric` (its best value marked) and `eval_macro_f1` when logged.
    Returns `png_path`, or None without writing anything when the log has nothing to plot.
    """
    state = read_json(trainer_state_path, "trainer state")
    series = curve_series(state.get("log_history") or [], metric)
    losses = [name for name in ("loss", "eval_loss") if name in series]
    metrics = [name for name in series if name not in ("loss", "eval_loss")]
    panels = [panel for panel in (losses, metrics) if panel]
    if not panels:
        return None

    fig = _new_figure((8.0, 3.2 * len(panels)))
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    titles = {"loss": "training loss", "eval_loss": "dev loss"}
    for ax, names in zip(axes, panels):
        for name in names:
            steps, values = series[name]
            ax.plot(steps, values, marker="o" if name != "loss" else None, markersize=3,
                    label=titles.get(name, name))
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best")
    if metrics:
        ax = axes[-1]
        steps, values = series[metrics[0]]
        best = int(np.argmin(values)) if "loss" in metrics[0] else int(np.argmax(values))
        ax.plot([steps[best]], [values[best]], marker="*", markersize=12, color="gold", markeredgecolor="black",
                linestyle="none", zorder=3)
        ax.annotate(f"best {values[best]:.4f} @ {steps[best]}", (steps[best], values[best]),
                    textcoords="offset points", xytext=(0, -14), ha="center", fontsize=8)
        ax.set_ylabel("dev metric")
    if losses:
        axes[0].set_ylabel("loss")
    axes[-1].set_xlabel("step")
    with _plot_context():
        _save_png(fig, png_path)
    return png_path


def _new_figure(size: Tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig, png_path: str) -> None:
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png", dpi=PNG_DPI)


def _shorten(label: str) -> str:
    # Tick labels only; the JSON/CSV/text reports keep the full names.
    return label if len(label) <= MAX_TICK_LABEL_CHARS else label[:MAX_TICK_LABEL_CHARS - 1] + "…"


@contextlib.contextmanager
def _plot_context(labels: Sequence[str] = (), png_path: str = "") -> Iterator[None]:
    """CJK-capable fonts (utils.fonts); without any, one warning instead of one per missing glyph."""
    with cjk_font_context() as families, warnings.catch_warnings():
        if not families:
            if any(ord(char) >= 0x2E80 for label in labels for char in label):
                logger.warning("no CJK font: label names show as boxes in %s (the CSV and JSON reports have "
                               "them); install pylopdf-fonts-zh-cn (requirements.txt) or e.g. fonts-noto-cjk",
                               png_path)
            warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from", category=UserWarning)
        yield
