"""--fuse_attention: paddle2onnx's attention subgraphs as onnxruntime's fused operators, held to parity.

The timing `auto` does is never asserted on: tests force `on`/`off`, or give `auto` a fake timer.
"""
import json
import os

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import export as export_cli
import infer
from conftest import read_tsv
from utils.deploy.preprocess import PromptPreprocessor
from utils.errors import run_cli
from utils.export import fusion
from utils.export.parity import FP16_TOLERANCE

LAYERS = 2  # the tiny ERNIE's (utils/testing/tiny_ernie.py)


@pytest.fixture(scope="module")
def fused_and_unfused(trained, tmp_path_factory):
    """The trained keyword model exported with fp16 and int8, `--fuse_attention on` and `off`."""
    data_dir, out = trained
    base = tmp_path_factory.mktemp("fusion")
    exports = {}
    for mode in ("on", "off"):
        exports[mode] = str(base / mode)
        assert run_cli(export_cli.main, ["--resume_from_checkpoint", out, "--output_dir", exports[mode], "--data_dir",
                                         data_dir, "--export_fp16", "--quantize", "int8", "--fuse_attention",
                                         mode]) == 0
    return exports


def manifest_of(export_dir):
    with open(os.path.join(export_dir, "manifest.json"), encoding="utf-8") as fp:
        return json.load(fp)


def ops(path):
    return [node.op_type for node in onnx.load(path).graph.node]


def outputs(path, feed):
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(["logits"], {i.name: feed[i.name] for i in session.get_inputs()})[0]


def test_every_attention_layer_becomes_one_fused_attention_node_and_no_softmax_is_left(fused_and_unfused):
    for name, op in (("model.onnx", "Attention"), ("model_int8.onnx", "MultiHeadAttention"),
                     ("model_fp16.onnx", "Attention")):
        fused = ops(os.path.join(fused_and_unfused["on"], name))
        unfused = ops(os.path.join(fused_and_unfused["off"], name))
        assert fused.count(op) == LAYERS and "Softmax" not in fused, (name, fused)
        assert unfused.count("Softmax") == LAYERS and not set(fusion.FUSED_OPS) & set(unfused), name
    # the int8 graph keeps its projections as int8 MatMuls (quantized as in the unfused graph)
    assert "MatMulInteger" in ops(os.path.join(fused_and_unfused["on"], "model_int8.onnx"))


def test_the_manifest_records_which_graph_each_file_is(fused_and_unfused):
    record = manifest_of(fused_and_unfused["on"])["onnx"]["attention_fusion"]
    assert record["mode"] == "on" and record["fused_layers"] == record["attention_subgraphs"] == LAYERS
    for variant in ("fp32", "int8", "fp16"):
        assert record[variant]["graph"] == "fused" and record[variant]["reason"] == "--fuse_attention on"
        assert record[variant]["op"] == fusion.OPS[variant]
        assert all(check.get("passed", True) for check in record[variant]["parity"]), record[variant]
    assert [c["max_abs_diff"] <= c["tolerance"] for c in record["fp32"]["parity"]] == [True, True]  # logits, vector
    off = manifest_of(fused_and_unfused["off"])["onnx"]["attention_fusion"]
    assert off["mode"] == "off" and {off[v]["graph"] for v in ("fp32", "int8", "fp16")} == {"unfused"}
    assert off["fp32"]["reason"] == "--fuse_attention off"
    files = manifest_of(fused_and_unfused["on"])["files"]
    assert not [name for name in files if name.startswith(".")]  # no candidate left in the export
    assert sorted(os.listdir(fused_and_unfused["on"])) == sorted(list(files) + ["README.md", "manifest.json"])
    with open(os.path.join(fused_and_unfused["on"], "README.md"), encoding="utf-8") as fp:
        assert "`model_int8.onnx` (int8, attention fused)" in fp.read()  # the model card says so too


