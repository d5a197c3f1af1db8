"""Reading user text files strictly and writing output files atomically."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from typing import Iterator, List, Tuple

from .errors import UserError


def read_text_lines(path: str, what: str = "file") -> List[Tuple[int, str]]:
    """Return `(line_number, line)` pairs of a UTF-8 text file, skipping blank lines.

    A UTF-8 BOM and CRLF line ends are accepted; bytes that are not UTF-8 are an error naming the
    line, so a GBK file is reported instead of being silently mangled.
    """
    if not os.path.exists(path):
        raise UserError(f"{what} not found", path)
    if not os.path.isfile(path):
        raise UserError(f"{what} is not a regular file", path)
    try:
        with open(path, "rb") as fp:
            raw = fp.read()
    except OSError as exc:
        raise UserError(f"cannot read the {what}: {exc.strerror}", path) from None
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    lines = []
    for number, chunk in enumerate(raw.split(b"\n"), start=1):
        try:
            line = chunk.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UserError(
                f"not valid UTF-8 (byte {chunk[exc.start:exc.start + 1]!r} at column {exc.start + 1}); "
                "save the file as UTF-8, e.g. `iconv -f GBK -t UTF-8`",
                path,
                number,
            ) from None
        line = line.rstrip("\r")
        if line.strip():
            lines.append((number, line))
    return lines


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds.

    A crash mid-write leaves the old file (or none), never a half-written one.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
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
        with open(path, "r", encoding="utf-8") as fp:
            return json.load(fp)
    except json.JSONDecodeError as exc:
        raise UserError(f"{what} is corrupt: {exc.msg} (column {exc.colno})", path, exc.lineno) from None
    except UnicodeDecodeError:
        raise UserError(f"{what} is not UTF-8 text (corrupt?)", path) from None
    except OSError as exc:
        raise UserError(f"cannot read the {what}: {exc.strerror}", path) from None


def sha256_file(path: str) -> str:
    """Hex sha256 of a file, read in 8 MB chunks (hashlib releases the GIL on them)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fp:
        for chunk in iter(lambda: fp.read(8 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
