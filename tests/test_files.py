"""utils/files.py: output paths are proven writable by a write, not by permission bits; JSON read as
Windows editors save it."""
import errno
import os
import tempfile

import pytest

import infer
from utils.errors import UserError, run_cli
from utils.files import check_output_dir, check_output_file, read_json


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES, errno.ENOENT])
def test_a_directory_that_refuses_new_files_is_refused_even_for_root(tmp_path, monkeypatch, code):
    """os.access says yes to root on any directory; a probe file is what tells."""
    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(UserError, match=f"cannot create a file in {tmp_path}: {os.strerror(code)}"):
        check_output_file(str(tmp_path / "out.tsv"))


def test_the_probe_leaves_nothing_behind(tmp_path):
    check_output_file(str(tmp_path / "deeper" / "out.tsv"))
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_infer_into_a_directory_nobody_can_create_files_in_is_one_paragraph(tmp_path, capsys):
    (tmp_path / "in.txt").write_text("苹果\n", encoding="utf-8")
    code = run_cli(infer.main, ["--model_path_prefix", str(tmp_path / "no-export"), "--input_file",
                                str(tmp_path / "in.txt"), "--output_file", "/proc/out.tsv"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: /proc/out.tsv: cannot create a file in /proc") and "Traceback" not in err


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES, errno.ENOENT])
def test_an_output_directory_where_no_file_can_be_made_is_refused_and_nothing_is_created(tmp_path, monkeypatch,
                                                                                           code):
    """check_output_dir probes the nearest existing directory (the output directory itself is made
    later, by the writer) and creates nothing."""
    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(UserError, match=f"cannot create a file in {tmp_path}: {os.strerror(code)}"):
        check_output_dir(str(tmp_path / "a" / "b"))
    assert os.listdir(tmp_path) == []


def test_an_output_directory_that_is_a_file_or_under_one_is_refused(tmp_path):
    (tmp_path / "f").write_text("x", encoding="utf-8")
    with pytest.raises(UserError, match="exists and is not a directory"):
        check_output_dir(str(tmp_path / "f"))
    with pytest.raises(UserError, match="is a file, not a directory"):
        check_output_dir(str(tmp_path / "f" / "sub"))
    check_output_dir(str(tmp_path / "new" / "deeper"))  # to be made: fine, and not made yet
    assert sorted(os.listdir(tmp_path)) == ["f"]


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
@pytest.mark.parametrize("tool", ["annotate import", "multirun", "explain"])
def test_every_output_directory_nobody_can_create_files_in_is_one_paragraph_before_any_work(tool, trained,
                                                                                           tmp_path, capsys):
    """The directory-writing tools refuse /proc/x (where even root cannot create a file) with one
    paragraph naming --output_dir, before any model loads or any run starts (they wrote into it only
    at the end, after the work, with a traceback)."""
    import annotate
    import explain
    import multirun

    data_dir, out = trained
    export = tmp_path / "export.json"
    export.write_text('[{"id": 1, "data": {"text": "a"}, "annotations": []}]', encoding="utf-8")
    main, argv = {
        "annotate import": (annotate.main, ["import", "--format", "label-studio", "--input", str(export)]),
        "multirun": (multirun.main, ["--seeds", "1", "--", "--data_dir", data_dir, "--do_train", "--do_eval"]),
        "explain": (explain.main, ["--resume_from_checkpoint", out, "--text", "苹果"]),
    }[tool]
    code = run_cli(main, [*argv, "--output_dir", "/proc/ptuning-out"] if tool != "multirun"
                   else ["--output_dir", "/proc/ptuning-out", *argv])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: --output_dir: cannot create a file in /proc"), err
    assert "Traceback" not in err


def test_a_json_file_saved_with_a_bom_reads_as_without_one_and_a_corrupt_one_names_its_line(tmp_path):
    path = tmp_path / "config.json"
    path.write_bytes(b"\xef\xbb\xbf" + '{"labels": ["体育"]}'.encode())
    assert read_json(str(path)) == {"labels": ["体育"]}
    path.write_bytes(b"\xef\xbb\xbf{\n  \"labels\": [,]\n}")
    with pytest.raises(UserError, match="corrupt") as error:
        read_json(str(path))
    assert error.value.line == 2 and str(error.value).startswith(f"{path}:2: ")
