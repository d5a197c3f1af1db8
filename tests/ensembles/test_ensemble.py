"""ensemble.py: N runs as one export averaging their probabilities; parity-gated against the members,
loaded by infer.py / the API / the service like any export, metrics beside the members', bad inputs."""
import json
import os

import numpy as np
import pytest
from helpers import break_onnx_conversion, copy_member, read_json, rename_label

import ensemble
import infer
from conftest import read_tsv, ready_client
from utils.errors import run_cli


def test_ensemble_export_parity(ensemble_run, ensemble_members):
    """The export's probabilities are the mean of the members' own (dynamic-graph) probabilities, and
    its member outputs each member's logits: on the parity batch (the gate) and on all of test.txt."""
    from utils.dataset.folder import load_dataset_dir
    from utils.task.decoding import softmax
    from utils.ensembles.evaluate import export_outputs
    from utils.model.assembly import model_logits, rebuild_from_checkpoint

    data_dir, out = ensemble_run
    export_dir = os.path.join(out, "export")
    manifest = read_json(os.path.join(export_dir, "manifest.json"))
    assert manifest["method"] == "ensemble" and manifest["parity"]["passed"]
    backends = [r["backend"] for r in manifest["parity"]["results"]]
    assert backends == ["paddle_inference", "onnxruntime"] + [f"onnxruntime member {i}" for i in range(3)]
    assert all(r["max_abs_diff"] <= 1e-4 and r["agreement"] == 1.0 for r in manifest["parity"]["results"])
    # P-tuning members share one template; the fine-tuning member reads [CLS] text [SEP]: two views.
    assert manifest["ensemble"]["views"] == 2
    assert [m["view"] for m in manifest["ensemble"]["members"]] == [0, 0, 1]
    assert {i["name"] for i in manifest["inputs"]} >= {"input_ids", "input_ids_v1", "soft_token_ids_v1"}

    test = load_dataset_dir(data_dir, need_train=False, need_dev=False, need_test=True).test
    logits, member_logits = export_outputs(export_dir, test)
    reference = []
    for member, exported in zip(ensemble_members[1], member_logits):
        model, _, _ = rebuild_from_checkpoint(member)
        own = model_logits(model, test)
        np.testing.assert_allclose(exported, own, atol=1e-4)
        reference.append(softmax(own))
    np.testing.assert_allclose(softmax(logits), np.mean(reference, axis=0), atol=1e-5)


