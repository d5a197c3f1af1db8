"""annotate.py as a whole: the export's pre-annotations are infer.py's predictions, an imported
folder trains, bad input is refused before any model loads, and the subcommand is the first word."""
import json
import os

import pytest

import annotate
from utils.errors import run_cli

from conftest import train_quick
from helpers import infer_jsonl


@pytest.mark.parametrize("fmt", ["label-studio", "doccano"])
def test_the_pre_annotations_are_what_infer_py_predicts_for_the_same_texts(trained, tmp_path, capsys, fmt):
    data_dir, run_dir = trained
    export = os.path.join(run_dir, "export")
    texts = os.path.join(data_dir, "data.txt")
    out = str(tmp_path / "tasks")
    code = run_cli(annotate.main, ["export", "--format", fmt, "--input_file", texts, "--model_path_prefix", export,
                                   "--output", out, "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    rows = infer_jsonl(capsys, export, texts, str(tmp_path / "infer.jsonl"))
    assert summary["tasks"] == summary["pre_annotated"] == len(rows) > 0
    with open(out, encoding="utf-8") as fp:
        tasks = json.load(fp) if fmt == "label-studio" else [json.loads(line) for line in fp]
    for task, row in zip(tasks, rows):
        if fmt == "label-studio":
            prediction = task["predictions"][0]
            assert task["data"]["text"] == row["text"]
            assert prediction["result"][0]["value"]["choices"] == [row["label"]]
            assert prediction["score"] == pytest.approx(row["confidence"], abs=1e-5)
            assert prediction["model_version"] == "export"
        else:
            assert (task["text"], task["label"]) == (row["text"], [row["label"]])
    assert os.path.exists(out + (".config.xml" if fmt == "label-studio" else ".labels.json"))


def test_an_imported_folder_trains(tiny_model_dir, keyword_data, tmp_path, capsys):
    from utils.testing.synthetic import PROMPT

    tasks = str(tmp_path / "tasks.json")
    assert run_cli(annotate.main, ["export", "--format", "label-studio", "--data_dir", keyword_data,
                                   "--output", tasks]) == 0
    imported = str(tmp_path / "imported")
    assert run_cli(annotate.main, ["import", "--format", "label-studio", "--input", tasks, "--output_dir", imported,
                                   "--label_file", os.path.join(keyword_data, "label.txt")]) == 0
    capsys.readouterr()
    out = train_quick(tiny_model_dir, imported, str(tmp_path / "run"), "--prompt", PROMPT, steps=4)
    with open(os.path.join(out, "eval_results.json"), encoding="utf-8") as fp:
        assert "eval_accuracy" in json.load(fp)


@pytest.mark.parametrize("argv, words", [
    (["--format", "label-studio", "--input_file", "MISSING", "--output", "OUT"], "input file not found"),
    (["--format", "label-studio", "--input_file", "BADLINE", "--output", "OUT"], "expected"),
    (["--format", "label-studio", "--input_file", "TEXTS", "--output", "OUT", "--label_file", "OTHER"],
     "other labels than the export"),
    (["--format", "doccano", "--input_file", "TEXTS", "--output", "TEXTS"], "is the input file"),
])
def test_bad_export_input_is_refused_before_the_model_loads(trained, tmp_path, capsys, monkeypatch, argv, words):
    import utils.deploy.classifier

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(utils.deploy.classifier, "Classifier", refuse)
    data_dir, run_dir = trained
    (tmp_path / "bad.txt").write_text("a\tb\tc\td\n", encoding="utf-8")
    (tmp_path / "other.txt").write_text("x\ny\n", encoding="utf-8")
    names = {"MISSING": str(tmp_path / "none.txt"), "BADLINE": str(tmp_path / "bad.txt"), "OUT": str(tmp_path / "o"),
             "TEXTS": os.path.join(data_dir, "data.txt"), "OTHER": str(tmp_path / "other.txt")}
    argv = [names.get(word, word) for word in argv]
    code = run_cli(annotate.main, ["export", *argv, "--model_path_prefix", os.path.join(run_dir, "export")])
    err = capsys.readouterr().err
    assert code == 2 and words in err and err.count("\n") == 2, err
    assert not os.path.exists(tmp_path / "o")


@pytest.mark.parametrize("argv, words", [([], "the first word is the command"),
                                         (["convert"], "import or export (got 'convert')"),
                                         (["import", "--format", "label-studio"], "required")])
def test_the_subcommand_comes_first_and_a_wrong_one_is_one_paragraph(capsys, argv, words):
    assert run_cli(annotate.main, argv) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 2, err


def test_each_subcommand_has_its_help(capsys):
    for sub, flag in (("import", "--conflict"), ("export", "--model_path_prefix")):
        with pytest.raises(SystemExit) as stop:
            run_cli(annotate.main, [sub, "--help"])
        assert stop.value.code == 0 and flag in capsys.readouterr().out
    assert run_cli(annotate.main, ["--help"]) == 0 and "annotate.py import --help" in capsys.readouterr().out
