"""The export directory as infer.py reads it: `manifest.json` and `labels.json` validated, and every
file it reads checked against the size and sha256 the manifest recorded. No Paddle.

A file that differs from the manifest (edited, corrupt, half-copied, swapped weights of the same
size) is refused with a `UserError` instead of being served.
"""
from __future__ import annotations

import os
import re
import threading
from typing import List, Optional

from ..errors import UserError
from .format import LABELS_FILE, MANIFEST_FILE
from ..files import read_json, sha256_file
from .priority import background_level, heavy

EXPORT_HINT = "make one with `python export.py --resume_from_checkpoint CKPT --output_dir DIR`"
AGAIN = "export again"
SHA256 = re.compile("[0-9a-f]{64}")


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_file_name(value) -> bool:
    """A plain file name inside the export: no directories, so JSON cannot point infer.py elsewhere."""
    return isinstance(value, str) and value not in ("", ".", "..") and os.path.basename(value) == value \
        and "\\" not in value


def resolve_export_dir(model_path_prefix: str) -> str:
    """`checkpoints/export/model` (upstream style prefix) or `checkpoints/export` -> the export dir."""
    for candidate in (model_path_prefix, os.path.dirname(model_path_prefix)):
        if candidate and os.path.isfile(os.path.join(candidate, MANIFEST_FILE)):
            return candidate
    if os.path.isdir(model_path_prefix):
        raise UserError(f"is not an export directory ({MANIFEST_FILE} missing); {EXPORT_HINT}", model_path_prefix)
    if os.path.exists(model_path_prefix):
        raise UserError(f"is a file, not an export directory (nor is its directory one: {MANIFEST_FILE} missing); "
                        f"{EXPORT_HINT}", model_path_prefix)
    parent = os.path.dirname(model_path_prefix)
    if parent and os.path.isdir(parent):  # read as upstream's prefix dir/model, it names no export either
        raise UserError(f"export directory not found, and {parent} is not an export directory either ({MANIFEST_FILE} "
                        f"missing); {EXPORT_HINT}", model_path_prefix)
    raise UserError(f"export directory not found; {EXPORT_HINT}", model_path_prefix)


def read_export_json(export_dir: str, name: str, damage: str):
    """`(object, bad)`: an export's JSON file, which must be an object, and `bad(what)`, which raises
    one `UserError` naming the file, what is wrong, `damage` (its likely cause) and the remedy."""
    path = os.path.join(export_dir, name)
    data = read_json(path, what=name)

    def bad(what: str):
        raise UserError(f"{what} ({damage}); {AGAIN}", path)

    if not isinstance(data, dict):
        bad(f"is a JSON {type(data).__name__}, not an object")
    return data, bad


def read_manifest(export_dir: str) -> dict:
    """`manifest.json`, with the fields infer.py relies on checked for type."""
    manifest, bad = read_export_json(export_dir, MANIFEST_FILE, "corrupt, or not written by export.py")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        bad("`files` is missing or not an object of {name: {bytes, sha256}}")
    for name, info in files.items():
        if not (is_file_name(name) and isinstance(info, dict) and is_int(info.get("bytes")) and info["bytes"] >= 0
                and isinstance(info.get("sha256"), str) and SHA256.fullmatch(info["sha256"])):
            bad(f"`files` entry {name!r} is not {{bytes: int, sha256: 64 hex digits}}")
    onnx = manifest.get("onnx")
    if not isinstance(onnx, dict) or not is_file_name(onnx.get("fp32")):
        bad("`onnx` is missing or has no `fp32` model file name")
    for variant in ("fp16", "int8"):
        if onnx.get(variant) is not None and not is_file_name(onnx[variant]):
            bad(f"`onnx.{variant}` is not a file name")
    max_seq_length = manifest.get("max_seq_length")
    if not is_int(max_seq_length) or max_seq_length <= 0:
        bad(f"`max_seq_length` is {max_seq_length!r}, not a positive integer")
    return manifest


def read_decoder(export_dir: str, manifest: dict, labels: List[str]):
    """How the export's logits become labels: task type, thresholds, hierarchical decoding as the
    manifest records them (exports older than task types are multi-class)."""
    from ..task.decoding import Decoder

    try:
        return Decoder.from_manifest(manifest, labels)
    except ValueError as exc:
        raise UserError(f"{exc} (corrupt, or not written by export.py); {AGAIN}",
                        os.path.join(export_dir, MANIFEST_FILE)) from None


def check_file(export_dir: str, manifest: dict, name: str) -> str:
    """The path of `name`, which must be listed in the manifest, exist and have the recorded size."""
    path = os.path.join(export_dir, name)
    if not os.path.isfile(path):
        raise UserError(f"{name} is missing from the export; {EXPORT_HINT}", export_dir)
    info = manifest["files"].get(name)
    if info is None:
        raise UserError(f"{name} is not listed in {MANIFEST_FILE}, so it cannot be verified; {AGAIN}", path)
    if os.path.getsize(path) != info["bytes"]:
        raise UserError(f"has {os.path.getsize(path)} bytes, the manifest recorded {info['bytes']}: "
                        "corrupt or truncated copy; copy or export it again", path)
    return path


def sha256_error(path: str) -> UserError:
    return UserError(f"sha256 differs from {MANIFEST_FILE} (modified or corrupt); {AGAIN}", path)


def verify_file(export_dir: str, manifest: dict, name: str) -> str:
    """`check_file`, then the sha256: for the small files, read whole before use."""
    path = check_file(export_dir, manifest, name)
    if sha256_file(path) != manifest["files"][name]["sha256"]:
        raise sha256_error(path)
    return path


class BackgroundSha256:
    """Hash a large file in a thread (hashlib and file reads release the GIL) while the caller
    builds the session from it; `check()` joins and raises if it differs from the manifest."""

    def __init__(self, export_dir: str, manifest: dict, name: str):
        self.path = check_file(export_dir, manifest, name)
        self.expected = manifest["files"][name]["sha256"]
        self.digest: Optional[str] = None
        self.error: Optional[OSError] = None
        self.level = background_level()  # a swap's hashing is niced too (hashlib releases the GIL)
        # daemon: Ctrl-C during start-up must not wait for the hash
        self.thread = threading.Thread(target=self._run, name="sha256", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            with heavy(self.level):
                self.digest = sha256_file(self.path)
        except OSError as exc:
            self.error = exc

    def check(self) -> None:
        self.thread.join()
        if self.error is not None:
            raise UserError(f"cannot be read: {self.error.strerror or self.error}", self.path)
        if self.digest != self.expected:
            raise sha256_error(self.path)


def read_labels(export_dir: str) -> List[str]:
    """Label names in output order from `labels.json` (`[{id, label, word}, ...]`, ids 0..n-1)."""
    path = os.path.join(export_dir, LABELS_FILE)
    entries = read_json(path, what=LABELS_FILE)
    if (not isinstance(entries, list) or not entries
            or not all(isinstance(e, dict) and is_int(e.get("id")) and isinstance(e.get("label"), str)
                       and e["label"] for e in entries)
            or sorted(e["id"] for e in entries) != list(range(len(entries)))
            or len({e["label"] for e in entries}) != len(entries)):
        raise UserError("is not a list of {id, label, word} entries with ids 0..n-1 and distinct labels "
                        f"(corrupt or hand-edited?); {AGAIN}", path)
    return [e["label"] for e in sorted(entries, key=lambda e: e["id"])]
