"""The Python API (utils.Classifier): infer.py's results in memory, no Paddle, clear errors."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import infer
from conftest import ROOT
from helpers import BLOCK_PADDLE, infer_jsonl, texts_and_file
from utils.errors import UserError, run_cli


def assert_same_as_infer(predictions, records):
    assert len(predictions) == len(records)
    for prediction, record in zip(predictions, records):
        assert prediction.label == record["label"]
        assert prediction.confidence == pytest.approx(record["confidence"], abs=5e-7)  # infer.py rounds to 6 places
        assert [label for label, _ in prediction.top_k] == [t["label"] for t in record["top_k"]]
        np.testing.assert_allclose([c for _, c in prediction.top_k], [t["confidence"] for t in record["top_k"]],
                                   atol=5e-7)


@pytest.fixture(scope="module")
def classifier(trained):
    from utils import Classifier

    return Classifier(os.path.join(trained[1], "export", "model"), num_threads=1, batch_size=8)


def test_predict_equals_infer_output_file(classifier, trained, tmp_path, capsys):
    texts, path = texts_and_file(tmp_path)
    records = infer_jsonl(capsys, os.path.join(trained[1], "export"), path, str(tmp_path / "out.jsonl"),
                          "--batch_size", "8", "--top_k", "3")
    predictions = classifier.predict(texts, top_k=3)
    assert_same_as_infer(predictions, records)
    assert {p.label for p in predictions} == set(classifier.labels)  # the model does tell texts apart

    probs = classifier.predict_proba(texts)
    logits = classifier.logits(texts)
    assert probs.shape == logits.shape == (len(texts), len(classifier.labels))
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-6)
    assert [classifier.labels[i] for i in logits.argmax(axis=1)] == [p.label for p in predictions]
    np.testing.assert_allclose(probs.max(axis=1), [p.confidence for p in predictions], atol=1e-7)
    with open(os.path.join(trained[1], "export", "labels.json"), encoding="utf-8") as fp:
        assert classifier.labels == [e["label"] for e in sorted(json.load(fp), key=lambda e: e["id"])]


def test_pairs_as_tuples_equal_infer_output_file(pair_export, tmp_path, capsys):
    from utils import Classifier

    texts, path = texts_and_file(tmp_path, n=40, pair=True)
    records = infer_jsonl(capsys, pair_export, path, str(tmp_path / "out.jsonl"), "--top_k", "2")
    assert [(r["text_a"], r["text_b"]) for r in records] == texts
    classifier = Classifier(pair_export, num_threads=1)
    assert classifier.pair
    assert_same_as_infer(classifier.predict(texts, top_k=2), records)
    assert_same_as_infer(classifier.predict([list(t) for t in texts], top_k=2), records)  # lists work as tuples


def test_no_texts_give_no_predictions(classifier):
    assert classifier.predict([]) == []
    assert classifier.predict_proba([]).shape == (0, len(classifier.labels))


def test_top_k_lists_at_most_every_label_best_first(classifier):
    [prediction] = classifier.predict(["苹果"], top_k=100)
    assert sorted(label for label, _ in prediction.top_k) == sorted(classifier.labels)
    assert prediction.top_k[0] == (prediction.label, prediction.confidence)
    confidences = [c for _, c in prediction.top_k]
    assert confidences == sorted(confidences, reverse=True)


@pytest.mark.parametrize("texts, top_k, message", [
    ("苹果", 1, "texts: expected a list of texts, got a str; wrap a single text in a list"),
    (5, 1, "texts: expected a list of texts, got int"),
    (["苹果", 3], 1, "texts[1]: text must be a str, got int"),
    (["苹果", None], 1, "texts[1]: text must be a str, got NoneType"),
    (["苹果", "香蕉", ("苹果", "香蕉")], 1, "texts[2]: this model classifies single texts, not pairs"),
    (["苹果", " \t "], 1, "texts[1]: empty text"),
    (["苹果"], 0, "top_k: must be a positive integer, got 0"),
], ids=["a str", "not iterable", "an int", "None", "a pair", "blank", "top_k 0"])
def test_bad_texts_are_user_errors_naming_the_index(classifier, texts, top_k, message):
    with pytest.raises(UserError) as error:
        classifier.predict(texts, top_k=top_k)
    assert str(error.value).startswith(message)


@pytest.mark.parametrize("texts, message", [
    (["苹果"], "texts[0]: this model classifies text pairs: give a (text_a, text_b) tuple, got a str"),
    ([("苹果", "香蕉"), ("苹果",)], "texts[1]: this model classifies text pairs: give a (text_a, text_b) tuple, "
                                  "got a 1-tuple"),
    ([("苹果", "香蕉"), ("苹果", 2)], "texts[1]: text_b must be a str, got int"),
    ([("", "香蕉")], "texts[0]: empty text_a"),
], ids=["a str", "a 1-tuple", "an int text_b", "empty text_a"])
def test_a_pair_model_refuses_single_texts_naming_the_index(pair_export, texts, message):
    from utils import Classifier

    with pytest.raises(UserError) as error:
        Classifier(pair_export, num_threads=1).predict(texts)
    assert str(error.value) == message


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_size": 0}, "batch_size: must be a positive integer, got 0"),
    ({"batch_size": -3}, "batch_size: must be a positive integer, got -3"),
    ({"batch_size": "8"}, "batch_size: must be a positive integer, got '8'"),
    ({"num_threads": -1}, "num_threads: must be a positive integer, got -1"),
    ({"max_seq_length": 1.5}, "max_seq_length: must be a positive integer, got 1.5"),
    ({"max_seq_length": 0}, "max_seq_length: must be a positive integer, got 0"),
    ({"device": "tpu"}, "device: must be cpu, gpu or gpu:N, got 'tpu'"),
    ({"device": "gpu:x"}, "device: must be cpu, gpu or gpu:N, got 'gpu:x'"),
    ({"device": "GPU"}, "device: must be cpu, gpu or gpu:N, got 'GPU'"),
    ({"device": 0}, "device: must be cpu, gpu or gpu:N, got 0"),
    ({"device": "gpu:1", "device_id": 2}, "device: names GPU 1 and device_id 2: give one of them"),
    ({"device_id": -1}, "device_id: must be a GPU number, 0 or more, got -1"),
    ({"device_id": "1"}, "device_id: must be a GPU number, 0 or more, got '1'"),
    ({"use_fp16": "yes"}, "use_fp16: must be True or False, got 'yes'"),
    ({"use_int8": 1}, "use_int8: must be True or False, got 1"),
    ({"allow_spinning": None}, "allow_spinning: must be True or False, got None"),
    ({"reject_threshold": 0}, "reject_threshold: must be a number in (0, 1], got 0"),
    ({"other_label": "a,b"}, "other_label: must be a non-empty name without tabs, newlines or commas"),
], ids=lambda v: ",".join(f"{k}={v[k]!r}" for k in v) if isinstance(v, dict) else None)
def test_bad_arguments_are_user_errors_naming_them_before_the_model_loads(tmp_path, kwargs, message):
    from utils import Classifier

    with pytest.raises(UserError) as error:
        Classifier(str(tmp_path / "no-export"), **kwargs)  # the export does not exist: not reached
    assert str(error.value).startswith(message)


@pytest.mark.parametrize("model_path", [None, 42, b"checkpoints/export", ""])
def test_a_model_path_that_is_no_path_is_a_user_error_naming_the_argument(model_path):
    from utils import Classifier

    with pytest.raises(UserError) as error:
        Classifier(model_path)
    assert str(error.value).startswith(f"model_path: must be the path of an export directory (a str), got "
                                       f"{model_path!r}")


def test_a_missing_export_is_not_found_and_a_directory_without_a_manifest_is_no_export(tmp_path, trained):
    from utils import Classifier

    with pytest.raises(UserError) as error:
        Classifier(str(tmp_path / "no-export"))
    assert str(error.value).startswith(f"{tmp_path / 'no-export'}: export directory not found")
    with pytest.raises(UserError) as error:
        Classifier(str(tmp_path / "a" / "b"))
    assert str(error.value).startswith(f"{tmp_path / 'a' / 'b'}: export directory not found; make one with")
    with pytest.raises(UserError) as error:
        Classifier(str(tmp_path))
    assert str(error.value).startswith(f"{tmp_path}: is not an export directory (manifest.json missing)")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file, not an export directory"):
        Classifier(str(tmp_path / "file"))
    import pathlib

    assert Classifier(pathlib.Path(trained[1]) / "export" / "model", num_threads=1).labels  # a Path works too


def test_device_gpu_n_selects_gpu_n_in_the_api_and_infer(trained, tmp_path, monkeypatch, capsys):
    """`gpu:N` reaches onnxruntime's CUDA provider as device N (checked without a GPU: the session
    factory records what it was asked for and builds a CPU session)."""
    import utils.deploy.predictor
    from utils import Classifier

    asked = []
    real = utils.deploy.predictor.create_session

    def recording(model_path, device="cpu", device_id=0, *args):
        asked.append((device, device_id))
        return real(model_path, "cpu", 0, *args)

    monkeypatch.setattr(utils.deploy.predictor, "create_session", recording)
    export = os.path.join(trained[1], "export")
    clf = Classifier(export, device="gpu:1", num_threads=1)
    assert asked == [("gpu", 1)] and clf.device == "gpu"
    Classifier(export, device="gpu", device_id=3, num_threads=1)
    Classifier(export, device="gpu:2", device_id=2, num_threads=1)
    assert asked[1:] == [("gpu", 3), ("gpu", 2)]
    texts, path = texts_and_file(tmp_path, n=5)
    assert run_cli(infer.main, ["--model_path_prefix", export, "--input_file", path, "--output_file",
                                str(tmp_path / "o.tsv"), "--device", "gpu:4", "--num_threads", "1"]) == 0
    assert asked[3:] == [("gpu", 4)] and json.loads(capsys.readouterr().out)["device"] == "gpu"
    for flags, message in (
            (["--device", "gpu:1", "--device_id", "2"], "error: --device: names GPU 1 and --device_id 2"),
            (["--device", "tpu"], "error: --device: must be cpu, gpu or gpu:N, got 'tpu'"),
            (["--device_id", "-1"], "error: --device_id: must be a GPU number, 0 or more, got -1")):
        assert run_cli(infer.main, ["--model_path_prefix", export, "--input_file", path, *flags]) == 2
        assert capsys.readouterr().err.startswith(message)
    assert len(asked) == 4  # refused before any model loads


def test_use_fp16_off_a_gpu_gives_infer_pys_note_in_the_api_too(trained, tmp_path, caplog):
    from utils import Classifier

    export = os.path.join(trained[1], "export")
    with caplog.at_level("WARNING", logger="utils.deploy.classifier"):
        clf = Classifier(export, device="cpu", use_fp16=True, num_threads=1)
    assert clf.model_path.endswith("model.onnx")  # fp32
    note = "note: use_fp16 (--use_fp16) only applies on a GPU; running the fp32 model on CPU"
    assert [r.getMessage() for r in caplog.records] == [note]
    caplog.clear()
    Classifier(export, device="cpu", num_threads=1)
    assert not caplog.records
    texts, path = texts_and_file(tmp_path, n=3)
    result = subprocess.run([sys.executable, "infer.py", "--model_path_prefix", export, "--input_file", path,
                             "--output_file", str(tmp_path / "o.tsv"), "--device", "cpu", "--use_fp16",
                             "--num_threads", "1"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr.count(note) == 1, result.stderr


def test_defaults_gpu_when_cuda_is_available_and_physical_cores(classifier, trained, monkeypatch):
    import onnxruntime
    import psutil

    from utils import Classifier
    from utils.deploy.classifier import default_device, default_num_threads

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider",
                                                                         "CPUExecutionProvider"])
    assert default_device() == "gpu"
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert default_device() == "cpu"
    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: 8 if logical else 3)
    assert default_num_threads() == 3
    clf = Classifier(os.path.join(trained[1], "export"))
    assert (clf.device, clf.num_threads) == ("cpu", 3)


API_WITHOUT_PADDLE = BLOCK_PADDLE + """
import json
import utils
heavy = [m for m in ('numpy', 'onnxruntime', 'tokenizers', 'utils.deploy.classifier', 'utils.errors') if m in sys.modules]
assert not heavy, heavy  # `import utils` imports nothing
assert 'Classifier' in dir(utils)
try:
    utils.NoSuchThing
