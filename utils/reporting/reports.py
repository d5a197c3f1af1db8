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

from ..files import atomic_path, read_json, write_json_atomic, write_text_atomic
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


def write_multilabel_report(output_dir: str, prefix: str, gold: np.ndarray, predicted: np.ndarray,
                            labels: Sequence[str], levels: Optional[Sequence[int]] = None) -> dict:
    """The multi-label (and hierarchical) counterpart of `write_classification_report`: one row per
    label everywhere, so the files stay readable at hundreds of labels (no n x n matrix).

    `{prefix}_report.json/.txt`        sklearn's per-label precision/recall/F1/support with micro, macro,
                                       weighted and samples averages, exact-match accuracy, hamming loss,
                                       and per level for hierarchical labels (`levels`: each label's depth)
    `{prefix}_confusion_matrix.csv`    per label: support, predicted, TP, FP, FN, TN, precision, recall, F1
                                       (sklearn's multilabel_confusion_matrix, one 2 x 2 matrix per label)
    `{prefix}_top_confusions.csv`      missed gold label -> wrongly predicted label, in the same text, by count
    `{prefix}_confusion_matrix.png`    fixed size: the labels with the lowest F1, and the top confusions
    """
    from sklearn.metrics import classification_report, multilabel_confusion_matrix

    from ..task.metrics import multilabel_metrics

    gold = np.asarray(gold, dtype=bool)
    predicted = np.asarray(predicted, dtype=bool)
    if gold.shape != predicted.shape or gold.ndim != 2 or gold.shape[1] != len(labels):
        raise ValueError(f"gold {gold.shape} and predicted {predicted.shape} must both be [texts, {len(labels)}]")
    if not len(gold):
        raise ValueError("no examples to report on")
    names = list(labels)
    report = classification_report(gold, predicted, target_names=names, output_dict=True, zero_division=0)
    text = classification_report(gold, predicted, target_names=names, digits=4, zero_division=0)
    overall = multilabel_metrics(gold, predicted, levels)
    report["exact_match_accuracy"] = overall["accuracy"]
    report["hamming_loss"] = overall["hamming_loss"]
    text += f"\nexact-match accuracy {overall['accuracy']:.4f}, hamming loss {overall['hamming_loss']:.4f}\n"
    if levels is not None:
        report["levels"] = {}
        for level in sorted(set(levels)):
            entry = {k: overall[f"level_{level}_{k}"] for k in ("micro_f1", "macro_f1")}
            entry["labels"] = int(sum(1 for d in levels if d == level))
            report["levels"][str(level)] = entry
            text += (f"level {level} ({entry['labels']} labels): micro-F1 {entry['micro_f1']:.4f}, "
                     f"macro-F1 {entry['macro_f1']:.4f}\n")
    matrices = multilabel_confusion_matrix(gold, predicted)  # [labels, 2, 2]: [[TN, FP], [FN, TP]]
    path = os.path.join(output_dir, prefix)
    write_json_atomic(f"{path}_report.json", report)
    write_text_atomic(f"{path}_report.txt", text)
    write_text_atomic(f"{path}_confusion_matrix.csv", label_confusion_csv(matrices, names))
    pairs = label_set_confusions(gold, predicted)
    write_text_atomic(f"{path}_top_confusions.csv", label_set_confusions_csv(pairs, gold.sum(axis=0), names))
    png = f"{path}_confusion_matrix.png"
    try:
        plot_label_set_summary(matrices, pairs, gold.sum(axis=0), names, png)
    except Exception as exc:  # as for the multi-class figure: never end a run over a picture
        logger.warning("could not draw %s (%s: %s); the CSV, JSON and TXT reports are complete",
                       png, type(exc).__name__, exc)
    return report


def _prf(tp, fp, fn) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    tp, fp, fn = (np.asarray(x, dtype=np.float64) for x in (tp, fp, fn))
    precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=tp + fp > 0)
    recall = np.divide(tp, tp + fn, out=np.zeros_like(tp), where=tp + fn > 0)
    f1 = np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros_like(tp), where=2 * tp + fp + fn > 0)
    return precision, recall, f1


def label_confusion_csv(matrices: np.ndarray, labels: Sequence[str]) -> str:
    """CSV text, one row per label: `label,support,predicted,tp,fp,fn,tn,precision,recall,f1`."""
    tn, fp, fn, tp = (matrices[:, i, j] for i, j in ((0, 0), (0, 1), (1, 0), (1, 1)))
    precision, recall, f1 = _prf(tp, fp, fn)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["label", "support", "predicted", "tp", "fp", "fn", "tn", "precision", "recall", "f1"])
    for i, label in enumerate(labels):
        writer.writerow([label, int(tp[i] + fn[i]), int(tp[i] + fp[i]), int(tp[i]), int(fp[i]), int(fn[i]),
                         int(tn[i]), f"{precision[i]:.4f}", f"{recall[i]:.4f}", f"{f1[i]:.4f}"])
    return buffer.getvalue()


