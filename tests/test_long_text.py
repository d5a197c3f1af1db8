"""--long_text: the whole document, read the same way by training, the export, infer.py, the Python API
and the service (Ray: tests/serving/test_ray_infer.py); hostile flags refused before any model loads."""
import json
import os

import numpy as np
import pytest

import infer
import train
from conftest import FAST, long_keyword_run, metric_value, ready_client, read_tsv
from utils.errors import run_cli
from utils.testing.synthetic import MULTI_LABEL_PROMPT, PROMPT, write_long_keyword_dataset, \
    write_multilabel_keyword_dataset


def results(out, split="test"):
    with open(os.path.join(out, f"{split}_results.json"), encoding="utf-8") as fp:
        return json.load(fp)


def test_windows_find_the_keyword_that_truncation_never_sees(trained_windows, tiny_model_dir, tmp_path):
    """The deciding keyword sits after the first 32 tokens; an input holds 29 beside the prompt.

    Measured on 300 documents: window 0.903 (seed 42; 0.900 and 0.877 with seeds 43 and 44), truncate at
    chance. The bound is 0.85, about two standard errors under what training per window (the default)
    reaches: the issue's 0.9 is reached, not with a margin; training per document (--window_training
    document) reaches less (0.797 and 0.863 with seeds 42 and 43), so it does not prove 0.9 either
    (QUALITY.md section 5)."""
    windows = results(trained_windows[1])
    assert windows["test_accuracy"] >= 0.85
    assert windows["test_texts_longer_than_one_window"] == 300 and windows["test_windows_read"] > 2 * 300
    truncated = results(long_keyword_run(tiny_model_dir, tmp_path, "truncate")[1])
    assert truncated["test_accuracy"] <= 0.45  # chance is 1/3
    assert "test_windows_read" not in truncated


def test_the_export_holds_every_window_to_the_training_template(trained_windows):
    export = os.path.join(trained_windows[1], "export")
    with open(os.path.join(export, "preprocess.json"), encoding="utf-8") as fp:
        assert json.load(fp)["long_text"] == {"mode": "window", "stride": None, "aggregation": "mean",
                                              "max_windows": 16}
    with open(os.path.join(export, "manifest.json"), encoding="utf-8") as fp:
        parity = json.load(fp)["parity"]
    assert parity["passed"] and parity["longest_document_inputs"] > 1
    assert parity["sample_size"] > parity["documents"]  # the gate compared windows, not documents


def test_every_path_predicts_what_training_predicted(trained_windows, tmp_path, capsys):
    """train.py --do_predict, infer.py, the Python API and the service: same labels, same confidences."""
    from utils.deploy.classifier import Classifier
    from utils.serving.app import ServiceConfig, create_app

    data_dir, out = trained_windows
    export = os.path.join(out, "export")
    _, trained_rows = read_tsv(os.path.join(out, "test_predictions.tsv"))
    output = str(tmp_path / "pred.tsv")
    assert run_cli(infer.main, ["--model_path_prefix", export, "--input_file", os.path.join(data_dir, "test.txt"),
                                "--output_file", output, "--batch_size", "5", "--num_threads", "1"]) == 0
    summary = json.loads(capsys.readouterr().out)
    _, rows = read_tsv(output)
    assert [r[:3] for r in rows] == [r[:3] for r in trained_rows]
    confidences = [float(r[3]) for r in trained_rows]
    np.testing.assert_allclose([float(r[3]) for r in rows], confidences, atol=1e-4)
    trained = results(out)
    assert summary["texts_longer_than_one_window"] == trained["test_texts_longer_than_one_window"] == len(rows)
    assert summary["windows_read"] == trained["test_windows_read"]
    assert summary["accuracy"] == pytest.approx(trained["test_accuracy"], abs=1e-4)

    texts = [r[0] for r in trained_rows]
    classifier = Classifier(export, num_threads=1)
    probs = classifier.predict_proba(texts)
    assert [classifier.labels[i] for i in probs.argmax(-1)] == [r[2] for r in trained_rows]
    np.testing.assert_allclose(probs.max(-1), confidences, atol=1e-4)

    # the service batches windows of different documents together (8 texts a batch: ~20 windows); one
    # request holds at most the service's limit of texts: the first 60 documents
    from utils.deploy.predictor import ExportedClassifier

    sent = texts[:60]
    whole = ExportedClassifier(export, num_threads=1)
    whole.logits([{"text_a": t} for t in sent])
    with ready_client(create_app(ServiceConfig(export, num_threads=1, max_batch_size=8))) as client:
        answer = client.post("/predict", json={"texts": sent}).json()["predictions"]
        short = client.post("/models/cls_default", json={"data": {"text": texts[:4]},
                                                         "parameters": {"max_seq_len": 30}}).json()["result"]
        metrics = client.get("/metrics").text
    assert metric_value(metrics, "ptuning_long_texts_total") == len(sent) + 4
    assert [a["label"] for a in answer] == [r[2] for r in trained_rows[:60]]
    np.testing.assert_allclose([a["confidence"] for a in answer], confidences[:60], atol=1e-4)
    # SimpleServing's max_seq_len truncates each window (the windows are the model's)
    cut = ExportedClassifier(export, num_threads=1, max_seq_length=30)
    expected = cut.decoder.probabilities(cut.logits([{"text_a": t} for t in texts[:4]]))
    np.testing.assert_allclose([r["confidence"] for r in short], expected.max(-1), atol=1e-4)
    assert cut.window_counts.texts == 4 and cut.window_counts.windows > 4
    assert metric_value(metrics, "ptuning_windows_total") == whole.window_counts.windows + cut.window_counts.windows