except AttributeError as exc:
    assert 'NoSuchThing' in str(exc)
else:
    raise AssertionError('utils.NoSuchThing did not raise')
from utils import Classifier
clf = Classifier(sys.argv[1], num_threads=1)
print(json.dumps([[p.label, p.confidence] for p in clf.predict(sys.argv[2:])]))
"""


def test_import_utils_loads_nothing_and_the_api_runs_without_paddle(classifier, trained):
    texts = ["苹果", "香蕉和橙子", "这是一个很长的句子"]
    result = subprocess.run([sys.executable, "-c", API_WITHOUT_PADDLE, os.path.join(trained[1], "export"), *texts],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    expected = [[p.label, p.confidence] for p in classifier.predict(texts)]
    got = json.loads(result.stdout)
    assert [label for label, _ in got] == [label for label, _ in expected]
    np.testing.assert_allclose([c for _, c in got], [c for _, c in expected], atol=1e-6)


def test_pyproject_installs_the_utils_package_and_every_cli_module():
    tomllib = pytest.importorskip("tomllib")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as fp:
        setuptools = tomllib.load(fp)["tool"]["setuptools"]
    scripts = sorted(name[:-3] for name in os.listdir(ROOT) if name.endswith(".py"))
    assert sorted(setuptools["py-modules"]) == scripts
    # setuptools' own finder, as `pip install .` runs it, finds utils and every sub-package
    from setuptools import find_packages

    found = find_packages(ROOT, **setuptools["packages"]["find"])
    packages = sorted(os.path.relpath(d, ROOT).replace(os.sep, ".") for d, _, names in os.walk(os.path.join(ROOT, "utils"))
                      if "__init__.py" in names)
    assert sorted(found) == packages and "utils.deploy" in packages
