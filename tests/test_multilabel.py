"""--task_type multi-label and hierarchical end to end: train -> eval -> predict -> export -> infer.py, the
Python API and the service, on the synthetic keyword task and on the repo's examples (data/*_example)."""
import csv
import json
import os

import numpy as np
import pytest
from helpers import infer_jsonl, read_json

import infer
import train
from conftest import FAST, ROOT, read_tsv
from utils.errors import run_cli

MULTILABEL_EXAMPLE = os.path.join(ROOT, "data", "multilabel_example")
HIERARCHICAL_EXAMPLE = os.path.join(ROOT, "data", "hierarchical_example")
EXAMPLE_PROMPTS = ("这条评价提到的方面有", "这句话描述的事件是")


def assert_same_predictions(path, reference):
    """Same texts, gold and label sets; probabilities equal to 6 decimals up to the export's float
    differences (the parity gate's 1e-4 bounds them; here they are ~1e-7)."""
    header, rows = read_tsv(path)
    ref_header, ref_rows = read_tsv(reference)
    assert header == ref_header and len(rows) == len(ref_rows)
    column = header.index("confidences")
    for row, ref in zip(rows, ref_rows):
        assert row[:column] == ref[:column]
        np.testing.assert_allclose([float(c) for c in row[column].split(",") if c],
                                   [float(c) for c in ref[column].split(",") if c], atol=2e-6)


@pytest.fixture(scope="module")
def example_model_dir(tmp_path_factory):
    """A tiny random ERNIE whose vocab covers the repo's multi-label and hierarchical examples."""
    from utils.testing.tiny_ernie import build_ernie, texts_of_data_dirs, vocab_from_texts

    texts = texts_of_data_dirs([MULTILABEL_EXAMPLE, HIERARCHICAL_EXAMPLE]) + list(EXAMPLE_PROMPTS)
    return build_ernie(str(tmp_path_factory.mktemp("models") / "tiny-examples"), vocab_from_texts(texts), seed=0)


@pytest.fixture(scope="module")
def trained_hierarchical(example_model_dir, tmp_path_factory):
    """data/hierarchical_example (3 classes, 6 event types as paths): R-Drop, per-label thresholds, export."""
    out = str(tmp_path_factory.mktemp("hierarchical") / "out")
    argv = ["--model_name_or_path", example_model_dir, "--data_dir", HIERARCHICAL_EXAMPLE, "--output_dir", out,
            "--task_type", "hierarchical", "--prompt", EXAMPLE_PROMPTS[1], "--use_rdrop", "--threshold_search",
            "per-label", "--do_train", "--do_eval", "--do_predict", "--do_export", "--max_steps", "40",
            "--eval_steps", "20", "--logging_steps", "20", *FAST]
    assert run_cli(train.main, argv) == 0
    return out


# -- the synthetic multi-label task ----------------------------------------------------------------


def test_synthetic_multi_label_task_is_learned(trained_multilabel):
    _, out = trained_multilabel
    metrics = read_json(os.path.join(out, "test_results.json"))
    assert metrics["test_micro_f1"] >= 0.9, metrics
    assert metrics["test_macro_f1"] >= 0.85, metrics
    assert {"test_accuracy", "test_hamming_loss", "test_micro_precision", "test_micro_recall"} <= set(metrics)
    assert {"eval_micro_f1", "eval_macro_f1", "eval_accuracy", "eval_hamming_loss"} <= set(
        read_json(os.path.join(out, "eval_results.json")))
    state = read_json(os.path.join(out, "trainer_state.json"))
    assert state["best_model_checkpoint"] and all("eval_micro_f1" in h for h in state["log_history"]
                                                 if "eval_loss" in h)