def hostile(tmp_path, tiny_model_dir, *flags, multi_label=False):
    if multi_label:
        data_dir = write_multilabel_keyword_dataset(str(tmp_path / "data"))
        prompt, task = MULTI_LABEL_PROMPT, ["--task_type", "multi_label"]
    else:
        data_dir = write_long_keyword_dataset(str(tmp_path / "data"), train_per_class=2, dev_per_class=1,
                                              test_per_class=1)
        prompt, task = PROMPT, []
    fast = [f for i, f in enumerate(FAST) if "--max_seq_length" not in FAST[max(0, i - 1):i + 1]]
    return ["--model_name_or_path", tiny_model_dir, "--data_dir", data_dir, "--output_dir", str(tmp_path / "out"),
            "--prompt", prompt, "--do_train", "--max_steps", "2", *task, *fast, *flags]


@pytest.mark.parametrize("flags, flag, message", [
    (["--long_text", "window", "--window_stride", "29", "--max_seq_length", "40"], "--window_stride",
     "a window holds only 29 text tokens"),
    (["--long_text", "window", "--max_windows", "0"], "--max_windows", "must be at least 1"),
    (["--window_stride", "5"], "--window_stride", "add --long_text window"),
    (["--long_text", "head_tail", "--window_aggregation", "max"], "--window_aggregation", "add --long_text window"),
    (["--long_text", "window", "--max_seq_length", "11"], "--max_seq_length", "the prompt alone takes 11 tokens"),
    (["--long_text", "slide"], "--long_text", "must be one of truncate, head_tail or window"),
    (["--window_training", "document"], "--window_training", "--long_text is truncate: add --long_text window"),
    (["--long_text", "head_tail", "--window_training", "document"], "--window_training",
     "--long_text is head_tail: add --long_text window"),
    (["--long_text", "window", "--window_training", "documents"], "--window_training",
     "must be one of window or document"),
    (["--long_text", "window", "--window_training", "document", "--use_rgl"], "--use_rgl",
     "whose windows have one representation each"),
    (["--long_text", "window", "--window_training", "document", "--verbalizer", "manual", "--manual_loss", "mlm"],
     "--manual_loss", "a document's loss is the cross-entropy of its windows' aggregated label probabilities"),
], ids=["stride not below the window", "no windows", "stride without windows", "aggregation without windows",
        "window shorter than the prompt", "unknown mode", "document training without windows",
        "document training with head_tail", "unknown training mode", "document training with RGL",
        "document training with the MLM loss"])
