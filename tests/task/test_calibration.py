"""Calibration and the reject option (utils/task/calibration.py, the Decoder's temperature and reject
threshold): the numbers on hand-made cases, and one real run through train.py, the export and infer.py."""
import json
import os

import numpy as np
import pytest

from conftest import FAST, read_tsv
from utils.task.calibration import (coverage_table, expected_calibration_error, fit_temperature, format_coverage_table,
                               nll, probabilities)
from utils.task.decoding import SIGMOID, Decoder, softmax


def overconfident(n=2000, classes=3, seed=0, scale=8.0):
    """Logits whose softmax is calibrated at T = 1/scale... multiplied by `scale`: over-confident."""
    rng = np.random.RandomState(seed)
    gold = rng.randint(0, classes, n)
    logits = rng.normal(0, 1, (n, classes))
    logits[np.arange(n), gold] += 1.0  # right about 60% of the time, with modest margins
    return logits * scale, gold


def test_temperature_scaling_lowers_ece_on_an_overconfident_model():
    logits, gold = overconfident()
    before = expected_calibration_error(softmax(logits), gold)
    t = fit_temperature(logits, gold)
    after = expected_calibration_error(probabilities(logits, t), gold)
    assert t > 4  # it undoes most of the x8
    assert before > 0.2 and after < 0.05, (before, after)
    assert nll(logits, gold, t) < nll(logits, gold, 1.0)
    # argmax unchanged: temperature never changes a label
    assert (probabilities(logits, t).argmax(1) == logits.argmax(1)).all()


def test_temperature_scaling_of_label_sets_uses_each_sigmoid():
    rng = np.random.RandomState(1)
    gold = rng.rand(500, 4) > 0.5
    logits = (np.where(gold, 1.0, -1.0) + rng.normal(0, 1.5, gold.shape)) * 6
    assert Decoder("multi-label", ("a", "b", "c", "d")).activation == SIGMOID
    t = fit_temperature(logits, gold, SIGMOID)
    assert t > 2
    assert (expected_calibration_error(probabilities(logits, t, SIGMOID), gold, SIGMOID)
            < expected_calibration_error(probabilities(logits, 1.0, SIGMOID), gold, SIGMOID))


@pytest.mark.parametrize("logits, gold, bound", [
    ([[2.0, 0.0, -1.0]], [0], "T = 0.01"),     # one right text: any sharper T is better
    ([[2.0, 0.0, -1.0]], [1], "T = 100"),      # one wrong text: any flatter T is better
    ([[3.0, 0.0], [0.0, 1.0], [5.0, 1.0]] * 20, [0, 1, 0] * 20, "T = 0.01"),  # every answer right
], ids=["one right text", "one wrong text", "all right"])
def test_a_dev_set_that_cannot_fit_a_temperature_leaves_t_1_and_says_the_bound_was_hit(logits, gold, bound, caplog):
    with caplog.at_level("WARNING", logger="utils.task.calibration"):
        assert fit_temperature(np.array(logits), np.array(gold)) == 1.0
    [record] = caplog.records
    message = record.getMessage()
    assert f"is the bound of its search range, {bound} " in message and "stays uncalibrated (T = 1)" in message
    assert f"{len(gold)} dev text" in message


def test_a_fit_inside_the_range_says_nothing(caplog):
    logits, gold = overconfident(n=200)
    with caplog.at_level("WARNING", logger="utils.task.calibration"):
        assert 4 < fit_temperature(logits, gold) < 100
    assert not caplog.records


