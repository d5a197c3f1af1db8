"""Prediction files: one format for train.py and infer.py, published whole or not at all; the
streamed summary equals sklearn's metrics."""
import json
import os

import numpy as np
import pytest
from sklearn.metrics import f1_score

from conftest import read_tsv
from helpers import FullDisk
from utils.deploy import predictions
from utils.errors import UserError
from utils.task.metrics import macro_f1_from_confusion
from utils.deploy.predictions import PredictionSummary, PredictionWriter, write_predictions

LABELS = ["x", "y", "z"]
PROBS = np.array([[0.2, 0.7, 0.1], [0.5, 0.2, 0.3]])


def temp_files(directory):
    return [name for name in os.listdir(directory) if name.endswith(".tmp")]


def test_tsv_columns_gold_and_top_k(tmp_path):
    path = str(tmp_path / "o.tsv")
    summary = write_predictions(path, [{"text_a": "甲"}, {"text_a": "乙"}], PROBS, LABELS, top_k=2, gold=["y", "z"])
    header, rows = read_tsv(path)
    assert header == ["text", "gold", "label", "confidence", "label_2", "confidence_2"]
    assert rows == [["甲", "y", "y", "0.700000", "x", "0.200000"], ["乙", "z", "x", "0.500000", "z", "0.300000"]]
    assert summary["accuracy"] == 0.5 and summary["predicted_label_counts"] == {"x": 1, "y": 1, "z": 0}


def test_pairs_tsv_and_jsonl_share_the_vocabulary(tmp_path):
    examples = [{"text_a": "甲", "text_b": "乙"}, {"text_a": "丙", "text_b": "丁"}]
    write_predictions(str(tmp_path / "o.tsv"), examples, PROBS, LABELS)
    header, rows = read_tsv(str(tmp_path / "o.tsv"))
    assert header == ["text_a", "text_b", "label", "confidence"]
    assert rows == [["甲", "乙", "y", "0.700000"], ["丙", "丁", "x", "0.500000"]]
    write_predictions(str(tmp_path / "o.jsonl"), examples, PROBS, LABELS, top_k=2, gold=["y", "x"])
    with open(tmp_path / "o.jsonl", encoding="utf-8") as fp:
        first = json.loads(fp.readline())
    assert first == {"text_a": "甲", "text_b": "乙", "gold": "y", "label": "y", "confidence": 0.7,
                     "top_k": [{"label": "y", "confidence": 0.7}, {"label": "x", "confidence": 0.2}]}


def test_rows_written_in_chunks_equal_one_write(tmp_path):
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=10)
    examples = [{"text_a": f"t{i}"} for i in range(10)]
    write_predictions(str(tmp_path / "whole.tsv"), examples, probs, LABELS, top_k=3)
    with PredictionWriter(str(tmp_path / "chunks.tsv"), LABELS, top_k=3) as writer:
        for start in range(0, 10, 4):
            writer.write(examples[start:start + 4], probs[start:start + 4])
    assert (tmp_path / "whole.tsv").read_bytes() == (tmp_path / "chunks.tsv").read_bytes()


def test_nothing_appears_until_the_writer_finishes_and_a_failure_keeps_the_old_file(tmp_path):
    path = tmp_path / "o.tsv"
    path.write_text("old\n", encoding="utf-8")
    with pytest.raises(KeyboardInterrupt):
        with PredictionWriter(str(path), LABELS) as writer:
            writer.write([{"text_a": "甲"}], PROBS[:1])
            assert path.read_text(encoding="utf-8") == "old\n" and len(temp_files(tmp_path)) == 1
            raise KeyboardInterrupt
    assert path.read_text(encoding="utf-8") == "old\n" and temp_files(tmp_path) == []


def test_disk_full_is_a_user_error_naming_the_file_and_leaves_no_trace(tmp_path, monkeypatch):
    path = tmp_path / "o.tsv"
    path.write_text("old\n", encoding="utf-8")
    monkeypatch.setattr(predictions, "open", lambda *a, **k: FullDisk(open(*a, **k), room=100), raising=False)
    with pytest.raises(UserError) as error:
        with PredictionWriter(str(path), LABELS) as writer:
            for _ in range(10):
                writer.write([{"text_a": "甲" * 10}] * 2, PROBS)
    assert str(error.value).startswith(f"{path}: cannot write: No space left on device")
    assert path.read_text(encoding="utf-8") == "old\n" and temp_files(tmp_path) == []


