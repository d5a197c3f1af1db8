"""utils.reporting.reports: per-class report and confusion matrix against a hand computation; training curves."""
import csv
import json
import os
import subprocess
import sys
import warnings

import matplotlib.image
import numpy as np
import pytest

from conftest import ROOT
from utils.reporting import fonts
from utils.reporting import reports
from utils.task.metrics import classification_metrics
from utils.reporting.reports import curve_series, plot_confusion_matrix, plot_training_curves, write_classification_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LABELS = ["apple", "banana", "grape", "kiwi"]  # kiwi: in label.txt but never gold nor predicted
GOLD = [0, 0, 0, 1, 1, 2]
PRED = [0, 0, 1, 1, 2, 2]


def assert_png(path):
    with open(path, "rb") as fp:
        assert fp.read(8) == PNG_MAGIC
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image.std() > 0  # something was drawn


def test_report_matches_hand_computation(tmp_path):
    report = write_classification_report(str(tmp_path), "test", GOLD, PRED, LABELS)
    # apple: tp 2, fp 0, fn 1; banana: tp 1, fp 1, fn 1; grape: tp 1, fp 1, fn 0; kiwi: absent.
    expected = {"apple": (1.0, 2 / 3, 0.8, 3), "banana": (0.5, 0.5, 0.5, 2), "grape": (0.5, 1.0, 2 / 3, 1),
                "kiwi": (0.0, 0.0, 0.0, 0)}
    for label, (precision, recall, f1, support) in expected.items():
        assert report[label]["precision"] == pytest.approx(precision)
        assert report[label]["recall"] == pytest.approx(recall)
        assert report[label]["f1-score"] == pytest.approx(f1)
        assert report[label]["support"] == support
    assert report["accuracy"] == pytest.approx(4 / 6)
    macro_f1 = (0.8 + 0.5 + 2 / 3 + 0.0) / 4  # the absent class counts, as in training's macro-F1
    assert report["macro avg"]["f1-score"] == pytest.approx(macro_f1)
    assert classification_metrics(PRED, GOLD, len(LABELS))["macro_f1"] == pytest.approx(macro_f1)

    with open(tmp_path / "test_report.json", encoding="utf-8") as fp:
        assert json.load(fp) == report
    text = (tmp_path / "test_report.txt").read_text(encoding="utf-8")
    assert all(label in text for label in LABELS) and "0.8000" in text and "macro avg" in text


def test_confusion_matrix_csv(tmp_path):
    write_classification_report(str(tmp_path), "dev", GOLD, PRED, LABELS)
    with open(tmp_path / "dev_confusion_matrix.csv", encoding="utf-8", newline="") as fp:
        rows = list(csv.reader(fp))
    assert rows[0] == ["gold\\predicted"] + LABELS
    assert [r[0] for r in rows[1:]] == LABELS
    matrix = np.array([[int(v) for v in r[1:]] for r in rows[1:]])
    assert matrix.tolist() == [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    assert matrix.sum(axis=1).tolist() == [GOLD.count(i) for i in range(len(LABELS))]  # rows: gold counts
    assert matrix.sum(axis=0).tolist() == [PRED.count(i) for i in range(len(LABELS))]  # columns: predictions
    assert_png(tmp_path / "dev_confusion_matrix.png")


def test_fifteen_cjk_labels_plot_without_warnings(tmp_path):
    labels = [f"类别{i}_这是一个很长的中文标签名称用于测试" for i in range(15)]
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 15, 200)
    predicted = np.where(rng.random(200) < 0.7, gold, rng.integers(0, 15, 200))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = write_classification_report(str(tmp_path), "test", gold, predicted, labels)
    assert not [w for w in caught if "Glyph" in str(w.message)]
    assert report["accuracy"] == pytest.approx(np.mean(gold == predicted))
    with open(tmp_path / "test_confusion_matrix.csv", encoding="utf-8", newline="") as fp:
        rows = list(csv.reader(fp))
    assert [r[0] for r in rows[1:]] == labels  # full names in the CSV; only the plot's ticks are shortened
    assert sum(int(v) for r in rows[1:] for v in r[1:]) == 200
    assert_png(tmp_path / "test_confusion_matrix.png")


