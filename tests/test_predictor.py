"""infer.py on an export: same predictions as training, formats, no Paddle, clear errors."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import infer
from conftest import ROOT, read_tsv
from utils.errors import UserError, run_cli
from utils.predictor import ExportedClassifier, write_results


@pytest.fixture
def export_copy(trained, tmp_path):
    target = tmp_path / "export"
    shutil.copytree(os.path.join(trained[1], "export"), target)
    return str(target)


def test_infer_reproduces_training_predictions(trained, tmp_path, capsys):
    data_dir, out = trained
    output = str(tmp_path / "pred.tsv")
    assert run_cli(infer.main, ["--model_path_prefix", os.path.join(out, "export", "model"), "--input_file",
                                os.path.join(data_dir, "test.txt"), "--output_file", output,
                                "--device", "cpu", "--batch_size", "5"]) == 0
    summary = json.loads(capsys.readouterr().out)
    header, rows = read_tsv(output)
    assert header == ["text", "gold", "label", "confidence"]
    _, trained_rows = read_tsv(os.path.join(out, "test_predictions.tsv"))
    assert [r[:3] for r in rows] == [r[:3] for r in trained_rows]  # text, gold, predicted
    np.testing.assert_allclose([float(r[3]) for r in rows], [float(r[3]) for r in trained_rows], atol=1e-4)
    with open(os.path.join(out, "test_results.json"), encoding="utf-8") as fp:
        assert summary["accuracy"] == pytest.approx(json.load(fp)["test_accuracy"], abs=1e-4)
    assert summary["texts"] == len(rows) and sum(summary["predicted_label_counts"].values()) == len(rows)


def test_data_dir_jsonl_top_k_and_batching_order(trained, tmp_path):
    data_dir, out = trained
    export_dir = os.path.join(out, "export")
    jsonl = str(tmp_path / "pred.jsonl")
    assert run_cli(infer.main, ["--model_path_prefix", export_dir, "--data_dir", data_dir, "--output_file", jsonl,
                                "--top_k", "2", "--device", "cpu"]) == 0
    with open(jsonl, encoding="utf-8") as fp:
        records = [json.loads(line) for line in fp]
    with open(os.path.join(data_dir, "data.txt"), encoding="utf-8") as fp:
        assert [r["text"] for r in records] == [line.strip() for line in fp if line.strip()]
    for record in records:
        assert record["label"] == record["top_k"][0]["label"]
        assert record["top_k"][0]["confidence"] >= record["top_k"][1]["confidence"]
        assert len(record["top_k"]) == 2
    _, trained_rows = read_tsv(os.path.join(out, "data_predictions.tsv"))
    assert [r["label"] for r in records] == [r[1] for r in trained_rows]

    classifier = ExportedClassifier(export_dir, num_threads=1)
    examples = [{"text_a": r["text"]} for r in records] * 3
    sorted_logits = classifier.logits(examples, batch_size=4, sort_by_length=True)
    file_logits = classifier.logits(examples, batch_size=4, sort_by_length=False)
    np.testing.assert_allclose(sorted_logits, file_logits, atol=1e-5)


def test_write_results_pairs_tsv(tmp_path):
    path = str(tmp_path / "o.tsv")
    probs = np.array([[0.2, 0.8], [0.6, 0.4]])
    write_results(path, [{"text_a": "甲", "text_b": "乙"}, {"text_a": "丙", "text_b": "丁"}], probs, ["x", "y"],
                  top_k=2)
    header, rows = read_tsv(path)
    assert header == ["text_a", "text_b", "label", "confidence", "label_2", "confidence_2"]
    assert rows == [["甲", "乙", "y", "0.800000", "x", "0.200000"], ["丙", "丁", "x", "0.600000", "y", "0.400000"]]


BLOCK_PADDLE = """
import runpy, sys
class BlockPaddle:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('paddle', 'paddlenlp', 'paddle2onnx'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, BlockPaddle())
sys.argv = ['infer.py'] + sys.argv[1:]
runpy.run_path('infer.py', run_name='__main__')
"""


def test_infer_runs_without_paddle(trained, tmp_path):
    data_dir, out = trained
    output = tmp_path / "p.tsv"
    result = subprocess.run([sys.executable, "-c", BLOCK_PADDLE, "--model_path_prefix",
                             os.path.join(out, "export"), "--data_dir", data_dir, "--output_file", str(output),
                             "--device", "cpu"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(read_tsv(str(output))[1]) > 0


def run_infer(capsys, *argv):
    code = run_cli(infer.main, list(argv))
    return code, capsys.readouterr().err


def test_errors(export_copy, trained, tmp_path, capsys):
    data_dir = trained[0]
    common = ["--data_dir", data_dir, "--output_file", str(tmp_path / "o.tsv"), "--device", "cpu"]

    code, err = run_infer(capsys, "--model_path_prefix", str(tmp_path), *common)
    assert code == 2 and "is not an export directory (manifest.json missing)" in err and "export.py" in err

    code, err = run_infer(capsys, "--model_path_prefix", export_copy, "--device", "cpu")
    assert code == 2 and "--input_file FILE or --data_dir" in err

    code, err = run_infer(capsys, "--model_path_prefix", export_copy, "--input_file", str(tmp_path / "none.txt"))
    assert code == 2 and "input file not found" in err

    code, err = run_infer(capsys, "--model_path_prefix", export_copy, "--max_seq_length", "4096", *common)
    assert code == 2 and "longer than the 40" in err

    code, err = run_infer(capsys, "--model_path_prefix", export_copy, "--device", "gpu", "--data_dir", data_dir)
    assert code == 2 and "onnxruntime-gpu" in err and "Traceback" not in err

    with pytest.raises(UserError, match="export it with --export_fp16"):
        ExportedClassifier(export_copy, device="gpu", use_fp16=True)
    with pytest.raises(UserError, match="export it with --quantize int8"):
        ExportedClassifier(export_copy, use_int8=True)

    onnx_path = os.path.join(export_copy, "model.onnx")
    size = os.path.getsize(onnx_path)
    with open(onnx_path, "r+b") as fp:  # same size, garbage content
        fp.write(b"\x00garbage" * 64)
    code, err = run_infer(capsys, "--model_path_prefix", export_copy, *common)
    assert code == 2 and "onnxruntime cannot load the model" in err

    with open(onnx_path, "r+b") as fp:
        fp.truncate(size // 2)
    code, err = run_infer(capsys, "--model_path_prefix", export_copy, *common)
    assert code == 2 and "corrupt or truncated" in err

    os.remove(onnx_path)
    code, err = run_infer(capsys, "--model_path_prefix", export_copy, *common)
    assert code == 2 and "model.onnx is missing" in err

    with open(os.path.join(export_copy, "manifest.json"), "w", encoding="utf-8") as fp:
        fp.write('{"format": 1, "files": ')
    code, err = run_infer(capsys, "--model_path_prefix", export_copy, *common)
    assert code == 2 and "manifest.json is corrupt" in err
    assert not (tmp_path / "o.tsv").exists()  # nothing written on any error