def test_the_threshold_search_is_saved_with_the_model_and_the_export(trained_multilabel):
    _, out = trained_multilabel
    spec = read_json(os.path.join(out, "ptuning_config.json"))
    assert spec["task_type"] == "multi-label" and spec["threshold_search"] == "global"
    assert len(set(spec["thresholds"])) == 1 and len(spec["thresholds"]) == 3 and 0 < spec["thresholds"][0] < 1
    manifest = read_json(os.path.join(out, "export", "manifest.json"))
    assert manifest["task_type"] == "multi-label" and manifest["thresholds"] == spec["thresholds"]
    assert manifest["threshold_search"] == "global" and manifest["head"] == "soft-multi-label"
    # the checkpoints written during training keep the default: the search is for the final model
    checkpoint = next(d for d in os.listdir(out) if d.startswith("checkpoint-"))
    saved = read_json(os.path.join(out, checkpoint, "ptuning_config.json"))
    assert saved["thresholds"] == [0.5] * 3 and saved["threshold_search"] == "none"


def test_prediction_files_list_every_label_above_its_threshold(trained_multilabel, tmp_path, capsys):
    data_dir, out = trained_multilabel
    threshold = read_json(os.path.join(out, "ptuning_config.json"))["thresholds"][0]
    header, rows = read_tsv(os.path.join(out, "test_predictions.tsv"))
    assert header == ["text", "gold", "labels", "confidences"]
    with open(os.path.join(data_dir, "test.txt"), encoding="utf-8") as fp:
        assert [r[:2] for r in rows] == [line.rstrip("\n").split("\t") for line in fp if line.strip()]
    records = infer_jsonl(capsys, os.path.join(out, "export"), os.path.join(data_dir, "test.txt"),
                          str(tmp_path / "all.jsonl"), "--top_k", "3")
    for row, record in zip(rows, records):
        every = {t["label"]: t["confidence"] for t in record["top_k"]}  # all three labels' probabilities
        above = [label for label, p in sorted(every.items(), key=lambda kv: -kv[1]) if p > threshold]
        assert row[2] == ",".join(above) and [r["label"] for r in record["labels"]] == above
        np.testing.assert_allclose([float(c) for c in row[3].split(",") if c], [every[label] for label in above],
                                   atol=2e-6)
        assert record["gold"] == row[1].split(",")
    header, rows = read_tsv(os.path.join(out, "data_predictions.tsv"))
    assert header == ["text", "labels", "confidences"] and len(rows) == 6