def test_calibrate_on_a_one_line_dev_set_keeps_t_1_and_warns(tiny_model_dir, tmp_path, caplog):
    import train
    from utils.errors import run_cli
    from utils.testing.synthetic import PROMPT, write_keyword_dataset

    data_dir = write_keyword_dataset(str(tmp_path / "data"), train_per_class=4)
    with open(os.path.join(data_dir, "dev.txt"), encoding="utf-8") as fp:
        first = fp.readline()
    with open(os.path.join(data_dir, "dev.txt"), "w", encoding="utf-8") as fp:
        fp.write(first)
    out = str(tmp_path / "out")
    with caplog.at_level("WARNING", logger="utils.task.calibration"):
        assert run_cli(train.main, ["--model_name_or_path", tiny_model_dir, "--data_dir", data_dir, "--output_dir",
                                    out, "--prompt", PROMPT, "--do_train", "--max_steps", "2", "--calibrate",
                                    "--evaluation_strategy", "no", "--save_strategy", "no", *FAST]) == 0
    assert any("1 dev text cannot pin a temperature down" in r.getMessage() for r in caplog.records), caplog.text
    with open(os.path.join(out, "ptuning_config.json"), encoding="utf-8") as fp:
        assert json.load(fp).get("temperature", 1.0) == 1.0  # (the spec leaves out T = 1), not 100


def test_expected_calibration_error_by_hand():
    # two texts at confidence 0.9 (one right), two at 0.6 (both right): |0.5-0.9|*2/4 + |1-0.6|*2/4 = 0.4
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    gold = np.array([0, 1, 0, 1])
    assert expected_calibration_error(probs, gold) == pytest.approx(0.4)


def test_coverage_table_on_a_hand_made_case():
    probs = np.array([[0.95, 0.05], [0.85, 0.15], [0.3, 0.7], [0.55, 0.45], [0.5, 0.5]])
    gold = np.array([0, 1, 1, 1, 0])  # right, wrong, right, wrong, right (tie -> first label)
    rows = {r["threshold"]: r for r in coverage_table(probs, gold, thresholds=(0.0, 0.6, 0.8, 0.9, 0.99),
                                                      chosen=0.7)}
    assert rows[0.0] == {"threshold": 0.0, "answered": 5, "coverage": 1.0, "accuracy": 0.6}
    assert rows[0.6] == {"threshold": 0.6, "answered": 3, "coverage": 0.6, "accuracy": pytest.approx(2 / 3)}
    assert rows[0.7]["answered"] == 3  # chosen is added; >= P is answered (0.7 itself)
    assert rows[0.8] == {"threshold": 0.8, "answered": 2, "coverage": 0.4, "accuracy": 0.5}
    assert rows[0.9] == {"threshold": 0.9, "answered": 1, "coverage": 0.2, "accuracy": 1.0}
    assert rows[0.99] == {"threshold": 0.99, "answered": 0, "coverage": 0.0, "accuracy": None}
    text = format_coverage_table(list(rows.values()))
    assert text.splitlines()[0] == "threshold\tanswered\tcoverage\taccuracy"
    assert "0.99\t0\t0.0000\t" in text


def test_decoder_temperature_and_reject_option_round_trip_through_the_manifest():
    decoder = Decoder("multi-class", ("a", "b"), temperature=2.0, reject_threshold=0.8, other_label="none of these")
    again = Decoder.from_manifest(decoder.describe(), ["a", "b"])
    assert again == decoder
    probs = decoder.probabilities(np.array([[4.0, 0.0], [0.2, 0.0]]))
    assert probs[0, 0] == pytest.approx(softmax(np.array([2.0, 0.0]))[0])
    assert decoder.names(probs) == ["a", "none of these"]
    for bad, field in (({"temperature": 0}, "temperature"), ({"reject_threshold": 1.5}, "reject_threshold"),
                       ({"other_label": "a"}, "other_label")):
        with pytest.raises(ValueError, match=field):
            Decoder.from_manifest({**decoder.describe(), **bad}, ["a", "b"])
    with pytest.raises(ValueError, match="multi-class"):
        Decoder("multi-label", ("a", "b"), reject_threshold=0.5)