def test_ensemble_loads_like_any_export(ensemble_run, tmp_path, capsys):
    """infer.py, the Python API and the service read the ensemble export with no flag, and agree with
    ensemble.py's own test predictions."""
    from utils import Classifier
    from utils.serving.app import ServiceConfig, create_app

    data_dir, out = ensemble_run
    export_dir = os.path.join(out, "export")
    output = str(tmp_path / "pred.tsv")
    assert run_cli(infer.main, ["--model_path_prefix", os.path.join(export_dir, "model"), "--input_file",
                                os.path.join(data_dir, "test.txt"), "--output_file", output]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert read_tsv(output) == read_tsv(os.path.join(out, "test_predictions.tsv"))
    assert summary["accuracy"] == pytest.approx(read_json(os.path.join(out, "test_results.json"))["test_accuracy"],
                                                abs=1e-4)
    _, rows = read_tsv(output)
    texts = [row[0] for row in rows[:5]]
    predictions = Classifier(export_dir, num_threads=1).predict(texts)
    assert [p.label for p in predictions] == [row[2] for row in rows[:5]]
    with ready_client(create_app(ServiceConfig(export_dir, num_threads=1))) as client:
        body = client.post("/predict", json={"texts": texts}).json()
    assert [p["label"] for p in body["predictions"]] == [row[2] for row in rows[:5]]


def test_an_ensemble_fuses_every_members_attention_under_the_members_parity_checks(ensemble_run, ensemble_members,
                                                                                  tmp_path, capsys):
    """--fuse_attention on: the members' six attention layers (three tiny ERNIEs, two views) become
    fused Attention nodes, held to the gate's checks of the ensemble, each member and the vector;
    infer.py predicts what the ensemble predicted."""
    import onnx

    data_dir, members = ensemble_members
    out = str(tmp_path / "fused")
    assert run_cli(ensemble.main, ["--members", *members, "--output_dir", out, "--data_dir", data_dir,
                                   "--quantize", "int8", "--fuse_attention", "on"]) == 0
    export_dir = os.path.join(out, "export")
    record = read_json(os.path.join(export_dir, "manifest.json"))["onnx"]["attention_fusion"]
    assert record["attention_subgraphs"] == record["fused_layers"] == 6
    assert record["fp32"]["graph"] == record["int8"]["graph"] == "fused"
    checked = [c["backend"] for c in record["fp32"]["parity"]]
    assert checked == ["onnxruntime, attention fused"] + [f"onnxruntime, attention fused member {i}" for i in range(3)] \
        + ["onnxruntime, attention fused mask_embedding"]
    model = onnx.load(os.path.join(export_dir, "model.onnx"))
    assert [n.op_type for n in model.graph.node].count("Attention") == 6
    output = str(tmp_path / "pred.tsv")
    assert run_cli(infer.main, ["--model_path_prefix", export_dir, "--input_file", os.path.join(data_dir, "test.txt"),
                                "--output_file", output]) == 0
    capsys.readouterr()
    predicted = [row[2] for row in read_tsv(output)[1]]
    assert predicted == [row[2] for row in read_tsv(os.path.join(ensemble_run[1], "test_predictions.tsv"))[1]]


def test_ensemble_metrics_beside_the_members(ensemble_run, ensemble_members):
    data_dir, out = ensemble_run
    summary = read_json(os.path.join(out, "ensemble.json"))
    assert summary["members"] == [os.path.abspath(m) for m in ensemble_members[1]]
    for prefix in ("eval", "test"):
        result = summary["metrics"][prefix]
        assert len(result["members"]) == 3
        accuracies = [m["accuracy"] for m in result["members"]]
        assert result["members_mean"]["accuracy"] == pytest.approx(np.mean(accuracies))
        assert read_json(os.path.join(out, f"{prefix}_results.json"))[f"{prefix}_accuracy"] == \
            result["ensemble"]["accuracy"]
    # each member's metrics equal those its own run wrote on the same dev.txt
    for member, metrics in zip(ensemble_members[1], summary["metrics"]["eval"]["members"]):
        assert metrics["accuracy"] == pytest.approx(read_json(os.path.join(member, "eval_results.json"))
                                                    ["eval_accuracy"])


def test_calibrated_members_are_averaged_calibrated(ensemble_members, tmp_path):
    """A member with a fitted temperature (train.py --calibrate) enters the mean with its calibrated
    probabilities, in the graph and in the parity gate's reference."""
    from utils.dataset.folder import load_dataset_dir
    from utils.task.decoding import softmax
    from utils.ensembles.evaluate import export_outputs

    data_dir, members = ensemble_members
    hot = copy_member(members[0], str(tmp_path / "hot"), edit_spec=lambda spec: spec.update(temperature=3.0))
    out = str(tmp_path / "ens")
    assert run_cli(ensemble.main, ["--members", hot, members[1], "--output_dir", out, "--data_dir", data_dir]) == 0
    assert read_json(os.path.join(out, "export", "manifest.json"))["parity"]["passed"]
    test = load_dataset_dir(data_dir, need_train=False, need_dev=False, need_test=True).test
    logits, member_logits = export_outputs(os.path.join(out, "export"), test)
    expected = np.mean([softmax(member_logits[0] / 3.0), softmax(member_logits[1])], axis=0)
    np.testing.assert_allclose(softmax(logits), expected, atol=1e-5)
    uncalibrated = np.mean([softmax(member_logits[0]), softmax(member_logits[1])], axis=0)
    assert np.abs(softmax(logits) - uncalibrated).max() > 1e-3  # the temperature changed something


def test_the_export_decodes_as_the_ensemble_not_as_its_first_member(ensemble_members, tmp_path, capsys):
    """The graph holds each member's temperature already: the export decodes its `logits` as
    ensemble.py did (infer.py predicts what test_predictions.tsv says), without a second pass of
    its first member's temperature or that member's reject option."""
    data_dir, members = ensemble_members
    first = copy_member(members[0], str(tmp_path / "calibrated"),
                        edit_spec=lambda spec: spec.update(temperature=3.0, reject_threshold=0.9))
    out = str(tmp_path / "ens")
    assert run_cli(ensemble.main, ["--members", first, members[1], "--output_dir", out, "--data_dir", data_dir,
                                   "--do_predict"]) == 0
    export_dir = os.path.join(out, "export")
    manifest = read_json(os.path.join(export_dir, "manifest.json"))
    assert manifest["temperature"] == 1.0 and manifest["reject_threshold"] is None, manifest
    output = str(tmp_path / "pred.tsv")
    assert run_cli(infer.main, ["--model_path_prefix", export_dir, "--input_file", os.path.join(data_dir, "test.txt"),
                                "--output_file", output]) == 0
    capsys.readouterr()
    assert read_tsv(output) == read_tsv(os.path.join(out, "test_predictions.tsv"))


def test_the_ensemble_passes_the_same_parity_gate_and_a_broken_export_is_not_published(ensemble_members, tmp_path,
                                                                                        capsys, monkeypatch):
    """A subtly wrong model.onnx: the gate every export passes refuses it with the numbers of both
    backends and of each member that disagrees; no export, no results, no half-written directory."""
    data_dir, members = ensemble_members
    break_onnx_conversion(monkeypatch)
    out = tmp_path / "ens"
    assert run_cli(ensemble.main, ["--members", *members[:2], "--output_dir", str(out), "--data_dir", data_dir,
                                   "--do_eval"]) == 2
    err = capsys.readouterr().err
    assert "parity gate failed, the ensemble export does not reproduce its members" in err, err
    assert "paddle_inference: max |Δ|" in err and "onnxruntime: max |Δ|" in err and "onnxruntime member" in err
    assert not out.exists()


def multi_label(spec):
    spec["task_type"] = "multi-label"
    spec["verbalizer"] = "soft"


@pytest.mark.parametrize("case, expected", [
    ("one member", "--members: an ensemble needs at least two members, got 1"),
    ("same member twice", "is given twice"),
    ("missing member", "member not found"),
    ("an export as member", "is an export; an ensemble is built from trained models"),
    ("mismatched label sets", "ptuning_config.json: labels ['apple', 'banana', 'melon'] differ from those of"),
    ("another task type", "is a --task_type multi-label model"),
    ("another vocabulary", "vocab.txt: differs from"),
    ("label.txt of other labels", "label.txt: lists labels"),
    ("threshold for multi-class", "--threshold: is for multi-label and hierarchical ensembles"),
    ("evaluation without data", "--do_eval: needs --data_dir"),
])
def test_bad_inputs(case, expected, ensemble_members, tmp_path, capsys, monkeypatch):
    """One paragraph naming the file or flag, exit 2, nothing written, before any member's weights load."""
    import utils.ensembles.graph

    data_dir, members = ensemble_members
    monkeypatch.setattr(utils.ensembles.graph, "load_models", lambda plan: pytest.fail("a model was loaded"))
    first, second = members[0], members[1]
    argv = {
        "one member": [first],
        "same member twice": [first, first + "/"],
        "missing member": [first, str(tmp_path / "nope")],
        "an export as member": [first, os.path.join(first, "export")],
        "mismatched label sets": [first, lambda: copy_member(second, str(tmp_path / "m"), rename_label)],
        "another task type": [first, lambda: copy_member(second, str(tmp_path / "m"), multi_label)],
        "another vocabulary": [first, lambda: copy_member(second, str(tmp_path / "m"), edit_vocab="新词")],
        "label.txt of other labels": [first, second],
        "threshold for multi-class": [first, second, "--threshold", "0.3"],
        "evaluation without data": [first, second, "--do_eval"],
    }[case]
    members_argv = [a() if callable(a) else a for a in argv]
    flags = [a for a in members_argv if a.startswith("--") or a == "0.3"]
    paths = [a for a in members_argv if a not in flags]
    data = data_dir
    if case == "label.txt of other labels":
        data = tmp_path / "data"
        data.mkdir()
        (data / "label.txt").write_text("apple==红色\nbanana==黄色\nmelon==绿色\n", encoding="utf-8")
        (data / "dev.txt").write_text("苹果\tapple\n", encoding="utf-8")
        data = str(data)
    out = tmp_path / "ens"
    data_flags = [] if case == "evaluation without data" else ["--data_dir", data]
    assert run_cli(ensemble.main, ["--members", *paths, "--output_dir", str(out), *data_flags, *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 2  # the paragraph and the --debug hint
    assert not out.exists()


def test_existing_results_are_not_overwritten(ensemble_run, ensemble_members, capsys):
    _, out = ensemble_run
    before = read_json(os.path.join(out, "ensemble.json"))
    assert run_cli(ensemble.main, ["--members", *ensemble_members[1][:2], "--output_dir", out]) == 2
    assert "--overwrite_output_dir" in capsys.readouterr().err
    assert read_json(os.path.join(out, "ensemble.json")) == before


def test_members_that_read_long_texts_must_cut_documents_alike():
    """Checked from the specs alone: another stride, aggregation or mode, or another prompt or length (a second
    view), would give the members different windows of the same document; one reading is accepted."""
    from types import SimpleNamespace

    from utils.ensembles.plan import check_same_windows
    from utils.errors import UserError
    from utils.task.windows import LongText

    def member(path, **long_text):
        return SimpleNamespace(path=path, spec=SimpleNamespace(long_text=LongText(**long_text)))

    window = member("a", mode="window")
    check_same_windows([window, member("b", mode="window")], views=1)
    check_same_windows([member("a"), member("b")], views=2)                   # no long texts: views may differ
    for other, needle in ((member("b", mode="window", stride=20), "stride 20"),
                          (member("b", mode="window", aggregation="max"), "max"),
                          (member("b", mode="head_tail"), "--long_text head_tail"),
                          (member("b"), "--long_text truncate")):
        with pytest.raises(UserError, match="must cut and aggregate documents alike") as error:
            check_same_windows([window, other], views=1)
        assert needle in str(error.value) and "stride half a window" in str(error.value)
    with pytest.raises(UserError, match="through 2 different templates or lengths"):
        check_same_windows([window, member("b", mode="window")], views=2)