def many_class_predictions(num_labels, seed=0):
    """Zipf-like class sizes, 60% correct, most errors towards three fixed neighbours per class."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, num_labels + 1) ** 0.7
    gold = rng.choice(num_labels, size=20 * num_labels, p=weights / weights.sum())
    neighbours = rng.integers(0, num_labels, size=(num_labels, 3))
    draw = rng.random(len(gold))
    predicted = np.where(draw < 0.6, gold, np.where(draw < 0.88, neighbours[gold, rng.integers(0, 3, len(gold))],
                                                    rng.integers(0, num_labels, len(gold))))
    return gold, predicted


def test_thousand_labels_write_every_file_and_a_bounded_figure(tmp_path):
    labels = [f"类别{i:04d}_名称" for i in range(1000)]
    gold, predicted = many_class_predictions(len(labels))
    report = write_classification_report(str(tmp_path), "test", gold, predicted, labels)
    assert report["accuracy"] == pytest.approx(np.mean(gold == predicted))
    assert sorted(os.listdir(tmp_path)) == ["test_confusion_matrix.csv", "test_confusion_matrix.png",
                                            "test_report.json", "test_report.txt", "test_top_confusions.csv"]
    with open(tmp_path / "test_confusion_matrix.csv", encoding="utf-8", newline="") as fp:
        rows = list(csv.reader(fp))
    assert len(rows) == 1001 and all(len(r) == 1001 for r in rows)  # the CSV keeps the whole matrix
    assert sum(int(v) for r in rows[1:] for v in r[1:]) == len(gold)
    with open(tmp_path / "test_top_confusions.csv", encoding="utf-8", newline="") as fp:
        top = list(csv.DictReader(fp))
    assert sum(int(r["count"]) for r in top) == int(np.sum(gold != predicted))
    image = matplotlib.image.imread(str(tmp_path / "test_confusion_matrix.png"))
    width, height = (round(x * reports.PNG_DPI) for x in reports.MANY_LABELS_FIGSIZE)
    assert image.shape[:2] == (height, width) and max(width, height) <= 2200  # not labels² in size
    assert image.std() > 0


def test_top_confusions_csv_on_a_constructed_case(tmp_path):
    labels = ["体育", "财经", "娱乐", "科技"]
    pairs = [(0, 0)] * 5 + [(0, 1)] * 3 + [(0, 2)] * 2 + [(1, 0)] * 3 + [(1, 1)] + [(2, 3)] * 4 + [(3, 3)] * 2
    gold, predicted = zip(*pairs)
    write_classification_report(str(tmp_path), "dev", gold, predicted, labels)
    with open(tmp_path / "dev_top_confusions.csv", encoding="utf-8", newline="") as fp:
        rows = list(csv.reader(fp))
    # By count; the tie at 3 by gold id. Shares of the gold class: 体育 10, 财经 4, 娱乐 4 examples.
    assert rows == [["gold", "predicted", "count", "share_of_gold"],
                    ["娱乐", "科技", "4", "1.0000"],
                    ["体育", "财经", "3", "0.3000"],
                    ["财经", "体育", "3", "0.7500"],
                    ["体育", "娱乐", "2", "0.2000"]]


@pytest.mark.parametrize("num_labels", [4, 40])  # the annotated matrix, and the many-class figure
def test_chinese_labels_render_with_a_font_that_has_their_glyphs(tmp_path, num_labels):
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font
    from matplotlib.text import Text

    names = ["体育", "财经", "娱乐", "鑫龘"]
    labels = [names[i % 4] + (str(i) if num_labels > 4 else "") for i in range(num_labels)]
    gold, predicted = many_class_predictions(num_labels, seed=1)
    from sklearn.metrics import confusion_matrix

    matrix = confusion_matrix(gold, predicted, labels=list(range(num_labels)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig = plot_confusion_matrix(matrix, labels, str(tmp_path / "cm.png"))
    assert not [str(w.message) for w in caught if "Glyph" in str(w.message)]
    texts = [t for t in fig.findobj(Text) if any(ord(c) >= 0x2E80 for c in t.get_text())]
    ticks = [t.get_text() for ax in fig.axes for t in ax.get_xticklabels() + ax.get_yticklabels()]
    assert any("龘" in t for t in ticks)  # the names really are on the axes
    for text in texts:  # the font each text is drawn with (first of its fallback chain) has every glyph
        path = font_manager.findfont(text.get_fontproperties(), fallback_to_default=False)
        charmap = FT2Font(path).get_charmap()
        missing = [c for c in text.get_text() if not c.isspace() and ord(c) not in charmap]
        assert not missing, (text.get_text(), path)


def test_installed_cjk_fonts_come_before_the_bundled_one(monkeypatch):
    family, path = fonts.bundled_cjk_font()
    assert os.path.isfile(path) and family == "Noto Sans SC"
    # DejaVu Sans stands in for an installed system CJK font (it is installed wherever matplotlib is).
    monkeypatch.setattr(fonts, "CJK_FONTS", ("DejaVu Sans",) + fonts.CJK_FONTS)
    families = fonts.cjk_font_families()
    assert families[0] == "DejaVu Sans" and families[-1] == family


def test_a_failing_plot_costs_a_warning_not_the_run(tmp_path, monkeypatch, caplog):
    def no_memory(*args, **kwargs):
        raise MemoryError("simulated")

    monkeypatch.setattr(reports, "_annotated_matrix", no_memory)
    monkeypatch.setattr(reports, "_curves_figure", no_memory)
    with caplog.at_level("WARNING", logger="utils.reporting.reports"):
        report = write_classification_report(str(tmp_path), "test", GOLD, PRED, LABELS)
        state = write_state(tmp_path / "trainer_state.json", LOG_HISTORY)
        assert plot_training_curves(state, str(tmp_path / "curves.png")) is None
    assert report["accuracy"] == pytest.approx(4 / 6)
    assert sorted(os.listdir(tmp_path)) == ["test_confusion_matrix.csv", "test_report.json", "test_report.txt",
                                            "test_top_confusions.csv", "trainer_state.json"]
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 2 and all("could not draw" in m and "MemoryError" in m for m in warned)


@pytest.mark.parametrize("gold, predicted", [([0, 1], [0]), ([], []), ([0, 4], [0, 1]), ([0, 1], [-1, 1])])
def test_bad_ids_are_rejected(tmp_path, gold, predicted):
    with pytest.raises(ValueError):
        write_classification_report(str(tmp_path), "test", gold, predicted, LABELS)
    assert not os.listdir(tmp_path)


LOG_HISTORY = [
    {"loss": 1.10, "learning_rate": 1e-3, "global_step": 5, "step": 5},
    {"loss": 0.90, "learning_rate": 8e-4, "global_step": 10, "step": 10},
    {"eval_loss": 0.95, "eval_accuracy": 0.50, "eval_macro_f1": 0.40, "eval_runtime": 0.1, "step": 10},
    {"loss": 0.60, "learning_rate": 5e-4, "global_step": 15, "step": 15},
    {"loss": 0.30, "learning_rate": 2e-4, "global_step": 20, "step": 20},
    {"eval_loss": 0.40, "eval_accuracy": 0.875, "eval_macro_f1": 0.86, "eval_runtime": 0.1, "step": 20},
    {"train_loss": 0.725, "train_runtime": 3.0, "step": 20},
]


def write_state(path, log_history):
    path.write_text(json.dumps({"global_step": 20, "log_history": log_history}), encoding="utf-8")
    return str(path)


def test_curve_series_from_trainer_state():
    series = curve_series(LOG_HISTORY)
    assert series == {"loss": ([5, 10, 15, 20], [1.10, 0.90, 0.60, 0.30]),
                      "eval_loss": ([10, 20], [0.95, 0.40]),
                      "eval_accuracy": ([10, 20], [0.50, 0.875]),
                      "eval_macro_f1": ([10, 20], [0.40, 0.86])}
    assert list(curve_series(LOG_HISTORY, metric="eval_macro_f1")) == ["loss", "eval_loss", "eval_macro_f1"]


def test_plot_training_curves(tmp_path):
    state = write_state(tmp_path / "trainer_state.json", LOG_HISTORY)
    png = str(tmp_path / "plots" / "curves.png")
    assert plot_training_curves(state, png) == png
    assert_png(png)
    both = matplotlib.image.imread(png)

    only_losses = write_state(tmp_path / "losses.json", [e for e in LOG_HISTORY if "eval_loss" not in e])
    assert plot_training_curves(only_losses, str(tmp_path / "losses.png")) == str(tmp_path / "losses.png")
    assert matplotlib.image.imread(str(tmp_path / "losses.png")).shape[0] < both.shape[0]  # one panel, not two


@pytest.mark.parametrize("log_history", [[], [{"train_loss": 0.7, "train_runtime": 1.0, "step": 0}]])
def test_nothing_to_plot_writes_nothing(tmp_path, log_history):
    state = write_state(tmp_path / "trainer_state.json", log_history)
    assert plot_training_curves(state, str(tmp_path / "curves.png")) is None
    assert sorted(os.listdir(tmp_path)) == ["trainer_state.json"]


def test_reports_do_not_import_paddle():
    code = "import sys, utils.reporting.reports, utils.training.multirun; sys.exit(int('paddle' in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_multi_label_report_against_a_hand_computation(tmp_path):
    from utils.reporting.reports import write_multilabel_report

    labels = ["A", "A##x", "B"]
    gold = np.array([[1, 1, 0], [0, 0, 1], [1, 0, 1], [1, 1, 0]], dtype=bool)
    predicted = np.array([[1, 0, 1], [0, 0, 1], [1, 0, 1], [1, 1, 0]], dtype=bool)
    report = write_multilabel_report(str(tmp_path), "eval", gold, predicted, labels, levels=[1, 2, 1])
    assert report["A##x"]["recall"] == 0.5 and report["B"]["precision"] == pytest.approx(2 / 3)
    assert report["micro avg"]["f1-score"] == pytest.approx(2 * 6 / (2 * 6 + 1 + 1))
    assert report["exact_match_accuracy"] == 0.75 and report["hamming_loss"] == pytest.approx(2 / 12)
    assert report["levels"]["2"] == {"micro_f1": pytest.approx(2 / 3), "macro_f1": pytest.approx(2 / 3), "labels": 1}
    with open(tmp_path / "eval_confusion_matrix.csv", encoding="utf-8", newline="") as fp:
        rows = {r["label"]: r for r in csv.DictReader(fp)}
    assert {k: rows["A##x"][k] for k in ("support", "predicted", "tp", "fp", "fn", "tn")} == \
        {"support": "2", "predicted": "1", "tp": "1", "fp": "0", "fn": "1", "tn": "2"}
    with open(tmp_path / "eval_top_confusions.csv", encoding="utf-8", newline="") as fp:
        assert list(csv.DictReader(fp)) == [{"missed": "A##x", "predicted_instead": "B", "count": "1",
                                            "share_of_gold": "0.5000"}]
    assert "level 2 (1 labels): micro-F1 0.6667" in (tmp_path / "eval_report.txt").read_text(encoding="utf-8")
    assert_png(str(tmp_path / "eval_confusion_matrix.png"))


def test_hundreds_of_labels_give_one_row_per_label_and_a_fixed_size_figure(tmp_path):
    from utils.reporting.reports import write_multilabel_report

    rng = np.random.default_rng(0)
    labels = [f"要素{i:03d}" for i in range(300)]
    gold = rng.random((600, 300)) < 0.01
    predicted = gold ^ (rng.random((600, 300)) < 0.004)
    write_multilabel_report(str(tmp_path), "test", gold, predicted, labels)
    with open(tmp_path / "test_confusion_matrix.csv", encoding="utf-8", newline="") as fp:
        rows = list(csv.reader(fp))
    assert len(rows) == 301 and all(len(r) == 10 for r in rows)  # one row per label, not a 300 x 300 matrix
    with open(tmp_path / "test_top_confusions.csv", encoding="utf-8", newline="") as fp:
        assert sum(1 for _ in fp) > 1
    image = matplotlib.image.imread(str(tmp_path / "test_confusion_matrix.png"))
    width, height = (round(x * reports.PNG_DPI) for x in reports.MANY_LABELS_FIGSIZE)
    assert image.shape[:2] == (height, width)