def test_infer_writes_the_training_predictions_and_their_metrics(trained_multilabel, tmp_path, capsys):
    data_dir, out = trained_multilabel
    output = str(tmp_path / "test.tsv")
    assert run_cli(infer.main, ["--model_path_prefix", os.path.join(out, "export", "model"), "--input_file",
                                os.path.join(data_dir, "test.txt"), "--output_file", output, "--device", "cpu"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert_same_predictions(output, os.path.join(out, "test_predictions.tsv"))  # no --task_type or threshold flag
    metrics = read_json(os.path.join(out, "test_results.json"))
    assert summary["task_type"] == "multi-label"
    for key in ("micro_f1", "macro_f1", "accuracy", "hamming_loss"):
        assert summary[key] == round(metrics[f"test_{key}"], 4), key


def test_parity_gate_compares_sigmoid_probabilities_and_the_variants_work(trained_multilabel, tmp_path, capsys):
    data_dir, out = trained_multilabel
    parity = read_json(os.path.join(out, "export", "manifest.json"))["parity"]
    assert parity["passed"]
    for result in parity["results"]:
        assert result["compared"] == "sigmoid probabilities" and result["max_abs_diff"] <= 1e-4
        assert result["label_set_agreement"] == 1.0
    # int8 is reported, not gated: export.py warns below 99% label-set agreement, which this model reaches
    assert parity["int8"]["compared"] == "sigmoid probabilities" and parity["int8"]["agreement"] >= 0.99, parity
    # fp16 is gated: the check ran on this machine's onnxruntime and passed (an export it failed is refused)
    assert parity["fp16"]["checked"] is True and parity["fp16"]["passed"] is True, parity["fp16"]
    assert parity["fp16"]["compared"] == "sigmoid probabilities"
    assert parity["fp16"]["max_abs_diff"] <= parity["fp16"]["tolerance"] and parity["fp16"]["agreement"] == 1.0
    records = infer_jsonl(capsys, os.path.join(out, "export"), os.path.join(data_dir, "test.txt"),
                          str(tmp_path / "int8.jsonl"), "--use_int8")
    assert len(records) == 30 and all("labels" in r for r in records)


def test_python_api_knows_the_task_type_and_thresholds(trained_multilabel, tmp_path, capsys):
    from utils import Classifier
    from utils import LabelSetPrediction

    data_dir, out = trained_multilabel
    clf = Classifier(os.path.join(out, "export"), num_threads=1)
    spec = read_json(os.path.join(out, "ptuning_config.json"))
    assert clf.task_type == "multi-label" and clf.thresholds == spec["thresholds"] and "multi-label" in repr(clf)
    with open(os.path.join(data_dir, "test.txt"), encoding="utf-8") as fp:
        texts = [line.split("\t")[0] for line in fp if line.strip()]
    records = infer_jsonl(capsys, os.path.join(out, "export"), os.path.join(data_dir, "test.txt"),
                          str(tmp_path / "o.jsonl"), "--top_k", "2")
    predictions = clf.predict(texts, top_k=2)
    assert all(isinstance(p, LabelSetPrediction) for p in predictions)
    for prediction, record in zip(predictions, records):
        assert prediction.names == [r["label"] for r in record["labels"]]
        np.testing.assert_allclose([c for _, c in prediction.labels], [r["confidence"] for r in record["labels"]],
                                   atol=5e-7)
        assert [label for label, _ in prediction.top_k] == [t["label"] for t in record["top_k"]]
    probs = clf.predict_proba(texts)
    assert probs.shape == (30, 3) and not np.allclose(probs.sum(1), 1.0)  # independent sigmoids
    everything = clf.predict(texts[:3], threshold=0.0)
    assert all(len(p.labels) == 3 for p in everything)
    with pytest.raises(Exception, match="threshold: must be a number in"):
        clf.predict(texts[:1], threshold=1.5)


def test_service_answers_label_sets_and_prob_limit_replaces_the_thresholds(trained_multilabel, tmp_path, capsys,
                                                                            monkeypatch):
    import client as client_cli
    from fastapi.testclient import TestClient

    from utils import Classifier
    from utils.serving.app import ServiceConfig, create_app

    data_dir, out = trained_multilabel
    export = os.path.join(out, "export")
    with open(os.path.join(data_dir, "test.txt"), encoding="utf-8") as fp:
        texts = [line.split("\t")[0] for line in fp if line.strip()]
    records = infer_jsonl(capsys, export, os.path.join(data_dir, "test.txt"), str(tmp_path / "o.jsonl"))
    app = create_app(ServiceConfig(export), classifier=Classifier(export, num_threads=1))
    with TestClient(app) as client:
        assert client.get("/labels").json()["task_type"] == "multi-label"
        result = client.post("/models/cls_default", json={"data": {"text": texts}}).json()["result"]
        assert [r["label"] for r in result] == [[x["label"] for x in rec["labels"]] for rec in records]
        np.testing.assert_allclose(sum((r["confidence"] for r in result), []),
                                   [x["confidence"] for rec in records for x in rec["labels"]], atol=2e-6)
        strict = client.post("/models/cls_default", json={"data": {"text": texts[:5]},
                                                          "parameters": {"prob_limit": 0.999999}}).json()["result"]
        loose = client.post("/predict", json={"texts": texts[:5], "threshold": 0.0}).json()["predictions"]
        assert all(len(r["label"]) <= len(x["label"]) for r, x in zip(strict, result))
        assert all(len(p["label"]) == 3 for p in loose)
        bad = client.post("/predict", json={"texts": texts[:1], "threshold": 2})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "threshold"
        monkeypatch.setattr(client_cli, "post", lambda url, body, timeout: client.post(url[url.index("/models"):],
                                                                                       json=body).json())
        capsys.readouterr()
        assert run_cli(client_cli.main, ["--url", "http://x/models/cls_default", "--text", texts[0],
                                         "--prob_limit", "0"]) == 0
        assert len(json.loads(capsys.readouterr().out)["label"]) == 3  # every label above 0


def test_a_checkpoint_is_evaluated_with_its_own_task_type(trained_multilabel, tmp_path, capsys):
    data_dir, out = trained_multilabel
    pred = str(tmp_path / "pred")
    assert run_cli(train.main, ["--do_predict", "--data_dir", data_dir, "--output_dir", pred,
                                "--resume_from_checkpoint", out]) == 0, capsys.readouterr().err
    # the checkpoint's task type and searched thresholds, no flag
    assert_same_predictions(os.path.join(pred, "test_predictions.tsv"), os.path.join(out, "test_predictions.tsv"))
    capsys.readouterr()
    code = run_cli(train.main, ["--do_predict", "--data_dir", data_dir, "--output_dir", str(tmp_path / "p2"),
                                "--resume_from_checkpoint", out, "--task_type", "hierarchical"])
    err = capsys.readouterr().err
    assert code == 2 and "is a --task_type multi-label model, and --task_type hierarchical was given" in err


# -- the repo's examples -----------------------------------------------------------------------------


def test_hierarchical_example_decodes_consistently_and_reports_each_level(trained_hierarchical, tmp_path, capsys):
    from utils.task.decoding import parent_path

    out = trained_hierarchical
    metrics = read_json(os.path.join(out, "eval_results.json"))
    for level in (1, 2):
        assert 0 <= metrics[f"eval_level_{level}_micro_f1"] <= 1 and f"eval_level_{level}_macro_f1" in metrics
    assert "test_level_2_micro_f1" in read_json(os.path.join(out, "test_results.json"))
    report = read_json(os.path.join(out, "test_report.json"))
    assert report["levels"]["1"]["labels"] == 3 and report["levels"]["2"]["labels"] == 6
    manifest = read_json(os.path.join(out, "export", "manifest.json"))
    assert manifest["task_type"] == "hierarchical" and manifest["hierarchical_decoding"] == "consistent"
    assert manifest["threshold_search"] == "per-label" and len(manifest["thresholds"]) == 9
    header, rows = read_tsv(os.path.join(out, "test_predictions.tsv"))
    _, data_rows = read_tsv(os.path.join(out, "data_predictions.tsv"))
    records = infer_jsonl(capsys, os.path.join(out, "export"), os.path.join(HIERARCHICAL_EXAMPLE, "data.txt"),
                          str(tmp_path / "data.jsonl"))
    predicted_sets = [r[2] for r in rows] + [r[1] for r in data_rows] + \
        [",".join(x["label"] for x in rec["labels"]) for rec in records]
    assert any(predicted_sets)
    for labels in predicted_sets:
        names = set(filter(None, labels.split(",")))
        assert all(parent_path(n) in names for n in names if parent_path(n)), labels  # a child only with its parent
    with open(os.path.join(out, "test_confusion_matrix.csv"), encoding="utf-8", newline="") as fp:
        assert len(list(csv.reader(fp))) == 10  # one row per label


def test_multilabel_example_with_the_finetune_baseline(example_model_dir, tmp_path, capsys, caplog):
    out = str(tmp_path / "out")
    argv = ["--model_name_or_path", example_model_dir, "--data_dir", MULTILABEL_EXAMPLE, "--output_dir", out,
            "--task_type", "multi-label", "--method", "finetune", "--do_train", "--do_eval", "--do_predict",
            "--do_export", "--max_steps", "8", "--eval_steps", "4", "--logging_steps", "4", *FAST]
    with caplog.at_level("INFO", logger="utils.training.run"):
        assert run_cli(train.main, argv) == 0
    assert "task_type: multi-label" in caplog.messages  # as PaddleNLP's training log prints it
    err = capsys.readouterr().err
    assert "micro_f1" in err.split("Results in")[-1]  # the closing summary shows micro-F1 for label sets
    manifest = read_json(os.path.join(out, "export", "manifest.json"))
    assert manifest["head"] == "cls-multi-label" and manifest["method"] == "finetune"
    assert manifest["thresholds"] == [0.5] * 4 and manifest["threshold_search"] == "none"
    output = str(tmp_path / "infer.tsv")
    assert run_cli(infer.main, ["--model_path_prefix", os.path.join(out, "export"), "--input_file",
                                os.path.join(MULTILABEL_EXAMPLE, "test.txt"), "--output_file", output,
                                "--device", "cpu"]) == 0
    assert_same_predictions(output, os.path.join(out, "test_predictions.tsv"))


# -- R-Drop with label sets ----------------------------------------------------------------------------


def test_multi_label_rdrop_loss_is_the_symmetric_bernoulli_kl_by_hand():
    """PTuningTrainer._compute_rdrop_loss on a label-set head, against the definitions: the mean BCE of
    the two dropout passes plus alpha/2 times the mean over (text, label) of KL(p||q) + KL(q||p)
    between each label's Bernoulli distributions."""
    from types import SimpleNamespace

    import paddle

    from utils.model.heads import BCEWithLogits
    from utils.task.decoding import Decoder
    from utils.training.trainer import PTuningTrainer

    first = np.array([[0.0, 2.0, -1.0], [1.5, -0.5, 0.3]])             # logits of the first pass
    second = np.array([[np.log(3.0), 1.0, -1.0], [0.0, 0.5, -2.0]])    # and of the second (other dropout)
    labels = np.array([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    first_loss, alpha = 0.7, 5.0
    trainer = SimpleNamespace(spec=SimpleNamespace(decoder=Decoder("multi-label", ("a", "b", "c"))),
                              criterion=BCEWithLogits(), args=SimpleNamespace(alpha_rdrop=alpha))

    def second_pass(**inputs):
        return (paddle.to_tensor(second, dtype="float32"),)

    total = PTuningTrainer._compute_rdrop_loss(trainer, second_pass, {}, paddle.to_tensor(labels, dtype="float32"),
                                               paddle.to_tensor(first, dtype="float32"),
                                               paddle.to_tensor(first_loss, dtype="float32"))

    def kl(a, b):  # KL(Bernoulli(a) || Bernoulli(b))
        return a * np.log(a / b) + (1 - a) * np.log((1 - a) / (1 - b))

    p, q = 1 / (1 + np.exp(-first)), 1 / (1 + np.exp(-second))
    second_bce = -(labels * np.log(q) + (1 - labels) * np.log(1 - q)).mean()
    expected = (second_bce + first_loss) / 2 + alpha / 2 * (kl(p, q) + kl(q, p)).mean()
    # e.g. the first label of the first text: p = 1/2, q = 3/4, KL(p||q) + KL(q||p) = (1/4) ln 3
    assert kl(0.5, 0.75) + kl(0.75, 0.5) == pytest.approx(np.log(3) / 4)
    assert float(total) == pytest.approx(expected, rel=1e-5)


def test_a_multi_label_run_with_rdrop_trains_through_the_bernoulli_kl(tiny_model_dir, tmp_path, monkeypatch):
    from utils.testing.synthetic import MULTI_LABEL_PROMPT, write_multilabel_keyword_dataset
    from utils.training.trainer import PTuningTrainer

    calls = []
    original = PTuningTrainer._compute_rdrop_loss

    def spied(self, model, input_dict, labels, outputs, loss):
        total = original(self, model, input_dict, labels, outputs, loss)
        if model.training:  # (upstream's compute_loss also runs it on evaluation batches, without dropout)
            calls.append((float(loss), float(total)))
        return total

    monkeypatch.setattr(PTuningTrainer, "_compute_rdrop_loss", spied)
    data_dir = write_multilabel_keyword_dataset(str(tmp_path / "data"))
    out = str(tmp_path / "out")
    assert run_cli(train.main, ["--model_name_or_path", tiny_model_dir, "--data_dir", data_dir, "--output_dir", out,
                                "--task_type", "multi_label", "--prompt", MULTI_LABEL_PROMPT, "--use_rdrop",
                                "--do_train", "--do_eval", "--max_steps", "160", "--logging_steps", "40",
                                "--evaluation_strategy", "no", "--save_strategy", "no", *FAST]) == 0
    assert len(calls) == 160  # every step's loss went through the label-set R-Drop
    assert all(np.isfinite(total) and total != plain for plain, total in calls)
    losses = [h["loss"] for h in read_json(os.path.join(out, "trainer_state.json"))["log_history"] if "loss" in h]
    assert len(losses) == 4 and losses == sorted(losses, reverse=True) and losses[-1] < 0.8 * losses[0], losses
    assert read_json(os.path.join(out, "eval_results.json"))["eval_micro_f1"] >= 0.8  # it learns the task
