"""export.py / train.py --do_export: layout, folding, the parity gate, fp16, atomicity."""
import json
import os

import numpy as np
import paddle
import pytest

import export as export_cli
import infer
from conftest import read_tsv
from helpers import break_onnx_conversion
from utils.export import graph as export_graph
from utils.export import parity as export_parity
from utils.export import pipeline as export_mod
from utils.errors import UserError, run_cli
from utils.dataset.labels import LabelSet
from utils.model.assembly import build_prompt_model
from utils.model.plm import load_plm
from utils.model.prompt import build_template


def test_do_export_layout_and_manifest(trained):
    _, out = trained
    export_dir = os.path.join(out, "export")
    names = set(os.listdir(export_dir))
    assert {"model.json", "model.pdiparams", "model.onnx", "vocab.txt", "tokenizer_config.json",
            "preprocess.json", "template.json", "labels.json", "manifest.json"} <= names
    assert not any(n.endswith((".pdparams", ".pdopt", ".pth", ".bin")) for n in names)  # no pickles to serve
    with open(os.path.join(export_dir, "manifest.json"), encoding="utf-8") as fp:
        manifest = json.load(fp)
    assert [i["name"] for i in manifest["inputs"]] == ["input_ids", "token_type_ids", "position_ids",
                                                       "soft_token_ids"]
    assert manifest["prompt_encoder_folded"] is True and manifest["max_seq_length"] == 40
    assert manifest["onnx"]["opset"] >= 13
    assert manifest["parity"]["passed"]
    for result in manifest["parity"]["results"]:
        assert result["max_abs_diff"] <= 1e-4 and result["argmax_agreement"] == 1.0
    assert {"paddle", "paddlenlp", "paddle2onnx", "onnxruntime"} <= set(manifest["versions"])
    with open(os.path.join(export_dir, "labels.json"), encoding="utf-8") as fp:
        labels = json.load(fp)
    assert [e["label"] for e in labels] == ["apple", "banana", "grape"]
    assert [e["word"] for e in labels] == ["红色", "黄色", "紫色"]
    for name, info in manifest["files"].items():
        assert os.path.getsize(os.path.join(export_dir, name)) == info["bytes"]


