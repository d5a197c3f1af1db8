"""Reading user text files strictly and writing output files atomically."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from typing import Iterator, List, Optional, Tuple

from .errors import UserError


BOM = b"\xef\xbb\xbf"


def open_for_reading(path: str, what: str = "file"):
    """Open a regular file in binary mode, or raise a `UserError` saying why it cannot be read."""
    if not os.path.exists(path):
        raise UserError(f"{what} not found", path)
    if os.path.isdir(path):
        raise UserError(f"{what} is a directory, not a file", path)
    if not os.path.isfile(path):
        raise UserError(f"{what} is not a regular file", path)
    try:
        return open(path, "rb")
    except OSError as exc:
        raise UserError(f"{what} cannot be read: {exc.strerror or exc}", path) from None


def iter_text_lines(path: str, what: str = "file") -> Iterator[Tuple[int, str]]:
    """Yield `(line_number, line)` of a UTF-8 text file one line at a time, skipping blank lines.

    A UTF-8 BOM and CRLF line ends are accepted; bytes that are not UTF-8 are an error naming the
    line, so a GBK file is reported instead of being silently mangled. The file is opened (and
    missing or unreadable files reported) at the call, not at the first line.
    """
    return _decoded_lines(open_for_reading(path, what), path)


def _decoded_lines(fp, path: str) -> Iterator[Tuple[int, str]]:
    with fp:
        for number, raw in enumerate(fp, start=1):
            if number == 1 and raw.startswith(BOM):
                raw = raw[len(BOM):]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise UserError(
                    f"not valid UTF-8 (byte {raw[exc.start:exc.start + 1]!r} at column {exc.start + 1}); "
                    "save the file as UTF-8, e.g. `iconv -f GBK -t UTF-8`",
                    path,
                    number,
                ) from None
            line = line.rstrip("\n").rstrip("\r")
            if line.strip():
                yield number, line


def read_text_lines(path: str, what: str = "file") -> List[Tuple[int, str]]:
    """All `(line_number, line)` pairs of a UTF-8 text file (see `iter_text_lines`)."""
    return list(iter_text_lines(path, what))


def count_lines(path: str, chunk_size: int = 1 << 20) -> int:
    """Number of lines (blank ones included), counted on raw bytes: cheap even for large files."""
    count, last = 0, b"\n"
    with open(path, "rb") as fp:
        for chunk in iter(lambda: fp.read(chunk_size), b""):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (last != b"\n")


def sha256_file(path: str, chunk_size: int = 4 << 20) -> str:
    """Hex sha256 of a file, read in `chunk_size` blocks into one buffer (hashlib releases the GIL
    on large blocks, so this can run in a thread beside other work)."""
    digest = hashlib.sha256()
    buffer = bytearray(chunk_size)
    view = memoryview(buffer)
    with open(path, "rb") as fp:
        for size in iter(lambda: fp.readinto(buffer), 0):
            digest.update(view[:size])
    return digest.hexdigest()


def nearest_existing(path: str) -> str:
    """`path` or its nearest ancestor that exists: where the writer's missing directories would start."""
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def check_output_file(path: str, what: str = "output file", not_same_as: Optional[str] = None) -> None:
    """Refuse, before any work, an output path that cannot be written by renaming a finished file
    over it: a directory, a device or FIFO, a read-only file, a parent that is a file, a directory
    without write permission (or on a read-only file system), or the input file itself."""
    if os.path.isdir(path):
        raise UserError(f"{what} is a directory; give a file name inside it", path)
    if os.path.exists(path):  # through symlinks: the file that would be replaced
        target = os.path.realpath(path)
        if not os.path.isfile(target):
            raise UserError(f"{what} exists and is not a regular file; give another name", path)
        if not os.access(target, os.W_OK):
            raise UserError(f"{what} exists and is read-only; not replacing it", path)
        if not_same_as and os.path.exists(not_same_as) and os.path.samefile(target, not_same_as):
            raise UserError(f"{what} is the input file; give another name", path)
        path = target
    parent = nearest_existing(os.path.dirname(os.path.abspath(path)))
    if not os.path.isdir(parent):
        raise UserError(f"cannot create {what}: {parent} is a file, not a directory", path)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot write in {parent} (permission denied or read-only file system)", path)
    probe_writable(parent, path)


def check_output_dir(path: str, flag: str = "--output_dir") -> None:
    """Refuse, before any work and without creating anything, an output directory that cannot be
    written: a path that is a file, a parent that is a file, a place where no file can be made (a
    read-only file system, /proc, a full disk's inode table). The directory itself is made later."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{path} exists and is not a directory", flag)
    existing = nearest_existing(os.path.abspath(path))
    if not os.path.isdir(existing):
        raise UserError(f"cannot create {path}: {existing} is a file, not a directory", flag)
    probe_writable(existing, flag)


def probe_writable(directory: str, path: str) -> None:
    """Create and remove a file in `directory`: os.access says yes to root everywhere, and nothing
    short of a write knows about /proc, a full inode table or a mount that refuses new files."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=directory)
    except OSError as exc:
        raise UserError(f"cannot create a file in {directory}: {exc.strerror or exc}", path) from None
    os.close(fd)
    os.remove(probe)


def temp_file_beside(path: str) -> str:
    """Create an empty temporary file in `path`'s directory (made if missing), with the permissions
    a new file would get, and return its name: `.NAME.XXXX.tmp`, renamed over `path` when complete."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
    return tmp


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds.

    A crash mid-write leaves the old file (or none), never a half-written one.
    """
    tmp = temp_file_beside(path)
    try:
        yield tmp
        with open(tmp, "rb") as fp:
            os.fsync(fp.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text_atomic(path: str, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fp:
            fp.write(text)


def write_json_atomic(path: str, obj) -> None:
    write_text_atomic(path, json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


def read_json(path: str, what: str = "JSON file"):
    """Load a JSON file; missing or corrupt files are a `UserError` naming the file and line."""
    if not os.path.isfile(path):
        raise UserError(f"{what} not found", path)
    try:
        with open(path, "r", encoding="utf-8-sig") as fp:  # a BOM (Windows editors) is not JSON's
            return json.load(fp)
    except json.JSONDecodeError as exc:
        raise UserError(f"{what} is corrupt: {exc.msg} (column {exc.colno})", path, exc.lineno) from None
    except RecursionError:
        raise UserError(f"{what} is corrupt: its JSON nests too deeply", path) from None
    except UnicodeDecodeError:
        raise UserError(f"{what} is not UTF-8 text (corrupt?)", path) from None
    except OSError as exc:
        raise UserError(f"{what} cannot be read: {exc.strerror or exc}", path) from None



@contextlib.contextmanager
def parent_locked(path: str) -> Iterator[None]:
    """Hold an exclusive flock on the directory that holds `path` (waiting for it): a writer that checks
    `path` and then replaces it does both while no other such writer can. No lock file is left behind;
    the kernel releases the lock when the process ends, however it ends."""
    import fcntl

    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    fd = os.open(parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_directory(path: str) -> Iterator[str]:
    """Yield an empty directory beside `path`; it replaces `path` (by renames) only if the block
    succeeds, else it is removed. Readers see the old directory or the new one, never a mixture;
    a kill leaves `<path>.tmp-PID` (and, between the two renames, `<path>.old-PID`) beside it."""
    import shutil

    target = path.rstrip("/")
    tmp = f"{target}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        yield tmp
        old = None
        if os.path.lexists(target):
            old = f"{target}.old-{os.getpid()}"
            os.replace(target, old)
        os.replace(tmp, target)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