def test_hostile_long_text_flags_are_refused_before_any_model_loads(flags, flag, message, tiny_model_dir, tmp_path,
                                                                   capsys, no_model_loads):
    argv = hostile(tmp_path, tiny_model_dir, *flags)
    code = run_cli(train.main, argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith(f"error: {flag}: ") and message in err and "Traceback" not in err, err


def test_document_training_without_training_is_refused(tiny_model_dir, tmp_path, capsys, no_model_loads):
    argv = [a for a in hostile(tmp_path, tiny_model_dir, "--long_text", "window", "--window_training", "document",
                               "--do_eval") if a != "--do_train"]
    assert run_cli(train.main, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --window_training: shapes the training examples"), err
    assert not os.path.exists(str(tmp_path / "out"))


def test_vote_is_refused_for_label_sets(tiny_model_dir, tmp_path, capsys, no_model_loads):
    argv = hostile(tmp_path, tiny_model_dir, "--long_text", "window", "--window_aggregation", "vote",
                   "--max_seq_length", "40", multi_label=True)
    assert run_cli(train.main, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --window_aggregation: vote is for multi-class models"), err


def test_a_checkpoint_keeps_its_own_reading_of_long_texts(trained_windows, tmp_path, capsys, no_model_loads):
    data_dir, out = trained_windows
    argv = ["--data_dir", data_dir, "--output_dir", str(tmp_path / "out"), "--resume_from_checkpoint", out,
            "--do_predict", "--long_text", "truncate"]
    assert run_cli(train.main, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --long_text: is part of the model"), err


def test_select_scores_each_document_by_its_aggregated_prediction(trained_windows, tmp_path, capsys):
    """select.py reads a long text as infer.py does: its windows' logits aggregated into the document's
    (the entropy it ranks by is the aggregated distribution's) and its vector the mean of its windows'."""
    from helpers import import_script
    from utils.deploy.classifier import Classifier
    from utils.selection.scores import entropy

    data_dir, out = trained_windows
    export, texts = os.path.join(out, "export"), os.path.join(data_dir, "test.txt")
    with open(texts, encoding="utf-8") as fp:
        documents = [line.rstrip("\n").split("\t")[0] for line in fp if line.strip()]
    model = Classifier(export, num_threads=1).model
    expected = entropy(model.decoder.probabilities(model.logits([{"text_a": t} for t in documents])))
    picks = str(tmp_path / "picks.tsv")
    select = import_script("select").main
    assert run_cli(select, ["--model_path_prefix", export, "--input_file", texts, "--output_file", picks,
                            "--k", str(len(documents)), "--strategy", "entropy", "--num_threads", "1"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["texts_longer_than_one_window"] == len(documents)
    assert summary["windows_read"] == model.window_counts.windows  # every window of every document, once
    _, rows = read_tsv(picks)
    scores = {int(row[1]): float(row[3]) for row in rows}
    assert sorted(scores) == list(range(1, len(documents) + 1))
    np.testing.assert_allclose([scores[i + 1] for i in range(len(documents))], expected, rtol=1e-4, atol=1e-5)
    assert run_cli(select, ["--model_path_prefix", export, "--input_file", texts, "--output_file",
                            str(tmp_path / "diverse.tsv"), "--k", "5", "--strategy", "diversity",
                            "--num_threads", "1"]) == 0, capsys.readouterr().err
    _, rows = read_tsv(str(tmp_path / "diverse.tsv"))
    assert len({row[1] for row in rows}) == 5


def test_an_ensemble_of_window_models_averages_window_by_window_then_aggregates_as_its_members(
        trained_windows, tiny_model_dir, tmp_path, capsys):
    """ensemble.py over two --long_text window models: the export reads each document's windows once, its
    `logits` are the members' mean probabilities per window aggregated as the members aggregate (mean),
    each member's metrics are those train.py measured for it alone, and infer.py on the ensemble export
    predicts what ensemble.py wrote."""
    from helpers import import_script
    from utils.deploy.format import MEMBER_OUTPUT, OUTPUT_NAME
    from utils.deploy.predictor import ExportedClassifier

    data_dir, first = trained_windows
    second = str(tmp_path / "second")  # a weaker member: another seed, few steps
    assert run_cli(train.main, ["--model_name_or_path", tiny_model_dir, "--data_dir", data_dir, "--output_dir", second,
                                "--prompt", PROMPT, "--long_text", "window", "--do_train", "--do_predict",
                                "--max_steps", "60", "--logging_steps", "60", *FAST[:-2], "--seed", "7"]) == 0
    out = str(tmp_path / "ensemble")
    assert run_cli(import_script("ensemble").main, ["--members", first, second, "--output_dir", out, "--data_dir",
                                                    data_dir, "--do_predict"]) == 0, capsys.readouterr().err
    export = os.path.join(out, "export")
    with open(os.path.join(export, "preprocess.json"), encoding="utf-8") as fp:
        assert json.load(fp)["long_text"]["mode"] == "window"
    with open(os.path.join(out, "ensemble.json"), encoding="utf-8") as fp:
        summary = json.load(fp)
    assert summary["parity"]["passed"] and summary["parity"]["longest_document_inputs"] > 1
    members = summary["metrics"]["test"]["members"]
    assert [m["accuracy"] for m in members] == pytest.approx(
        [results(first)["test_accuracy"], results(second)["test_accuracy"]], abs=1e-6)

    _, rows = read_tsv(os.path.join(out, "test_predictions.tsv"))
    documents = [{"text_a": row[0]} for row in rows[:40]]
    model = ExportedClassifier(export, num_threads=1)
    inputs, pieces = model.preprocessor.split(documents)
    windows = model.run_outputs(model.preprocessor.encode(inputs), (OUTPUT_NAME, MEMBER_OUTPUT))[MEMBER_OUTPUT]
    probs = np.exp(windows - windows.max(-1, keepdims=True))
    probs = (probs / probs.sum(-1, keepdims=True)).mean(1)           # the members' mean, window by window
    ends = np.cumsum([len(p.texts) for p in pieces])
    expected = np.stack([probs[end - len(p.texts):end].mean(0) for p, end in zip(pieces, ends)])
    assert max(len(p.texts) for p in pieces) > 1
    np.testing.assert_allclose(model.decoder.probabilities(model.logits(documents)), expected, atol=1e-5)
    np.testing.assert_allclose([float(r[3]) for r in rows[:40]], expected.max(-1), atol=1e-4)

    predicted = str(tmp_path / "infer.tsv")
    assert run_cli(infer.main, ["--model_path_prefix", export, "--input_file", os.path.join(data_dir, "test.txt"),
                                "--output_file", predicted, "--num_threads", "1"]) == 0
    assert [r[:3] for r in read_tsv(predicted)[1]] == [r[:3] for r in rows]

    # select.py's disagreement reads the members' documents (each member's windows aggregated alone)
    picks = str(tmp_path / "picks.tsv")
    assert run_cli(import_script("select").main, [
        "--model_path_prefix", export, "--input_file", os.path.join(data_dir, "test.txt"), "--output_file", picks,
        "--k", "5", "--strategy", "disagreement", "--num_threads", "1"]) == 0, capsys.readouterr().err
    assert len(read_tsv(picks)[1]) == 5


def test_an_ensemble_refuses_members_that_cut_documents_differently(trained_windows, trained, tmp_path, capsys,
                                                                  no_model_loads):
    """A window model with a truncating one: their inputs differ, so the graph cannot average them input by
    input; one paragraph before any weights load."""
    from helpers import import_script

    code = run_cli(import_script("ensemble").main, ["--members", trained_windows[1], trained[1], "--output_dir",
                                                    str(tmp_path / "e")])
    err = capsys.readouterr().err
    assert code == 2 and "must cut and aggregate documents alike" in err and "--long_text truncate" in err, err
    assert not os.path.exists(tmp_path / "e")


def test_explain_reads_a_long_document_as_the_model_does(trained_windows, tmp_path, capsys):
    """explain.py on a --long_text window model: the document's probabilities are the aggregated ones
    (infer.py's), the tokens explained are its deciding window's (the highest probability of the
    label), and the bad cases are the documents the model gets wrong."""
    import explain
    from utils.deploy.classifier import Classifier

    data_dir, out = trained_windows
    rows = [line.rstrip("\n").split("\t") for line in open(os.path.join(data_dir, "test.txt"), encoding="utf-8")]
    documents = [text for text, _ in rows[:3]]
    model = Classifier(os.path.join(out, "export"), num_threads=1).model
    expected = model.decoder.probabilities(model.logits([{"text_a": t} for t in documents]))
    target = str(tmp_path / "explanations")
    argv = ["--resume_from_checkpoint", out, "--output_dir", target, "--steps", "8"]
    for text in documents:
        argv += ["--text", text]
    assert run_cli(explain.main, argv + ["--data_dir", data_dir, "--bad_cases", "test", "--max_cases", "2"]) == 0
    with open(os.path.join(target, "explanations.json"), encoding="utf-8") as fp:
        records = json.load(fp)
    for record, probs in zip(records, expected):
        assert record["windows"] > 1 and 1 <= record["window"] <= record["windows"]
        assert record["text"]["text_a"] in documents and record["window_text"] in record["text"]["text_a"]
        labels = list(record["probabilities"])
        np.testing.assert_allclose([record["probabilities"][k] for k in labels], probs, atol=1e-4)
        assert record["predicted"] == labels[int(np.argmax(probs))]
        assert "".join(record["tokens"]) in record["window_text"].replace(" ", "")
    html = open(os.path.join(target, "explanations.html"), encoding="utf-8").read()
    assert " of " in html and "the logits are the window's" in html
    with open(os.path.join(target, "bad_cases_test.json"), encoding="utf-8") as fp:
        cases = json.load(fp)
    wrong = {text for (text, gold), p in zip(rows, model.decoder.probabilities(
        model.logits([{"text_a": t} for t, _ in rows]))) if model.labels[int(np.argmax(p))] != gold}
    assert {c["text"]["text_a"] for c in cases} <= wrong and len(cases) == min(2, len(wrong))


def test_a_windowed_label_set_ensemble_searches_thresholds_on_what_its_export_computes(tiny_model_dir, tmp_path,
                                                                                       capsys):
    """--threshold_search of an ensemble of multi-label window models: the dev probabilities it tunes on
    are the export's (members averaged per window, then each label's mean over the document's windows),
    not those of truncated documents."""
    import random

    from helpers import import_script
    from utils.ensembles import graph
    from utils.ensembles.evaluate import dev_probabilities
    from utils.ensembles.plan import plan_ensemble
    from utils.dataset.folder import load_dataset_dir
    from utils.deploy.predictor import ExportedClassifier
    from utils.testing.synthetic import FILLER

    data_dir = write_multilabel_keyword_dataset(str(tmp_path / "data"))
    rng = random.Random(0)
    for name in ("train.txt", "dev.txt", "test.txt"):  # 30-60 filler characters before each text: 2-3 windows
        path = os.path.join(data_dir, name)
        with open(path, encoding="utf-8") as fp:
            lines = [line for line in fp.read().splitlines() if line]
        with open(path, "w", encoding="utf-8") as fp:
            fp.write("".join("".join(rng.choice(FILLER) for _ in range(rng.randint(30, 60))) + line + "\n"
                             for line in lines))
    members = []
    for seed in ("1", "2"):
        members.append(str(tmp_path / f"member{seed}"))
        assert run_cli(train.main, ["--model_name_or_path", tiny_model_dir, "--data_dir", data_dir, "--output_dir",
                                    members[-1], "--prompt", MULTI_LABEL_PROMPT, "--task_type", "multi_label",
                                    "--long_text", "window", "--do_train", "--max_steps", "30", "--logging_steps",
                                    "30", *FAST[:-2], "--seed", seed]) == 0
    out = str(tmp_path / "ensemble")
    assert run_cli(import_script("ensemble").main, ["--members", *members, "--output_dir", out, "--data_dir", data_dir,
                                                    "--threshold_search", "global", "--do_eval"]) == 0, \
        capsys.readouterr().err
    plan = plan_ensemble(members)
    dev = load_dataset_dir(data_dir, need_train=False, task_type=plan.decoder.task_type).dev
    import paddle
    with paddle.utils.unique_name.guard():
        tuned_on = dev_probabilities(plan, graph.load_models(plan), dev)
    export = ExportedClassifier(os.path.join(out, "export"), num_threads=1)
    np.testing.assert_allclose(tuned_on, export.decoder.probabilities(export.logits(dev)), atol=1e-5)
    assert export.window_counts.windows > 2 * len(dev)
