"""select.py on real exports: its picks and files, pre-labels equal to infer.py's, disagreement on an
ensemble export, old exports, bad input (exit 2 before any model loads, nothing written), --ray."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from helpers import import_script, infer_jsonl, read_json, texts_and_file
from utils.errors import run_cli
from utils.task.decoding import softmax


def run_select(capsys, export, input_path, output_path, *flags, code=0):
    argv = ["--model_path_prefix", export, "--input_file", input_path, "--output_file", output_path,
            "--device", "cpu", *flags]
    result = run_cli(import_script("select").main, argv)
    out, err = capsys.readouterr()
    assert result == code, err
    return json.loads(out) if code == 0 else err


def read_picks(path):
    with open(path, encoding="utf-8") as fp:
        rows = [line.rstrip("\n").split("\t") for line in fp]
    return rows[0], rows[1:]


@pytest.fixture
def model_never_loads(monkeypatch, no_model_loads):
    from utils.deploy import predictor

    def refuse(*args, **kwargs):
        raise AssertionError("the export's model was loaded before the input was checked")

    monkeypatch.setattr(predictor, "create_session", refuse)


def test_entropy_picks_the_most_uncertain_texts_with_infer_py_labels_as_pre_labels(trained, tmp_path, capsys):
    export = os.path.join(trained[1], "export")
    texts, path = texts_and_file(tmp_path, 200)
    rows = infer_jsonl(capsys, export, path, str(tmp_path / "infer.jsonl"), "--top_k", "3")
    summary = run_select(capsys, export, path, str(tmp_path / "picks.tsv"), "--k", "12", "--strategy", "entropy")
    assert summary["picked"] == 12 and summary["texts_scored"] == 200 and summary["candidates_held_peak"] <= 12
    header, picks = read_picks(tmp_path / "picks.tsv")
    assert header == ["rank", "line", "text", "score", "prediction"]
    probs = np.array([sorted(entry["confidence"] for entry in row["top_k"]) for row in rows])  # infer.py's
    lines = [int(p[1]) for p in picks]
    assert [p[2] for p in picks] == [texts[n - 1] for n in lines]
    assert [p[4] for p in picks] == [rows[n - 1]["label"] for n in lines]  # infer.py's labels
    scores = [float(p[3]) for p in picks]
    assert scores == sorted(scores, reverse=True)
    entropy = -(probs * np.log(probs)).sum(axis=1)  # (6 decimals: the order may differ within ties)
    assert scores == pytest.approx(list(np.sort(entropy)[::-1][:12]), abs=1e-4)
    tasks = read_json(tmp_path / "picks.label-studio.json")
    assert [t["data"]["text"] for t in tasks] == [p[2] for p in picks]
    assert [t["data"]["line"] for t in tasks] == lines
    assert [t["predictions"][0]["result"][0]["value"]["choices"] for t in tasks] == [[p[4]] for p in picks]
    config = (tmp_path / "picks.label-studio.xml").read_text(encoding="utf-8")
    assert '<Choices name="label" toName="text"' in config and 'value="apple"' in config


@pytest.mark.parametrize("strategy", ["margin", "diversity", "hybrid"])
def test_every_single_model_strategy_picks_k_distinct_texts_and_balance_spreads_them(strategy, trained, tmp_path,
                                                                                      capsys):
    export = os.path.join(trained[1], "export")
    texts, path = texts_and_file(tmp_path, 150)
    run_select(capsys, export, path, str(tmp_path / "a.tsv"), "--k", "9", "--strategy", strategy,
               "--pool_size", "60", "--balance")
    _, picks = read_picks(tmp_path / "a.tsv")
    assert len(picks) == 9 and len({p[2] for p in picks}) == 9
    counts = {label: sum(p[4] == label for p in picks) for label in ("apple", "banana", "grape")}
    assert max(counts.values()) - min(counts.values()) <= 1, counts
    again = run_select(capsys, export, path, str(tmp_path / "b.tsv"), "--k", "9", "--strategy", strategy,
                       "--pool_size", "60", "--balance", "--chunk_size", "7")
    assert again["picked"] == 9
    assert read_picks(tmp_path / "b.tsv")[1] == picks  # chunks change nothing


def test_excluded_and_repeated_texts_are_never_picked_and_k_beyond_the_input_picks_all(trained, tmp_path, capsys):
    export = os.path.join(trained[1], "export")
    texts, path = texts_and_file(tmp_path, 30)
    with open(path, "a", encoding="utf-8") as fp:
        fp.write("".join(t + "\n" for t in texts[:10]))  # 10 repeats
    labelled = tmp_path / "train.txt"
    labelled.write_text("".join(f"{t}\tapple\n" for t in texts[10:15]), encoding="utf-8")
    summary = run_select(capsys, export, path, str(tmp_path / "p.tsv"), "--k", "100", "--exclude_file",
                         str(labelled))
    _, picks = read_picks(tmp_path / "p.tsv")
    assert sorted(p[2] for p in picks) == sorted(set(texts) - set(texts[10:15]))
    assert summary["picked"] == len(set(texts)) - 5 and "note" in summary and summary["excluded"] == 5


def test_a_model_without_members_refuses_disagreement_and_an_old_export_refuses_diversity(trained, tmp_path, capsys,
                                                                                         model_never_loads):
    export = os.path.join(trained[1], "export")
    _, path = texts_and_file(tmp_path, 20)
    err = run_select(capsys, export, path, str(tmp_path / "p.tsv"), "--strategy", "disagreement", code=2)
    assert err.startswith("error: ") and "needs an ensemble export" in err
    old = str(tmp_path / "old-export")
    shutil.copytree(export, old)
    manifest = read_json(os.path.join(old, "manifest.json"))
    manifest["outputs"] = manifest["outputs"][:1]  # as exports made before mask_embedding (manifest.json is not hashed)
    with open(os.path.join(old, "manifest.json"), "w", encoding="utf-8") as fp:
        json.dump(manifest, fp)
    for strategy in ("diversity", "hybrid"):
        err = run_select(capsys, old, path, str(tmp_path / "p.tsv"), "--strategy", strategy, "--k", "3", code=2)
        assert "export the checkpoint again" in err
    assert not os.path.exists(tmp_path / "p.tsv")


def test_disagreement_on_an_ensemble_export_ranks_by_the_members_kl(ensemble_run, tmp_path, capsys):
    from utils.deploy.classifier import Classifier
    from utils.deploy.format import MEMBER_OUTPUT
    from utils.selection.scores import kl_to_consensus

    export = os.path.join(ensemble_run[1], "export")
    texts, path = texts_and_file(tmp_path, 80)
    run_select(capsys, export, path, str(tmp_path / "d.tsv"), "--k", "5", "--strategy", "disagreement")
    _, picks = read_picks(tmp_path / "d.tsv")
    model = Classifier(export, device="cpu").model
    members = model.run_outputs(model.preprocessor.encode([{"text_a": t} for t in texts]), [MEMBER_OUTPUT])
    expected = np.argsort(-kl_to_consensus(softmax(members[MEMBER_OUTPUT])), kind="stable")[:5] + 1
    assert [int(p[1]) for p in picks] == list(expected)
    run_select(capsys, export, path, str(tmp_path / "v.tsv"), "--k", "5", "--strategy", "diversity")
    assert len(read_picks(tmp_path / "v.tsv")[1]) == 5  # the ensemble's vectors


@pytest.mark.parametrize("case, message", [
    (lambda d: ["--input_file", str(d / "missing.txt")], "missing.txt"),
    (lambda d: ["--output_file", str(d / "texts.txt")], "is the input file"),
    (lambda d: ["--exclude_file", str(d / "bad.txt")], "bad.txt:2:"),
    (lambda d: ["--input_file", str(d / "gbk.txt")], "gbk.txt:1:"),
    (lambda d: ["--strategy", "hybrid", "--k", "50", "--pool_size", "10"], "--pool_size"),
    (lambda d: ["--k", "0"], "--k"),
])
def test_bad_input_is_one_paragraph_exit_2_before_the_model_loads_and_writes_nothing(case, message, trained, tmp_path,
                                                                                     capsys, model_never_loads):
    export = os.path.join(trained[1], "export")
    _, path = texts_and_file(tmp_path, 20)
    (tmp_path / "bad.txt").write_text("好\tapple\na\tb\tc\td\n", encoding="utf-8")
    (tmp_path / "gbk.txt").write_bytes("苹果".encode("gbk") + b"\n")
    out = tmp_path / "out" / "picks.tsv"
    argv = ["--model_path_prefix", export, "--input_file", path, "--output_file", str(out), "--device", "cpu"]
    extra = case(tmp_path)
    for flag, value in zip(extra[::2], extra[1::2]):
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    before = sorted(os.listdir(tmp_path))
    assert run_cli(import_script("select").main, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err, err
    assert sorted(os.listdir(tmp_path)) == before


def test_select_runs_as_a_script_beside_the_standard_librarys_select(trained, tmp_path):
    export = os.path.join(trained[1], "export")
    _, path = texts_and_file(tmp_path, 20)
    result = subprocess.run([sys.executable, "select.py", "--model_path_prefix", export, "--input_file", path,
                             "--k", "3", "--output_file", str(tmp_path / "p.tsv"), "--device", "cpu"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["picked"] == 3