def test_reject_and_calibrate_flags_are_checked_before_anything_loads(tmp_path, keyword_data, capsys):
    import infer
    import train
    from utils.errors import run_cli

    out = str(tmp_path / "out")
    cases = [
        (["--reject_threshold", "0"], "--reject_threshold"),
        (["--reject_threshold", "1.5"], "--reject_threshold"),
        (["--other_label", "x"], "--other_label"),  # without --reject_threshold
        (["--reject_threshold", "0.5", "--other_label", "a,b"], "--other_label"),
        (["--reject_threshold", "0.5", "--other_label", "apple"], "--other_label"),  # a label of label.txt
        (["--reject_threshold", "0.5", "--task_type", "multi-label"], "--reject_threshold"),
        (["--calibrate", "--do_eval", "--resume_from_checkpoint", out], "--calibrate"),
        (["--explain"], "--explain"),  # without --do_predict
    ]
    for extra, flag in cases:
        argv = ["--model_name_or_path", "nowhere", "--data_dir", keyword_data, "--output_dir", out, *extra]
        if "--do_eval" not in extra:
            argv.append("--do_train")
        assert run_cli(train.main, argv) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith("error: ") and flag in err and "Traceback" not in err, (extra, err)
    data = os.path.join(keyword_data, "data.txt")
    for extra, flag in ((["--reject_threshold", "2"], "--reject_threshold"), (["--other_label", ""], "--other_label")):
        assert run_cli(infer.main, ["--model_path_prefix", "nowhere", "--input_file", data, *extra]) == 2
        err = capsys.readouterr().err
        assert flag in err and "Traceback" not in err


@pytest.fixture(scope="module")
def calibrated(tiny_model_dir, tmp_path_factory):
    """A short keyword-task run with --calibrate and a reject threshold, exported (onnx only)."""
    import train
    from utils.errors import run_cli
    from utils.testing.synthetic import PROMPT, write_keyword_dataset

    base = tmp_path_factory.mktemp("calibrated")
    data_dir = write_keyword_dataset(str(base / "data"), train_per_class=16)
    out = str(base / "out")
    argv = ["--model_name_or_path", tiny_model_dir, "--data_dir", data_dir, "--output_dir", out, "--prompt", PROMPT,
            "--do_train", "--do_eval", "--do_predict", "--do_export", "--export_type", "onnx", "--max_steps", "60",
            "--evaluation_strategy", "no", "--save_strategy", "no", "--calibrate", "--reject_threshold", "0.6",
            "--other_label", "unknown", "--explain", *FAST]
    assert run_cli(train.main, argv) == 0
    return data_dir, out


