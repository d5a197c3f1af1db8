"""Evaluation reports and training curves as files: per-class metrics, confusion matrix, loss/metric plots.

Paddle-free (sklearn + matplotlib), so reports can also be drawn from saved predictions or from a
finished run's `trainer_state.json`. Figures are rendered with matplotlib's Agg canvas directly,
without pyplot's global state, so this works headless and inside other programs. A figure that
cannot be drawn costs one warning, never the run: the numbers are in the CSV/JSON/TXT files.
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
# Up to this many classes the matrix shows a count in every cell (30 classes: 2.3k px square).
ANNOTATED_MAX_LABELS = 30
# Beyond that, label names fit the heatmap's ticks up to this many classes; then label ids.
NAMED_TICKS_MAX_LABELS = 60
TOP_K = 25  # bars in the many-class figure's "top confusions" and "lowest recall" panels
MANY_LABELS_FIGSIZE = (18.0, 10.0)  # inches: 2160 x 1200 px at PNG_DPI, whatever the class count


def write_classification_report(output_dir: str, prefix: str, gold: Sequence[int], predicted: Sequence[int],
                                labels: Sequence[str]) -> dict:
    """Write `{prefix}_report.json/.txt`, `{prefix}_confusion_matrix.csv/.png` and
    `{prefix}_top_confusions.csv` into `output_dir`.

    `gold`/`predicted` are label ids, `labels` the label names in id order. Returns sklearn's
    report dict (per label, `accuracy`, `macro avg`, `weighted avg`); absent classes score 0.
    The PNG is drawn last; if drawing fails, a warning is logged and the other files stand.
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
    write_text_atomic(f"{path}_top_confusions.csv", top_confusions_csv(matrix, names))
    png = f"{path}_confusion_matrix.png"
    try:
        plot_confusion_matrix(matrix, names, png)
    except Exception as exc:  # MemoryError included: a picture is never worth the run
        logger.warning("could not draw %s (%s: %s); the CSV, JSON and TXT reports are complete",
                       png, type(exc).__name__, exc)
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


