"""infer.py on an export: same predictions as training, formats, no Paddle, clear errors."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import infer
from conftest import ROOT, read_tsv, resign
from helpers import BLOCK_PADDLE
from utils.errors import UserError, run_cli
from utils.deploy.predictor import ExportedClassifier


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
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    header, rows = read_tsv(output)
    assert header == ["text", "gold", "label", "confidence"]
    _, trained_rows = read_tsv(os.path.join(out, "test_predictions.tsv"))
    assert [r[:3] for r in rows] == [r[:3] for r in trained_rows]  # text, gold, predicted
    np.testing.assert_allclose([float(r[3]) for r in rows], [float(r[3]) for r in trained_rows], atol=1e-4)
    with open(os.path.join(out, "test_results.json"), encoding="utf-8") as fp:
        trained_results = json.load(fp)
    assert summary["accuracy"] == pytest.approx(trained_results["test_accuracy"], abs=1e-4)
    assert summary["macro_f1"] == pytest.approx(trained_results["test_macro_f1"], abs=1e-4)
    assert summary["texts"] == len(rows) and sum(summary["predicted_label_counts"].values()) == len(rows)
    # stderr is no terminal here: progress comes as lines, and the last one says 100%
    assert captured.err.splitlines()[-1].startswith(f"infer: {len(rows)}/{len(rows)} texts (100%)")


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


INFER_WITHOUT_PADDLE = BLOCK_PADDLE + """
import runpy
sys.argv = ['infer.py'] + sys.argv[1:]
runpy.run_path('infer.py', run_name='__main__')
"""


def test_infer_runs_without_paddle(trained, tmp_path):
    data_dir, out = trained
    output = tmp_path / "p.tsv"
    result = subprocess.run([sys.executable, "-c", INFER_WITHOUT_PADDLE, "--model_path_prefix",
                             os.path.join(out, "export"), "--data_dir", data_dir, "--output_file", str(output),
                             "--device", "cpu"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(read_tsv(str(output))[1]) > 0


def run_infer(capsys, *argv):
    code = run_cli(infer.main, list(argv))
    return code, capsys.readouterr().err


def test_errors(export_copy, trained, tmp_path, capsys, monkeypatch):
    data_dir = trained[0]
    common = ["--data_dir", data_dir, "--output_file", str(tmp_path / "o.tsv"), "--device", "cpu"]
    cwd = tmp_path / "cwd"  # where infer.py's default output would go: it must stay empty
    cwd.mkdir()
    monkeypatch.chdir(cwd)

    code, err = run_infer(capsys, "--model_path_prefix", str(tmp_path), *common)
    assert code == 2 and "is not an export directory (manifest.json missing)" in err and "export.py" in err

    code, err = run_infer(capsys, "--model_path_prefix", export_copy, "--device", "cpu")
    assert code == 2 and "--input_file FILE or --data_dir" in err

    code, err = run_infer(capsys, "--model_path_prefix", export_copy, "--input_file", str(tmp_path / "none.txt"))
    assert code == 2 and "input file not found" in err

    code, err = run_infer(capsys, "--model_path_prefix", export_copy, "--max_seq_length", "4096", *common)
    assert code == 2 and "longer than the 40" in err

    import onnxruntime

    with monkeypatch.context() as m:  # an onnxruntime without CUDA, on every machine (GPU or not)
        m.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
        code, err = run_infer(capsys, "--model_path_prefix", export_copy, *common, "--device", "gpu")
    assert code == 2 and "error: --device: --device gpu needs onnxruntime-gpu" in err and "Traceback" not in err
    assert "offers only CPUExecutionProvider" in err

    with pytest.raises(UserError, match="export it with --export_fp16"):
        ExportedClassifier(export_copy, device="gpu", use_fp16=True)
    with pytest.raises(UserError, match="export it with --quantize int8"):
        ExportedClassifier(export_copy, use_int8=True)

    onnx_path = os.path.join(export_copy, "model.onnx")
    size = os.path.getsize(onnx_path)
    with open(onnx_path, "r+b") as fp:  # same size, garbage content
        fp.write(b"\x00garbage" * 64)
    code, err = run_infer(capsys, "--model_path_prefix", export_copy, *common)
    assert code == 2 and "model.onnx: sha256 differs from manifest.json (modified or corrupt); export again" in err
    resign(export_copy, "model.onnx")  # the manifest agrees, the file still is no model
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

    with open(os.path.join(export_copy, "manifest.json"), "w", encoding="utf-8") as fp:
        fp.write("[" * 100_000 + "]" * 100_000)
    code, err = run_infer(capsys, "--model_path_prefix", export_copy, *common)
    assert code == 2 and "is corrupt: its JSON nests too deeply" in err and "Traceback" not in err
    assert not (tmp_path / "o.tsv").exists() and not os.listdir(cwd)  # nothing written on any error


# ------------------------------------------------------------------------------------ streaming

def keyword_lines(n, seed=5):
    """`n` lines in the test.txt layout, texts of varied lengths."""
    import random

    from utils.testing.synthetic import make_split

    return make_split(random.Random(seed), n // 3 + 1, min_len=1, max_len=30)[:n]


@pytest.fixture
def big_input(tmp_path):
    path = tmp_path / "big.txt"
    path.write_text("\n".join(keyword_lines(100)) + "\n", encoding="utf-8")
    return str(path)


def test_streaming_keeps_at_most_one_chunk_alive_and_writes_what_one_pass_writes(trained, big_input, tmp_path,
                                                                                monkeypatch):
    """Memory is bounded by construction: examples (and features) of one chunk at a time, however
    long the file; rows, order and values are those of classifying the whole file at once."""
    import weakref

    from utils.dataset.inputs import InputFile
    from utils.deploy.predictor import classify_file
    from utils.deploy.preprocess import PromptPreprocessor

    classifier = ExportedClassifier(os.path.join(trained[1], "export"), num_threads=1)
    whole = str(tmp_path / "whole.tsv")
    whole_summary = classify_file(classifier, big_input, whole, batch_size=5, chunk_size=10_000)

    class Example(dict):  # a dict that can be weakly referenced, to count the live ones
        pass

    alive, peak = [0], [0]
    parse = InputFile.parse

    def tracked_parse(self, number, line):
        example, gold = parse(self, number, line)
        example = Example(example)
        alive[0] += 1
        peak[0] = max(peak[0], alive[0])
        weakref.finalize(example, lambda: alive.__setitem__(0, alive[0] - 1))
        return example, gold

    encode = PromptPreprocessor.encode
    seen = []

    def counting_encode(self, examples):
        seen.append((len(examples), alive[0]))
        return encode(self, examples)

    monkeypatch.setattr(InputFile, "parse", tracked_parse)
    monkeypatch.setattr(PromptPreprocessor, "encode", counting_encode)
    streamed = str(tmp_path / "streamed.tsv")
    summary = classify_file(classifier, big_input, streamed, batch_size=5, chunk_size=16)
    assert [n for n, _ in seen] == [16] * 6 + [4]  # 7 chunks, each encoded once
    assert peak[0] <= 16 and max(n_alive for _, n_alive in seen) <= 16  # never more than one chunk alive
    assert alive[0] == 0

    header, rows = read_tsv(streamed)
    whole_header, whole_rows = read_tsv(whole)
    assert header == whole_header == ["text", "gold", "label", "confidence"]
    assert [r[:3] for r in rows] == [r[:3] for r in whole_rows]
    assert [r[0] + "\t" + r[1] for r in rows] == keyword_lines(100)
    np.testing.assert_allclose([float(r[3]) for r in rows], [float(r[3]) for r in whole_rows], atol=2e-6)
    for key in ("texts", "predicted_label_counts", "accuracy", "macro_f1", "mean_confidence"):
        assert summary[key] == whole_summary[key]

    # Same batches in file order (batch size dividing the chunk): byte-identical output.
    classify_file(classifier, big_input, whole, batch_size=4, chunk_size=10_000, sort_by_length=False)
    classify_file(classifier, big_input, streamed, batch_size=4, chunk_size=16, sort_by_length=False)
    with open(whole, "rb") as a, open(streamed, "rb") as b:
        assert a.read() == b.read()


def late_bad_line(path):
    with open(path, "a", encoding="utf-8") as fp:
        fp.write("这一行\t有\t太多\t列\n")


def interrupt_third_chunk(monkeypatch):
    from utils.deploy.predictions import PredictionWriter

    write, calls = PredictionWriter.write, []

    def write_then_interrupt(self, *args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return write(self, *args)

    monkeypatch.setattr(PredictionWriter, "write", write_then_interrupt)


def disk_full(monkeypatch):
    from utils.deploy import predictions

    from helpers import FullDisk

    real_open = open
    monkeypatch.setattr(predictions, "open", lambda *a, **k: FullDisk(real_open(*a, **k), room=2000), raising=False)


def terminate_at_third_chunk(monkeypatch):
    import signal

    from utils.deploy.predictions import PredictionWriter

    write, calls = PredictionWriter.write, []

    def write_then_terminate(self, *args):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return write(self, *args)

    monkeypatch.setattr(PredictionWriter, "write", write_then_terminate)


@pytest.mark.parametrize("failure, code, message", [
    (late_bad_line, 2, "big.txt:101: expected `text<TAB>gold label` as on line 1, found 3 tabs"),
    (interrupt_third_chunk, 130, "interrupted"),
    (terminate_at_third_chunk, 143, ""),
    (disk_full, 2, "out.tsv: cannot write: No space left on device; nothing was written"),
], ids=["bad line at the end", "ctrl-c", "SIGTERM", "disk full"])
def test_a_failure_late_in_the_file_leaves_no_output_and_the_old_file_untouched(failure, code, message, trained,
                                                                               big_input, tmp_path, capsys,
                                                                               monkeypatch):
    from utils.deploy import predictor

    monkeypatch.setattr(predictor, "CHUNK_SIZE", 16)  # several chunks are written before the failure
    output = tmp_path / "out.tsv"
    output.write_text("earlier results\n", encoding="utf-8")
    if failure is late_bad_line:
        failure(big_input)
    else:
        failure(monkeypatch)
    try:
        result, err = run_infer(capsys, "--model_path_prefix", os.path.join(trained[1], "export"), "--input_file",
                                big_input, "--output_file", str(output), "--device", "cpu", "--batch_size", "8")
    except SystemExit as exit:  # SIGTERM ends the process, as it would outside pytest
        result, err = exit.code, capsys.readouterr().err
    assert result == code and message in err and "Traceback" not in err
    assert output.read_text(encoding="utf-8") == "earlier results\n"
    assert sorted(os.listdir(tmp_path)) == ["big.txt", "out.tsv"]  # no temporary file left


# ------------------------------------------------------------------ paths checked before any work

def make_file(path, text="x\n"):
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("output, message", [
    (lambda tmp: str(tmp), "output file is a directory"),
    (lambda tmp: os.path.join(make_file(tmp / "a_file"), "out.tsv"), "a_file is a file, not a directory"),
    (lambda tmp: os.path.join(make_file(tmp / "a_file"), "sub", "out.tsv"), "a_file is a file, not a directory"),
    (lambda tmp: "/dev/null", "exists and is not a regular file"),
    (lambda tmp: str(tmp / "in.txt"), "is the input file"),
], ids=["directory", "parent is a file", "ancestor is a file", "device", "the input itself"])
def test_unwritable_output_is_refused_before_the_model_loads(output, message, tmp_path, capsys):
    """The export does not even exist: the output path is checked first."""
    make_file(tmp_path / "in.txt", "苹果\n")
    path = output(tmp_path)
    code, err = run_infer(capsys, "--model_path_prefix", str(tmp_path / "no-export"), "--input_file",
                          str(tmp_path / "in.txt"), "--output_file", path)
    assert code == 2 and err.startswith(f"error: {path}: ") and message in err and "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == sorted(["in.txt"] + (["a_file"] if "a_file" in path else []))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through file permissions")
def test_read_only_directory_file_and_unreadable_input_are_refused_before_the_model_loads(tmp_path, capsys):
    make_file(tmp_path / "in.txt", "苹果\n")
    locked = tmp_path / "locked"
    locked.mkdir()
    read_only = make_file(tmp_path / "read_only.tsv", "keep\n")
    os.chmod(read_only, 0o444)
    secret = make_file(tmp_path / "secret.txt", "苹果\n")
    os.chmod(secret, 0)
    os.chmod(locked, 0o555)
    try:
        common = ["--model_path_prefix", str(tmp_path / "no-export")]
        code, err = run_infer(capsys, *common, "--input_file", str(tmp_path / "in.txt"), "--output_file",
                              str(locked / "out.tsv"))
        assert code == 2 and "permission denied or read-only file system" in err
        code, err = run_infer(capsys, *common, "--input_file", str(tmp_path / "in.txt"), "--output_file", read_only)
        assert code == 2 and "exists and is read-only; not replacing it" in err
        code, err = run_infer(capsys, *common, "--input_file", secret, "--output_file", str(tmp_path / "o.tsv"))
        assert code == 2 and f"{secret}: input file cannot be read: Permission denied" in err
    finally:
        os.chmod(locked, 0o755)


def test_input_that_is_a_directory_is_refused(tmp_path, capsys):
    code, err = run_infer(capsys, "--model_path_prefix", str(tmp_path), "--input_file", str(tmp_path),
                          "--output_file", str(tmp_path / "o.tsv"))
    assert code == 2 and f"error: {tmp_path}: input file is a directory, not a file" in err


# --------------------------------------------------------------------------------- upstream flags

def test_upstream_flags_are_accepted(trained, tmp_path, capsys):
    data_dir, out = trained
    code = run_cli(infer.main, ["--model_path_prefix", os.path.join(out, "export", "model"), "--data_dir", data_dir,
                                "--model_name_or_path", "ernie-3.0-base-zh", "--max_length", "40", "--cpu_threads",
                                "1", "--device", "cpu", "--device_id", "0", "--batch_size", "200",
                                "--output_dir", str(tmp_path / "preds")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "note: --model_name_or_path is not needed: using the export's own tokenizer" in captured.err
    assert json.loads(captured.out)["output_file"] == str(tmp_path / "preds" / "infer_predictions.tsv")
    assert len(read_tsv(str(tmp_path / "preds" / "infer_predictions.tsv"))[1]) == 12

    code, err = run_infer(capsys, "--model_path_prefix", out, "--data_dir", data_dir, "--model_name", "x",
                          "--prompt", "这句话说的水果是")
    assert code == 2 and "error: --prompt: the export carries the template it was trained with" in err
    code, err = run_infer(capsys, "--model_path_prefix", out, "--data_dir", data_dir, "--output_dir", str(tmp_path),
                          "--output_file", str(tmp_path / "o.tsv"))
    assert code == 2 and "give --output_file or --output_dir, not both" in err
    code, err = run_infer(capsys, "--model_path_prefix", out, "--data_dir", data_dir, "--top_k", "0")
    assert code == 2 and "error: --top_k: must be positive, got 0" in err
    code, err = run_infer(capsys, "--model_path_prefix", out, "--data_dir", data_dir, "--chunk_size", "-1")
    assert code == 2 and "error: --chunk_size: must be positive, got -1" in err
