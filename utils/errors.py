"""User-facing errors: one paragraph, the file and line where there is one, a nonzero exit.

Bugs in this tool still raise normally; only `UserError` (bad input, bad flags, missing files)
is turned into a short message. Set `PTUNING_DEBUG=1` or pass `--debug` to see the traceback.
"""
from __future__ import annotations

import argparse
import errno
import os
import sys
from typing import Callable, Optional

EXIT_USER_ERROR = 2
MESSAGE_CHARS = 2000  # an error that echoes a huge value (a 100k-character label) stays one short paragraph
# Failures of the machine, not of this tool: full disk, read-only or forbidden places, size limits.
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.ENOTDIR,
                      errno.EISDIR, errno.ENAMETOOLONG, errno.EIO}


class UserError(Exception):
    """An error the user can fix: bad data, bad flags, missing or corrupt files."""

    def __init__(self, message: str, path: Optional[str] = None, line: Optional[int] = None):
        self.message = message
        self.path = path
        self.line = line
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.path is not None:
            where = f"{self.path}:{self.line}: " if self.line is not None else f"{self.path}: "
        return where + self.message


def check_text(text: str, where: str, line: Optional[int] = None) -> str:
    """`text` if it is valid Unicode, else a `UserError` naming `where` (a flag, a request field,
    an argument, a file and `line`). Every place a text enters calls this: Python strings can hold
    lone surrogates that no tokenizer, JSON writer or terminal accepts: `"\\ud800"` in JSON, and on
    Linux the bytes of a command line that are not UTF-8 (Python's surrogateescape, U+DC80..U+DCFF).
    Files need no call: they are decoded strictly (utils/files.py), which refuses both."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(text[exc.start])
        what = (f"U+{code:04X}, which stands for the byte 0x{code - 0xDC00:02X} of text that is not UTF-8 (another "
                "encoding, such as GBK? convert it to UTF-8)" if 0xDC80 <= code <= 0xDCFF
                else f"a lone surrogate U+{code:04X} (half of a UTF-16 pair without its other half)")
        raise UserError(f"not valid Unicode: character {exc.start + 1} is {what}", where, line) from None
    return text


def text_flag(value: str) -> str:
    """argparse `type=` of a flag that takes a text (not a path): `check_text`, the error naming the flag."""
    try:
        return check_text(value, "")
    except UserError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def brief(message: str, limit: int = MESSAGE_CHARS) -> str:
    """`message`, its middle left out when longer than `limit` (the start names the file and line)."""
    if len(message) <= limit:
        return message
    head, tail = message[:limit * 3 // 4], message[-(limit // 4):]
    return f"{head} […{len(message) - len(head) - len(tail)} characters left out…] {tail}"


def debug_enabled(argv=None) -> bool:
    argv = sys.argv if argv is None else argv
    return "--debug" in argv or os.environ.get("PTUNING_DEBUG", "") not in ("", "0")


def strip_debug_flag(argv):
    """The argument parsers do not know `--debug`; it only controls tracebacks."""
    return [a for a in argv if a != "--debug"]


def run_cli(main: Callable[[list], Optional[int]], argv=None) -> int:
    """Run `main(argv)`; print a `UserError` as `error: ...` on stderr and return exit code 2."""
    from . import console

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_enabled(argv)
    console.setup(debug)
    try:
        return main(strip_debug_flag(argv)) or 0
    except UserError as exc:
        if debug:
            raise
        sys.stderr.write(f"error: {brief(str(exc))}\n(run with --debug or PTUNING_DEBUG=1 for a traceback)\n")
        return EXIT_USER_ERROR
    except OSError as exc:
        if debug or exc.errno not in ENVIRONMENT_ERRNOS:
            raise
        where = exc.filename or os.path.basename(sys.argv[0] or "") or "ptuning"
        sys.stderr.write(f"error: {where}: {exc.strerror} [{errno.errorcode.get(exc.errno, exc.errno)}]; stopped, "
                         "and the partial files of the step that failed were removed (complete checkpoints and "
                         "results stay)\n")
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