def top_confusions(matrix: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Off-diagonal cells with a count, most frequent first (ties: gold id, then predicted id).

    Returns `(gold ids, predicted ids, counts, share of the gold class's examples)`.
    """
    gold, predicted = np.nonzero(matrix)
    off = gold != predicted
    gold, predicted = gold[off], predicted[off]
    counts = matrix[gold, predicted]
    order = np.lexsort((predicted, gold, -counts))
    gold, predicted, counts = gold[order], predicted[order], counts[order]
    return gold, predicted, counts, counts / matrix.sum(axis=1)[gold]


def top_confusions_csv(matrix: np.ndarray, labels: Sequence[str]) -> str:
    """CSV text: `gold,predicted,count,share_of_gold`, one row per confused pair, most frequent first."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["gold", "predicted", "count", "share_of_gold"])
    for gold, predicted, count, share in zip(*top_confusions(matrix)):
        writer.writerow([labels[gold], labels[predicted], int(count), f"{share:.4f}"])
    return buffer.getvalue()


def plot_confusion_matrix(matrix: np.ndarray, labels: Sequence[str], png_path: str):
    """Draw the confusion matrix (gold rows, predicted columns) into `png_path`; return the figure.

    Up to ANNOTATED_MAX_LABELS classes: the matrix with every count and the label names. Beyond,
    counts per cell are unreadable and the figure would grow with classes² (119 classes took
    1.9 GB and 20 s; 500 were OOM-killed), so a figure of fixed size shows instead: the row-normalised
    matrix as a heatmap (where errors concentrate), the TOP_K most frequent gold → predicted
    confusions with names, counts and share of the gold class (what to fix first), and the TOP_K
    classes with the lowest recall. `{prefix}_top_confusions.csv` lists every confused pair.
    """
    with _plot_context(labels, png_path):
        if len(labels) <= ANNOTATED_MAX_LABELS:
            fig = _annotated_matrix(matrix, labels)
        else:
            fig = _many_labels_figure(matrix, labels)
        _save_png(fig, png_path)
    return fig


def _annotated_matrix(matrix: np.ndarray, labels: Sequence[str]):
    from sklearn.metrics import ConfusionMatrixDisplay

    side = max(5.0, 0.55 * len(labels) + 3.0)  # about half an inch per class keeps the counts legible
    fig = _new_figure((side + 1.0, side))
    ax = fig.subplots()
    ConfusionMatrixDisplay(matrix, display_labels=[_shorten(x) for x in labels]).plot(
        ax=ax, cmap="Blues", values_format="d", xticks_rotation=45, colorbar=True)
    for tick in ax.get_xticklabels():
        tick.set_horizontalalignment("right")
        tick.set_rotation_mode("anchor")
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    return fig


def _many_labels_figure(matrix: np.ndarray, labels: Sequence[str]):
    from matplotlib.colors import PowerNorm

    n = len(labels)
    support = matrix.sum(axis=1)
    correct = np.diag(matrix)
    recall = np.divide(correct, support, out=np.zeros(n), where=support > 0)
    fig = _new_figure(MANY_LABELS_FIGSIZE)
    fig.suptitle(f"{n} classes, {int(support.sum())} examples, accuracy {correct.sum() / support.sum():.4f}")
    grid = fig.add_gridspec(2, 2, width_ratios=(1.1, 1.0))

    ax = fig.add_subplot(grid[:, 0])
    shares = matrix / np.maximum(support, 1)[:, None]
    # Square-root colour scale: small error shares stay visible, also where cells are below a pixel
    # and the resampling averages them with their neighbours.
    image = ax.imshow(shares, cmap="Blues", norm=PowerNorm(0.5, vmin=0.0, vmax=1.0), interpolation="antialiased")
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of the gold class's examples")
    if n <= NAMED_TICKS_MAX_LABELS:
        names = [_shorten(x) for x in labels]
        ax.set_xticks(range(n), names, rotation=90, fontsize=6)
        ax.set_yticks(range(n), names, fontsize=6)
        ax.set_xlabel("predicted")
        ax.set_ylabel("gold")
    else:
        ax.set_xlabel("predicted (label id = position in the sorted label names; names in the CSV files)")
        ax.set_ylabel("gold (label id)")
    ax.set_title("confusion matrix, rows normalised")

    gold, predicted, counts, share = (x[:TOP_K] for x in top_confusions(matrix))
    pairs = [f"{_shorten(labels[g])} → {_shorten(labels[p])}" for g, p in zip(gold, predicted)]
    _bars(fig.add_subplot(grid[0, 1]), pairs, counts, [f"{c} ({s:.0%} of gold)" for c, s in zip(counts, share)],
          f"top {len(counts)} confusions (gold → predicted)", "examples", "no confusions")

    present = np.flatnonzero(support > 0)
    worst = present[np.lexsort((-support[present], recall[present]))][:TOP_K]
    _bars(fig.add_subplot(grid[1, 1]), [_shorten(labels[i]) for i in worst], recall[worst],
          [f"{recall[i]:.2f} (n={support[i]})" for i in worst], f"{len(worst)} classes with the lowest recall",
          "recall", "no gold examples", limit=1.0)
    return fig


def _bars(ax, names: List[str], values, notes: List[str], title: str, xlabel: str, empty: str,
          limit: Optional[float] = None) -> None:
    """Horizontal bars, first item on top, each with a note at its end."""
    ax.set_title(title)
    if not names:
        ax.text(0.5, 0.5, empty, ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    rows = np.arange(len(names))
    ax.barh(rows, values, color="tab:blue")
    ax.set_yticks(rows, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, (limit if limit is not None else float(max(values))) * 1.3)  # room for the notes
    if limit is not None:
        ax.set_xticks(np.linspace(0.0, limit, 6))
    for row, value, note in zip(rows, values, notes):
        ax.text(value, row, " " + note, va="center", fontsize=7)
    ax.set_xlabel(xlabel)


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
    Returns `png_path`, or None without writing anything when the log has nothing to plot (or,
    with a warning, when drawing fails).
    """
    state = read_json(trainer_state_path, "trainer state")
    series = curve_series(state.get("log_history") or [], metric)
    if not series:
        return None
    try:
        _save_png(_curves_figure(series), png_path)
    except Exception as exc:  # as for the confusion matrix: never end a run over a picture
        logger.warning("could not draw %s (%s: %s)", png_path, type(exc).__name__, exc)
        return None
    return png_path


def _curves_figure(series: Dict[str, Tuple[List[int], List[float]]]):
    losses = [name for name in ("loss", "eval_loss") if name in series]
    metrics = [name for name in series if name not in ("loss", "eval_loss")]
    panels = [panel for panel in (losses, metrics) if panel]
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
    return fig


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
