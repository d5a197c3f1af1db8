"""utils/files.py: output paths are proven writable by a write, not by permission bits."""
import errno
import os
import tempfile

import pytest

import infer
from utils.errors import UserError, run_cli
from utils.files import check_output_file


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