def test_calibration_is_saved_and_used_everywhere(calibrated, tmp_path):
    from utils.deploy.classifier import Classifier

    data_dir, out = calibrated
    with open(os.path.join(out, "ptuning_config.json"), encoding="utf-8") as fp:
        spec = json.load(fp)
    with open(os.path.join(out, "eval_results.json"), encoding="utf-8") as fp:
        results = json.load(fp)
    assert spec["temperature"] == pytest.approx(results["eval_temperature"]) and spec["temperature"] != 1.0
    assert spec["reject_threshold"] == 0.6 and spec["other_label"] == "unknown"
    assert results["eval_ece"] <= results["eval_ece_uncalibrated"] + 1e-9
    assert results["eval_nll"] <= results["eval_nll_uncalibrated"] + 1e-9
    assert 0 <= results["eval_coverage"] <= 1
    for name in ("eval_reliability.png", "eval_coverage.tsv", "test_reliability.png", "test_coverage.tsv",
                 # --explain (utils/reporting/explain.py): attributions of test/data texts and the bad-case report
                 "test_explanations.html", "test_explanations.json", "test_bad_cases.html", "test_bad_cases.json",
                 "data_explanations.html"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    header, rows = read_tsv(os.path.join(out, "eval_coverage.tsv"))
    assert header == ["threshold", "answered", "coverage", "accuracy"] and "0.60" in [r[0] for r in rows]

    with open(os.path.join(out, "export", "manifest.json"), encoding="utf-8") as fp:
        manifest = json.load(fp)
    assert manifest["temperature"] == spec["temperature"] and manifest["reject_threshold"] == 0.6
    classifier = Classifier(os.path.join(out, "export"))
    texts = [line.split("\t")[0] for line in open(os.path.join(data_dir, "dev.txt"), encoding="utf-8") if line.strip()]
    logits = classifier.logits(texts)
    probs = classifier.predict_proba(texts)
    np.testing.assert_allclose(probs, softmax(logits / spec["temperature"]), atol=1e-6)
    predictions = classifier.predict(texts)
    for p, row in zip(predictions, probs):
        assert p.label == ("unknown" if row.max() < 0.6 else classifier.labels[row.argmax()])
    assert classifier.temperature == spec["temperature"] and classifier.reject_threshold == 0.6
    assert classifier.other_label == "unknown"
    # train.py's prediction file and infer.py's (the export's reject option) agree row for row,
    # rejected texts included: text, gold, label (`unknown` below 0.6), confidence
    header, test_rows = read_tsv(os.path.join(out, "test_predictions.tsv"))
    classifier.classify_file(os.path.join(data_dir, "test.txt"), str(tmp_path / "same.tsv"), sort_by_length=False)
    assert read_tsv(str(tmp_path / "same.tsv")) == (header, test_rows)
    assert header[:4] == ["text", "gold", "label", "confidence"]
    # another threshold at inference: exactly the texts below it are `unsure`, the others keep their label
    strict = Classifier(os.path.join(out, "export"), reject_threshold=0.99, other_label="unsure")
    assert all(p.label == "unsure" for p, row in zip(strict.predict(texts), probs) if row.max() < 0.99)
    summary = strict.classify_file(os.path.join(data_dir, "test.txt"), str(tmp_path / "p.tsv"))
    assert summary["reject_threshold"] == 0.99 and "unsure" in summary["predicted_label_counts"]
    _, strict_rows = read_tsv(str(tmp_path / "p.tsv"))
    assert [r[:2] for r in strict_rows] == [r[:2] for r in test_rows]
    top = {r[0]: max(classifier.predict_proba([r[0]])[0]) for r in test_rows}
    for mine, theirs in zip(strict_rows, test_rows):
        assert mine[3] == theirs[3]  # the same confidence
        below = top[mine[0]] < 0.99
        assert mine[2] == ("unsure" if below else theirs[2]), (mine, theirs)
    answered = sum(r[2] != "unsure" for r in strict_rows)
    assert summary["coverage"] == pytest.approx(answered / len(strict_rows), abs=1e-4)


def test_the_service_reports_calibrated_confidences_and_the_other_label(calibrated):
    """The service over the calibrated export: every confidence is softmax(logits / T) with the
    export's temperature (not the raw softmax, which differs), and a text whose top probability is
    under the reject threshold is labelled `unknown`; /labels says so."""
    from conftest import ready_client
    from utils.deploy.classifier import Classifier
    from utils.serving.app import ServiceConfig, create_app

    data_dir, out = calibrated
    export = os.path.join(out, "export")
    classifier = Classifier(export, num_threads=1)
    texts = [line.split("\t")[0] for line in open(os.path.join(data_dir, "dev.txt"), encoding="utf-8") if line.strip()]
    logits = classifier.logits(texts)
    temperature = classifier.temperature
    calibrated_probs, raw_probs = softmax(logits / temperature), softmax(logits)
    assert temperature != 1.0 and not np.allclose(calibrated_probs, raw_probs, atol=1e-3)
    with ready_client(create_app(ServiceConfig(export, num_threads=1))) as client:
        labels = client.get("/labels").json()
        answers = client.post("/predict", json={"texts": texts, "top_k": 3}).json()["predictions"]
    assert labels["temperature"] == temperature and labels["reject_threshold"] == 0.6
    for answer, row in zip(answers, calibrated_probs):
        ranked = [t["label"] for t in answer["top_k"]]
        np.testing.assert_allclose([t["confidence"] for t in answer["top_k"]],
                                   [row[classifier.labels.index(name)] for name in ranked], atol=2e-6)
        assert answer["confidence"] == pytest.approx(row.max(), abs=2e-6)
        assert answer["label"] == ("unknown" if row.max() < 0.6 else classifier.labels[row.argmax()])
    assert any(a["label"] == "unknown" for a in answers)  # (the other label is exercised)


def test_a_checkpoint_takes_a_new_reject_threshold_into_its_export(calibrated, tiny_model_dir, tmp_path):
    import train
    from utils.errors import run_cli

    data_dir, out = calibrated
    target = str(tmp_path / "again")
    assert run_cli(train.main, ["--model_name_or_path", tiny_model_dir, "--data_dir", data_dir, "--output_dir", target,
                                "--resume_from_checkpoint", out, "--do_eval", "--do_export", "--export_type", "onnx",
                                "--reject_threshold", "0.35", "--other_label", "unsure"]) == 0
    with open(os.path.join(target, "export", "manifest.json"), encoding="utf-8") as fp:
        manifest = json.load(fp)
    assert manifest["reject_threshold"] == 0.35 and manifest["other_label"] == "unsure"
    with open(os.path.join(out, "ptuning_config.json"), encoding="utf-8") as fp:
        assert json.load(fp)["temperature"] == manifest["temperature"]  # the checkpoint's calibration kept
    with open(os.path.join(target, "eval_results.json"), encoding="utf-8") as fp:
        assert json.load(fp)["eval_reject_threshold"] == 0.35


def test_label_sets_are_calibrated_per_sigmoid_before_the_threshold_search(tiny_model_dir, tmp_path):
    import train
    from utils.errors import run_cli
    from utils.testing.synthetic import MULTI_LABEL_PROMPT, write_multilabel_keyword_dataset

    data_dir = write_multilabel_keyword_dataset(str(tmp_path / "data"), train=48, dev=24, test=12)
    out = str(tmp_path / "out")
    assert run_cli(train.main, ["--model_name_or_path", tiny_model_dir, "--data_dir", data_dir, "--output_dir", out,
                                "--task_type", "multi_label", "--prompt", MULTI_LABEL_PROMPT, "--threshold_search",
                                "global", "--calibrate", "--do_train", "--do_eval", "--max_steps", "30",
                                "--evaluation_strategy", "no", "--save_strategy", "no", *FAST]) == 0
    with open(os.path.join(out, "ptuning_config.json"), encoding="utf-8") as fp:
        spec = json.load(fp)
    with open(os.path.join(out, "eval_results.json"), encoding="utf-8") as fp:
        results = json.load(fp)
    assert spec["temperature"] == pytest.approx(results["eval_temperature"]) and spec["threshold_search"] == "global"
    assert results["eval_nll"] <= results["eval_nll_uncalibrated"] + 1e-9
    assert os.path.isfile(os.path.join(out, "eval_reliability.png"))
    assert not os.path.exists(os.path.join(out, "eval_coverage.tsv"))  # no reject option for label sets


def test_infer_reject_flags_that_do_not_fit_the_export_are_refused(trained, trained_multilabel, tmp_path, capsys):
    import infer
    from utils.errors import run_cli

    data_dir, out = trained
    target = tmp_path / "p.tsv"
    base = ["--input_file", os.path.join(data_dir, "data.txt"), "--output_file", str(target)]
    cases = [(os.path.join(out, "export"), ["--other_label", "x"], "--other_label"),  # no reject threshold anywhere
             (os.path.join(out, "export"), ["--reject_threshold", "0.5", "--other_label", "apple"], "--other_label"),
             (os.path.join(trained_multilabel[1], "export"), ["--reject_threshold", "0.5"], "--reject_threshold")]
    for export, extra, flag in cases:
        assert run_cli(infer.main, ["--model_path_prefix", export, *base, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith(f"error: {flag}: ") and "Traceback" not in err, (extra, err)
        assert not target.exists()
