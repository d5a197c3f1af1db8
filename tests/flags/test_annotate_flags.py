"""annotate.py's flags (utils/flags/annotate.py): each bad value one paragraph naming the flag,
before anything is read or written."""
import os

import pytest

import annotate
from utils.errors import run_cli

IMPORT = ["import", "--format", "label-studio", "--input", "export.json", "--output_dir", "out"]
EXPORT = ["export", "--format", "doccano", "--input_file", "texts.txt", "--output", "tasks.jsonl"]


@pytest.mark.parametrize("argv, flag, words", [
    (IMPORT + ["--splits", "0.8", "0.1"], "--splits", "three fractions"),
    (IMPORT + ["--splits", "0.8", "0.3", "0.1"], "--splits", "summing to 1"),
    (IMPORT + ["--splits", "0", "0.5", "0.5"], "--splits", "train fraction"),
    (IMPORT + ["--conflict", "vote"], "--conflict", "must be one of"),
    (IMPORT + ["--format", "csv"], "--format", "must be one of"),
    (IMPORT + ["--task_type", "binary"], "--task_type", "must be one of"),
    (IMPORT + ["--text_b_key", "text"], "--text_b_key", "must differ"),
    (IMPORT + ["--seed", "x"], "--seed", "invalid int"),
    (IMPORT[:-2] + ["--output_dir", "EXISTING"], "--output_dir", "--overwrite_output_dir"),
    (IMPORT[:-2] + ["--output_dir", ".", "--overwrite_output_dir"], "--input", "inside --output_dir"),
    (EXPORT + ["--chunk_size", "0"], "--chunk_size", "must be positive"),
    (EXPORT + ["--batch_size", "0"], "--batch_size", "must be positive"),
    (EXPORT + ["--use_int8"], "--use_int8", "--model_path_prefix"),
    (EXPORT + ["--device", "tpu"], "--device", "must be cpu, gpu or gpu:N"),
    (["export", "--format", "doccano", "--output", "x.jsonl"], "annotate.py export", "--input_file"),
])
def test_a_bad_flag_is_one_paragraph_naming_it_and_nothing_is_written(tmp_path, monkeypatch, capsys, argv, flag,
                                                                      words):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "EXISTING").mkdir()
    (tmp_path / "EXISTING" / "mine.txt").write_text("x", encoding="utf-8")
    before = sorted(os.listdir(tmp_path))
    assert run_cli(annotate.main, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {flag}: ") and words in err, err
    assert err.count("\n") == 2 and "Traceback" not in err, err
    assert sorted(os.listdir(tmp_path)) == before