def label_set_confusions(gold: np.ndarray, predicted: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(missed ids, wrongly predicted ids, counts)`: how often a text's gold label was missed while
    another label was predicted that it does not have, most frequent first (ties: ids). Computed
    as a labels x labels product of two sparse indicator matrices; only non-zero pairs are kept."""
    missed = (gold & ~predicted).astype(np.int64)
    wrong = (predicted & ~gold).astype(np.int64)
    counts = missed.T @ wrong  # [missed label, wrong label]
    rows, cols = np.nonzero(counts)
    values = counts[rows, cols]
    order = np.lexsort((cols, rows, -values))
    return rows[order], cols[order], values[order]


def label_set_confusions_csv(pairs, support: np.ndarray, labels: Sequence[str]) -> str:
    """CSV text: `missed,predicted_instead,count,share_of_gold`, most frequent first."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["missed", "predicted_instead", "count", "share_of_gold"])
    for missed, wrong, count in zip(*pairs):
        writer.writerow([labels[missed], labels[wrong], int(count), f"{count / max(support[missed], 1):.4f}"])
    return buffer.getvalue()


def plot_label_set_summary(matrices: np.ndarray, pairs, support: np.ndarray, labels: Sequence[str],
                           png_path: str):
    """A figure of fixed size whatever the label count: per-label F1 (every label up to
    ANNOTATED_MAX_LABELS, else the TOP_K lowest) and the TOP_K most frequent confusions."""
    tn, fp, fn, tp = (matrices[:, i, j] for i, j in ((0, 0), (0, 1), (1, 0), (1, 1)))
    _, recall, f1 = _prf(tp, fp, fn)
    n = len(labels)
    with _plot_context(labels, png_path):
        fig = _new_figure(MANY_LABELS_FIGSIZE)
        micro = 2 * tp.sum() / max(2 * tp.sum() + fp.sum() + fn.sum(), 1)
        fig.suptitle(f"{n} labels, {int(support.sum())} gold labels, micro-F1 {micro:.4f}, macro-F1 {f1.mean():.4f}")
        grid = fig.add_gridspec(1, 2)
        present = np.arange(n)
        shown = present if n <= ANNOTATED_MAX_LABELS else present[np.lexsort((-support, f1))][:TOP_K]
        if n > ANNOTATED_MAX_LABELS:
            shown = shown[np.argsort(f1[shown], kind="stable")]
        _bars(fig.add_subplot(grid[0, 0]), [_shorten(labels[i]) for i in shown], f1[shown],
              [f"{f1[i]:.2f} (n={int(support[i])}, recall {recall[i]:.2f})" for i in shown],
              "F1 per label" if n <= ANNOTATED_MAX_LABELS else f"{len(shown)} labels with the lowest F1",
              "F1", "no labels", limit=1.0)
        missed, wrong, counts = (x[:TOP_K] for x in pairs)
        _bars(fig.add_subplot(grid[0, 1]), [f"{_shorten(labels[m])} → {_shorten(labels[w])}"
                                            for m, w in zip(missed, wrong)], counts,
              [f"{c} ({c / max(support[m], 1):.0%} of gold)" for m, c in zip(missed, counts)],
              f"top {len(counts)} confusions (missed → predicted instead)", "texts", "no confusions")
        _save_png(fig, png_path)
    return fig


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
    """`{name: (steps, values)}` for `loss`, `eval_loss`, `metric`, `eval_macro_f1` and `eval_micro_f1`,
    where logged.

    Training entries carry `loss`; evaluation entries `eval_loss` and the `eval_*` metrics; the
    closing summary entry (`train_loss`) is not a curve point.
    """
    series: Dict[str, Tuple[List[int], List[float]]] = {}
    names = ["loss", "eval_loss", metric, "eval_macro_f1", "eval_micro_f1"]  # micro-F1: label-set runs
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
    """CJK-capable fonts (utils.reporting.fonts); without any, one warning instead of one per missing glyph."""
    with cjk_font_context() as families, warnings.catch_warnings():
        if not families:
            if any(ord(char) >= 0x2E80 for label in labels for char in label):
                logger.warning("no CJK font: label names show as boxes in %s (the CSV and JSON reports have "
                               "them); install pylopdf-fonts-zh-cn (requirements.txt) or e.g. fonts-noto-cjk",
                               png_path)
            warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from", category=UserWarning)
        yield