def test_fused_graphs_compute_what_the_unfused_ones_do(fused_and_unfused, trained):
    data_dir, _ = trained
    on, off = fused_and_unfused["on"], fused_and_unfused["off"]
    with open(os.path.join(data_dir, "test.txt"), encoding="utf-8") as fp:
        texts = [line.split("\t")[0] for line in fp if line.strip()][:48] + ["长文本" * 40]
    pre = PromptPreprocessor.from_export(off)
    feed = pre.pad(pre.encode([{"text_a": t} for t in texts]))
    fp32 = outputs(os.path.join(off, "model.onnx"), feed)
    fused = outputs(os.path.join(on, "model.onnx"), feed)
    assert np.abs(fused - fp32).max() <= manifest_of(on)["parity"]["results"][0]["tolerance"]
    assert (fused.argmax(-1) == fp32.argmax(-1)).all()
    # int8: what the graph computes before a dynamic quantization decides its rounding, so the fused
    # graph's last-bit differences may move a logit by a quantization step; never by more than
    # quantization moves the unfused int8 graph away from fp32, and no prediction changes.
    fused, unfused = outputs(os.path.join(on, "model_int8.onnx"), feed), outputs(os.path.join(off, "model_int8.onnx"), feed)
    assert np.abs(fused - unfused).max() <= np.abs(unfused - fp32).max()
    assert (fused.argmax(-1) == unfused.argmax(-1)).all() and (fused.argmax(-1) == fp32.argmax(-1)).all()
    try:
        fp16 = outputs(os.path.join(on, "model_fp16.onnx"), feed)
    except Exception:  # an onnxruntime without fp16 CPU kernels: its structure is all one can check here
        fp16 = None
    if fp16 is not None:
        assert np.abs(fp16 - fp32).max() <= FP16_TOLERANCE and (fp16.argmax(-1) == fp32.argmax(-1)).all()
    weights = [t for t in onnx.load(os.path.join(on, "model_fp16.onnx")).graph.initializer if t.data_type in (1, 10)]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)


def test_infer_predicts_the_same_labels_with_the_fused_export(fused_and_unfused, trained, tmp_path, capsys):
    data_dir, _ = trained
    test_file = os.path.join(data_dir, "test.txt")
    rows = {}
    for mode, extra in (("on", []), ("off", []), ("on", ["--use_int8"]), ("off", ["--use_int8"])):
        output = str(tmp_path / f"{mode}{len(extra)}.tsv")
        assert run_cli(infer.main, ["--model_path_prefix", fused_and_unfused[mode], "--input_file", test_file,
                                    "--output_file", output, "--device", "cpu", *extra]) == 0
        rows[mode, len(extra)] = [row[2] for row in read_tsv(output)[1]]
    capsys.readouterr()
    assert rows["on", 0] == rows["off", 0] and rows["on", 1] == rows["off", 1] and len(rows["on", 0]) > 10


def test_a_fused_graph_that_fails_parity_is_not_kept_and_the_export_says_why(trained, tmp_path, monkeypatch):
    """A fusion that computes something else (here: the heads merged into one) must not replace the
    unfused graph; the export still succeeds, unfused, and records the failed check."""
    real = fusion.fuse_attention

    def one_head(model, multi_head=False):
        fused, count = real(model, multi_head)
        for node in fused.graph.node:
            for attribute in node.attribute:
                if node.op_type in fusion.FUSED_OPS and attribute.name == "num_heads":
                    attribute.i = 1
        return fused, count

    monkeypatch.setattr(fusion, "fuse_attention", one_head)
    data_dir, out = trained
    target = str(tmp_path / "export")
    assert run_cli(export_cli.main, ["--resume_from_checkpoint", out, "--output_dir", target, "--data_dir", data_dir,
                                     "--quantize", "int8", "--fuse_attention", "on"]) == 0
    manifest = manifest_of(target)
    record = manifest["onnx"]["attention_fusion"]
    assert record["fp32"]["graph"] == "unfused" and "fails its parity check" in record["fp32"]["reason"]
    assert record["int8"]["graph"] == "unfused" and "fails its parity check" in record["int8"]["reason"]
    assert "Softmax" in ops(os.path.join(target, "model.onnx")) and manifest["parity"]["passed"]
    assert not set(fusion.FUSED_OPS) & set(ops(os.path.join(target, "model_int8.onnx")))


def unfused_graph(fused_and_unfused):
    return onnx.load(os.path.join(fused_and_unfused["off"], "model.onnx"))


def test_a_graph_the_fusion_cannot_match_comes_back_unchanged(fused_and_unfused):
    """An attention whose scale is not 1/sqrt(head_size) (the fused kernel's) must not be fused."""
    model = unfused_graph(fused_and_unfused)
    assert fusion.fuse_attention(model)[1] == LAYERS  # the graph as exported matches
    for tensor in model.graph.initializer:
        value = numpy_helper.to_array(tensor)
        if value.size == 1 and np.isclose(float(value.reshape(())), 32 ** -0.5):  # head_size 32: the query's scale
            tensor.CopyFrom(numpy_helper.from_array(np.full_like(value, 0.3), tensor.name))
    before = model.SerializeToString()
    result, fused = fusion.fuse_attention(model)
    assert fused == 0 and result is model and model.SerializeToString() == before


