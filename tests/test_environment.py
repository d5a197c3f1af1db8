"""When the machine fails the run (full disk, read-only or unreadable places), the user gets one
paragraph, exit 2, and no partial files: checked with real failures where the OS allows it."""
import os
import resource
import shutil
import subprocess
import sys

import pytest

from conftest import FAST, ROOT
from utils.errors import UserError
from utils.files import read_text_lines
from utils.testing.synthetic import PROMPT


def train_command(model, data, out, *extra):
    return [sys.executable, os.path.join(ROOT, "train.py"), "--model_name_or_path", model, "--data_dir", data,
            "--output_dir", str(out), "--prompt", PROMPT, "--do_train", "--max_steps", "4", "--save_steps", "2", *FAST,
            *extra]


ENV = dict(os.environ, PTUNING_OFFLINE="1")


def mount_namespace_available():
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
                           capture_output=True) if shutil.which("unshare") else None
    return probe is not None and probe.returncode == 0


def run_on_tmpfs(mount_point, options, command):
    """Run `command` in a private mount namespace where `mount_point` is a fresh tmpfs (`options`)."""
    if not mount_namespace_available():
        pytest.skip("needs `unshare -m` and tmpfs mounts (root in a mount namespace) for a real full/read-only disk")
    script = f'mount -t tmpfs -o {options} tmpfs "{mount_point}" && "$@"; code=$?; ' \
             f'echo "USED=$(du -sk "{mount_point}" | cut -f1)"; ls -A "{mount_point}" "{mount_point}"/* 2>/dev/null; ' \
             'exit $code'
    return subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", *command], env=ENV, capture_output=True,
                          text=True, timeout=600)


def assert_one_paragraph(stderr, *fragments):
    error = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and "Traceback" not in stderr, stderr[-3000:]
    for fragment in fragments:
        assert fragment in error[0], error[0]


@pytest.mark.slow
def test_a_full_disk_while_saving_stops_cleanly_and_frees_the_space(tiny_model_dir, keyword_data, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    result = run_on_tmpfs(str(disk), "size=12m", train_command(tiny_model_dir, keyword_data, disk / "out"))
    assert result.returncode == 2, result.stderr[-3000:]
    assert_one_paragraph(result.stderr, "No space left on device", str(disk / "out"))
    used_kb = int(result.stdout.split("USED=")[1].split()[0])
    assert used_kb < 64, result.stdout  # the half-written checkpoint was removed, not left to fill the disk
    assert ".saving" not in result.stdout and "checkpoint-" not in result.stdout


@pytest.mark.slow
def test_a_file_size_limit_while_saving_stops_cleanly(tiny_model_dir, keyword_data, tmp_path):
    """The same without privileges: RLIMIT_FSIZE makes the optimizer file (13 MB) fail to write."""
    out = tmp_path / "out"

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (8 << 20, 8 << 20))

    result = subprocess.run(train_command(tiny_model_dir, keyword_data, out), env=ENV, capture_output=True,
                            text=True, preexec_fn=limit, timeout=600)
    assert result.returncode == 2, result.stderr[-3000:]
    assert_one_paragraph(result.stderr, "File too large", str(out))
    assert not out.exists() or not [p for p in os.listdir(out) if p != ".ptuning.lock"]


@pytest.mark.slow
def test_a_read_only_output_dir_is_refused_before_training(tiny_model_dir, keyword_data, tmp_path):
    disk = tmp_path / "ro"
    disk.mkdir()
    for out in (disk, disk / "new-subdir"):
        result = run_on_tmpfs(str(disk), "ro,size=1m", train_command(tiny_model_dir, keyword_data, out))
        assert result.returncode == 2
        assert_one_paragraph(result.stderr, str(out), "cannot write here", "Read-only file system")


@pytest.mark.slow
def test_an_output_dir_under_a_file_is_refused(tiny_model_dir, keyword_data, tmp_path):
    (tmp_path / "a-file").write_text("x", encoding="utf-8")
    out = tmp_path / "a-file" / "out"
    result = subprocess.run(train_command(tiny_model_dir, keyword_data, out), env=ENV, capture_output=True, text=True)
    assert result.returncode == 2
    assert_one_paragraph(result.stderr, str(out))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode (see the next test)")
def test_an_unreadable_data_file_is_named(keyword_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(keyword_data, data)
    os.chmod(data / "train.txt", 0)
    with pytest.raises(UserError, match="train.txt: train file cannot be read: Permission denied"):
        read_text_lines(str(data / "train.txt"), what="train file")


def test_an_unreadable_data_file_is_named_even_as_root(keyword_data, monkeypatch):
    import builtins

    real_open = builtins.open
    target = os.path.join(keyword_data, "dev.txt")

    def deny(path, *args, **kwargs):
        if os.fspath(path) == target:
            raise PermissionError(13, "Permission denied", target)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", deny)
    from utils.dataset.folder import load_dataset_dir

    with pytest.raises(UserError, match="dev.txt: dev file cannot be read: Permission denied"):
        load_dataset_dir(keyword_data)