def test_streamed_macro_f1_and_accuracy_equal_sklearn():
    rng = np.random.default_rng(1)
    labels = [f"l{i}" for i in range(6)]
    gold = rng.choice(5, size=300, p=[0.4, 0.3, 0.2, 0.05, 0.05])  # l5 never gold
    logits = rng.normal(size=(300, 6)) + 3 * np.eye(6)[gold] * (rng.random(300) < 0.6)[:, None]
    logits[:, 4] -= 10  # l4 never predicted
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    summary = PredictionSummary(labels)
    for start in range(0, 300, 64):
        summary.update(probs[start:start + 64], [labels[g] for g in gold[start:start + 64]])
    result = summary.as_dict()
    predicted = probs.argmax(1)
    expected = f1_score(gold, predicted, labels=list(range(6)), average="macro", zero_division=0)
    assert macro_f1_from_confusion(summary.confusion) == pytest.approx(expected, abs=1e-12)
    assert result["macro_f1"] == round(expected, 4) and result["accuracy"] == round(np.mean(gold == predicted), 4)
    assert result["mean_confidence"] == round(probs.max(1).mean(), 4)
    assert result["predicted_label_counts"] == {label: int((predicted == i).sum()) for i, label in enumerate(labels)}


def test_summary_without_gold_has_no_accuracy():
    summary = PredictionSummary(LABELS)
    summary.update(PROBS)
    assert "accuracy" not in summary.as_dict() and "macro_f1" not in summary.as_dict()


ML_LABELS = ["A", "A##x", "B"]
ML_PROBS = np.array([[0.9, 0.6, 0.2], [0.3, 0.8, 0.55], [0.1, 0.2, 0.3]])


def test_label_set_rows_list_every_label_above_its_threshold_most_probable_first(tmp_path):
    from utils.task.decoding import Decoder

    decoder = Decoder("hierarchical", ML_LABELS, (0.5, 0.5, 0.5))
    path = str(tmp_path / "o.tsv")
    summary = write_predictions(path, [{"text_a": "甲"}, {"text_a": "乙"}, {"text_a": "丙"}], ML_PROBS, ML_LABELS,
                                gold=["A,A##x", "B", "A"], decoder=decoder)
    header, rows = read_tsv(path)
    assert header == ["text", "gold", "labels", "confidences"]
    # row 2: A##x (0.8) is dropped with its parent A (0.3) by consistent decoding; row 3: no label at all
    assert rows == [["甲", "A,A##x", "A,A##x", "0.900000,0.600000"], ["乙", "B", "B", "0.550000"], ["丙", "A", "", ""]]
    assert summary["texts_without_label"] == 1 and summary["labels_per_text"] == 1.0
    assert summary["accuracy"] == round(2 / 3, 4) and summary["predicted_label_counts"] == {"A": 1, "A##x": 1, "B": 1}
    write_predictions(str(tmp_path / "o.jsonl"), [{"text_a": "甲"}], ML_PROBS[:1], ML_LABELS, top_k=2,
                      gold=["A,A##x"], decoder=Decoder("multi-label", ML_LABELS, (0.95, 0.5, 0.1)))
    with open(tmp_path / "o.jsonl", encoding="utf-8") as fp:
        record = json.loads(fp.readline())
    assert record == {"text": "甲", "gold": ["A", "A##x"],
                      "labels": [{"label": "A##x", "confidence": 0.6}, {"label": "B", "confidence": 0.2}],
                      "top_k": [{"label": "A", "confidence": 0.9}, {"label": "A##x", "confidence": 0.6}]}
    write_predictions(str(tmp_path / "k.tsv"), [{"text_a": "甲"}], ML_PROBS[:1], ML_LABELS, top_k=2, decoder=decoder)
    header, _ = read_tsv(str(tmp_path / "k.tsv"))
    assert header == ["text", "labels", "confidences", "label_1", "confidence_1", "label_2", "confidence_2"]


def test_streamed_label_set_metrics_equal_sklearn():
    from utils.task.decoding import Decoder
    from utils.task.metrics import multilabel_metrics
    from utils.deploy.predictions import prediction_summary

    rng = np.random.default_rng(2)
    labels = ["A", "A##x", "A##y", "B", "B##z", "C"]
    decoder = Decoder("hierarchical", labels, (0.5, 0.4, 0.6, 0.5, 0.5, 0.3))
    gold = rng.random((200, 6)) < 0.3
    for child, parent in enumerate(decoder.parents):
        if parent >= 0:
            gold[:, parent] |= gold[:, child]
    probs = np.clip(gold * 0.45 + rng.random((200, 6)) * 0.6, 0, 1)
    names = [",".join(label for label, on in zip(labels, row) if on) or "C" for row in gold]
    gold[[i for i, n in enumerate(names) if n == "C"], 5] = True
    summary = prediction_summary(labels, decoder)
    for start in range(0, 200, 64):
        summary.update(probs[start:start + 64], names[start:start + 64])
    result = summary.as_dict()
    expected = multilabel_metrics(gold, decoder.decide(probs), decoder.levels)
    for key in ("micro_f1", "macro_f1", "accuracy", "hamming_loss", "level_1_micro_f1", "level_1_macro_f1",
                "level_2_micro_f1", "level_2_macro_f1"):
        assert result[key] == round(expected[key], 4), key