def test_an_export_whose_graph_does_not_match_records_every_variant_unfused(fused_and_unfused, tmp_path,
                                                                            monkeypatch):
    monkeypatch.setattr(fusion, "normalise", lambda model: 0)  # as for a PLM whose attention looks different
    directory = str(tmp_path)
    onnx.save(unfused_graph(fused_and_unfused), os.path.join(directory, "model.onnx"))
    plan = fusion.AttentionFusion(directory, "auto", timer=pytest.fail)  # nothing to time
    assert plan.build() is None
    plan.fp32(None)
    plan.int8({}, None, 1e-4)
    plan.fp16({}, None)
    record = plan.finish()
    assert record["attention_subgraphs"] == LAYERS and record["fused_layers"] == 0
    assert {record[v]["graph"] for v in ("fp32", "int8", "fp16")} == {"unfused"}
    assert "no attention subgraph" in record["fp32"]["reason"] and os.listdir(directory) == ["model.onnx"]


@pytest.mark.parametrize("speedup, kept", [(1.25, "fused"), (0.8, "unfused")])
def test_auto_keeps_the_fused_graph_only_when_its_timing_says_faster_and_records_it(
        fused_and_unfused, tmp_path, speedup, kept):
    directory = str(tmp_path)
    onnx.save(unfused_graph(fused_and_unfused), os.path.join(directory, "model.onnx"))
    timed = []

    def timer(unfused, fused, feed):
        timed.append((os.path.basename(unfused), feed))
        return {"rounds": 5, "batch": [8, 20], "unfused_ms": 10.0, "fused_ms": 10.0 / speedup, "speedup": speedup}

    plan = fusion.AttentionFusion(directory, "auto", timing_feed={"input_ids": "the timing batch"}, timer=timer)
    assert plan.build() is not None
    plan.fp32([{"backend": "onnxruntime, attention fused", "passed": True}])
    record = plan.finish()
    assert timed == [("model.onnx", {"input_ids": "the timing batch"})]
    assert record["fp32"]["graph"] == kept and record["fp32"]["timing"]["speedup"] == speedup
    assert f"{speedup:.3f}x" in record["fp32"]["reason"]
    assert ("Attention" in ops(os.path.join(directory, "model.onnx"))) is (kept == "fused")
    assert os.listdir(directory) == ["model.onnx"]


def test_auto_export_times_fp32_and_int8_and_records_its_decision(trained, tmp_path):
    """Whatever the timing says on this machine: a decision per variant, with the numbers behind it."""
    data_dir, out = trained
    target = str(tmp_path / "export")
    assert run_cli(export_cli.main, ["--resume_from_checkpoint", out, "--output_dir", target, "--data_dir", data_dir,
                                     "--quantize", "int8", "--export_fp16", "--fuse_attention", "auto"]) == 0
    record = manifest_of(target)["onnx"]["attention_fusion"]
    assert record["mode"] == "auto" and record["fused_layers"] == LAYERS
    for variant in ("fp32", "int8"):
        entry = record[variant]
        assert entry["graph"] in ("fused", "unfused") and entry["timing"]["rounds"] == fusion.TIMING_ROUNDS
        assert (entry["graph"] == "fused") is (entry["timing"]["speedup"] > 1.0)
        shipped = ops(os.path.join(target, "model.onnx" if variant == "fp32" else "model_int8.onnx"))
        assert (fusion.OPS[variant] in shipped) is (entry["graph"] == "fused")
    assert record["fp16"]["graph"] == "unfused" and "onnxruntime-gpu" in record["fp16"]["reason"]
    assert not set(fusion.FUSED_OPS) & set(ops(os.path.join(target, "model_fp16.onnx")))


def test_an_export_is_unfused_unless_asked(trained, tmp_path):
    """The default is off: measured no faster on the development machine (BENCHMARKS.md, issue 29), and
    an export that times itself would not be reproducible."""
    data_dir, out = trained
    target = str(tmp_path / "export")
    assert run_cli(export_cli.main, ["--resume_from_checkpoint", out, "--output_dir", target, "--data_dir",
                                     data_dir]) == 0
    record = manifest_of(target)["onnx"]["attention_fusion"]
    assert record["mode"] == "off" and "Attention" not in ops(os.path.join(target, "model.onnx"))