def test_onnx_graph_has_no_lstm_and_dynamic_axes(trained):
    import onnx

    model = onnx.load(os.path.join(trained[1], "export", "model.onnx"))
    assert not {n.op_type for n in model.graph.node} & {"LSTM", "GRU", "RNN", "Loop", "Scan"}
    inputs = {i.name: [d.dim_param for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert inputs == {n: ["batch", "sequence"] for n in ("input_ids", "token_type_ids", "position_ids",
                                                         "soft_token_ids")}
    assert [o.name for o in model.graph.output] == ["logits", "mask_embedding"]


@pytest.mark.parametrize("encoder", ["lstm", "mlp", "none"])
def test_folded_model_equals_unfolded(tiny_model_dir, encoder):
    paddle.seed(3)
    plm, tokenizer = load_plm(tiny_model_dir)
    parts = build_template("这句话说的水果是", encoder, 16, num_virtual_tokens=10)
    model = build_prompt_model(plm, tokenizer, parts, LabelSet({"a": "红色", "b": "黄色", "c": "紫色"}), 32)
    model.eval()
    from paddlenlp.prompt import PromptDataCollatorWithPadding

    texts = ["苹果", "香蕉很好吃", "葡萄" * 30, "一"]
    batch = PromptDataCollatorWithPadding(tokenizer, return_tensors="pd")([model.template({"text_a": t}) for t in texts])
    batch.pop("labels", None)
    folded = export_graph.FoldedPromptModel(model)
    with paddle.no_grad():
        unfolded = model(**batch).numpy()
        result = folded(batch["input_ids"], batch["token_type_ids"], batch["position_ids"],
                        batch["soft_token_ids"]).numpy()
    np.testing.assert_allclose(result, unfolded, atol=1e-5)


def onnx_type(name):
    import onnx

    return getattr(onnx.TensorProto, name)


def onnx_initializers(path):
    import onnx

    return list(onnx.load(path).graph.initializer)


def assert_fp16_model(fp32_path, fp16_path, parity, texts):
    """model_fp16.onnx has float16 weights and float32 inputs/outputs (checked on every machine with
    onnx), and its parity entry is honest: checked, and within tolerance, exactly where onnxruntime on
    this machine can run it; otherwise it records why not."""
    import onnx
    import onnxruntime as ort

    from utils.deploy.preprocess import PromptPreprocessor

    fp32, fp16 = onnx.load(fp32_path), onnx.load(fp16_path)
    weights = [t for t in fp16.graph.initializer if t.data_type in (onnx_type("FLOAT"), onnx_type("FLOAT16"))]
    assert weights and all(t.data_type == onnx_type("FLOAT16") for t in weights), \
        [t.name for t in weights if t.data_type != onnx_type("FLOAT16")][:5]
    float_weights_in_fp32 = [t for t in fp32.graph.initializer if t.data_type == onnx_type("FLOAT")]
    assert len(weights) == len(float_weights_in_fp32)  # every float weight was converted

    def io(model):
        return [(v.name, v.type.tensor_type.elem_type) for v in list(model.graph.input) + list(model.graph.output)]

    assert io(fp16) == io(fp32)  # same names and types: int64 ids in, float32 logits out
    assert dict(io(fp16))["logits"] == onnx_type("FLOAT")

    pre = PromptPreprocessor.from_export(os.path.dirname(fp16_path))
    batch = pre.pad(pre.encode([{"text_a": t} for t in texts]))
    feed = {i.name: batch[i.name] for i in fp32.graph.input}
    reference = ort.InferenceSession(fp32_path, providers=["CPUExecutionProvider"]).run(["logits"], feed)[0]
    try:
        logits = ort.InferenceSession(fp16_path, providers=["CPUExecutionProvider"]).run(["logits"], feed)[0]
    except Exception as exc:  # onnxruntime builds without fp16 CPU kernels
        logits, why = None, exc
    assert parity["checked"] is (logits is not None), parity
    if logits is None:
        assert type(why).__name__ in parity["reason"], (parity, why)
        return
    assert logits.dtype == np.float32
    np.testing.assert_allclose(logits, reference, atol=export_parity.FP16_TOLERANCE)
    assert (logits.argmax(-1) == reference.argmax(-1)).all()
    assert parity["passed"] and parity["argmax_agreement"] == 1.0, parity
    assert 0 < parity["max_abs_diff"] <= export_parity.FP16_TOLERANCE, parity  # fp16 rounding shows, within limits


def test_export_cli_onnx_type_fp16_and_refusal_to_overwrite(trained, tmp_path, capsys):
    data_dir, out = trained
    target = str(tmp_path / "exp")
    argv = ["--resume_from_checkpoint", out, "--output_dir", target, "--data_dir", data_dir,
            "--export_type", "onnx", "--export_fp16", "--quantize", "int8",
            "--fuse_attention", "off"]  # model.onnx and model_fp16.onnx the same graph (fusion: test_attention_fusion)
    assert run_cli(export_cli.main, argv) == 0
    names = set(os.listdir(target))
    assert {"model.onnx", "model_fp16.onnx", "model_int8.onnx"} <= names and "model.json" not in names
    assert os.path.getsize(os.path.join(target, "model_int8.onnx")) < os.path.getsize(os.path.join(target, "model.onnx"))
    with open(os.path.join(target, "manifest.json"), encoding="utf-8") as fp:
        manifest = json.load(fp)
    assert manifest["onnx"]["fp16"] == "model_fp16.onnx" and manifest["paddle"] is None
    with open(os.path.join(data_dir, "test.txt"), encoding="utf-8") as fp:
        texts = [line.split("\t")[0] for line in fp if line.strip()]
    assert_fp16_model(os.path.join(target, "model.onnx"), os.path.join(target, "model_fp16.onnx"),
                      manifest["parity"]["fp16"], texts)
    assert manifest["onnx"]["int8"] == "model_int8.onnx"
    int8_types = {t.data_type for t in onnx_initializers(os.path.join(target, "model_int8.onnx"))}
    assert int8_types & {onnx_type("INT8"), onnx_type("UINT8")}, int8_types  # really quantized weights
    int8_parity = manifest["parity"]["int8"]
    # Quantization moves the logits (it is not the fp32 model), yet on the trained keyword model it keeps
    # the predicted labels of the sample batch.
    assert int8_parity["max_abs_diff"] > 0 and int8_parity["argmax_agreement"] >= 0.9, int8_parity
    printed = capsys.readouterr().out
    assert "parity onnxruntime" in printed and "int8 vs fp32" in printed

    # infer.py --use_int8 serves it; on the trained keyword model it agrees with fp32
    fp32, int8 = str(tmp_path / "fp32.tsv"), str(tmp_path / "int8.tsv")
    test_file = os.path.join(data_dir, "test.txt")
    for output, extra in ((fp32, []), (int8, ["--use_int8"])):
        assert run_cli(infer.main, ["--model_path_prefix", target, "--input_file", test_file, "--output_file",
                                    output, "--device", "cpu", *extra]) == 0
    capsys.readouterr()
    labels = [[row[2] for row in read_tsv(path)[1]] for path in (fp32, int8)]
    assert np.mean([a == b for a, b in zip(*labels)]) >= 0.9

    before = os.path.getmtime(os.path.join(target, "model.onnx"))
    assert run_cli(export_cli.main, argv) == 2
    assert "--overwrite_output_dir" in capsys.readouterr().err
    assert os.path.getmtime(os.path.join(target, "model.onnx")) == before


def test_parity_gate_catches_a_broken_export(trained, tmp_path, monkeypatch):
    """Break the ONNX graph after conversion: the gate must refuse and publish nothing."""
    break_onnx_conversion(monkeypatch)
    target = tmp_path / "broken"
    with pytest.raises(export_graph.ExportError) as info:
        export_mod.export_checkpoint(trained[1], str(target))
    message = str(info.value)
    assert "parity gate failed" in message and "onnxruntime: max |Δ|" in message
    assert "paddle_inference: max |Δ|" in message
    assert not target.exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith("broken")]  # no temp dir left behind


def test_export_errors(tmp_path, trained):
    with pytest.raises(UserError, match="checkpoint directory not found"):
        export_mod.export_checkpoint(str(tmp_path / "nope"), str(tmp_path / "out"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="ptuning_config.json is missing"):
        export_mod.export_checkpoint(str(tmp_path / "empty"), str(tmp_path / "out"))
    with pytest.raises(UserError, match="--export_type"):
        export_mod.export_checkpoint(trained[1], str(tmp_path / "out"), export_type="tensorrt")


def test_two_exports_into_one_directory_at_once_are_refused(trained, tmp_path, capsys):
    from utils.export.pipeline import export_lock

    target = tmp_path / "export"
    lock = export_lock(str(target)).acquire()  # another export.py holding the directory
    try:
        code = run_cli(export_cli.main, ["--resume_from_checkpoint", trained[1], "--output_dir", str(target)])
        err = capsys.readouterr().err
        assert code == 2 and "is in use by export.py (pid" in err and not target.exists()
    finally:
        lock.release()
    assert run_cli(export_cli.main, ["--resume_from_checkpoint", trained[1], "--output_dir", str(target)]) == 0
