"""API keys: `--api_key_file` and `--admin_key_file` (one key a line), sent as `Authorization: Bearer KEY`.

`KeyFile` re-reads its file when its mtime, size or inode change (checked on each request: one
stat), so keys are added and revoked without a restart. At start-up a missing, unreadable or empty
file is an error (exit 2, before any model loads); later, one that goes missing or empty refuses
every request (fail closed: emptying the file revokes every key) until it holds keys again.

`ApiKeys` (ASGI middleware) answers a request without a valid key 401 before its body is read;
the admin routes (`/admin/...`) need a key of the admin file (disabled, 403, without one);
`/health`, `/ready` and `/v2/health/*` stay open for orchestrators. A key in the URL's query
(`?api_key=...`, `?token=...`) is refused with 400, as URLs end up in logs and browser histories.
Keys are compared by their sha256 with `hmac.compare_digest`, against every key (no early exit),
and never logged: the access log's URLs lose key-like query values (`RedactKeys`).
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
from typing import FrozenSet, Optional, Tuple
from urllib.parse import parse_qsl

from ..errors import UserError

__all__ = ["ApiKeys", "KeyFile", "RedactKeys", "OPEN_PATHS", "URL_KEY_NAMES"]

logger = logging.getLogger(__name__)

OPEN_PATHS = ("/health", "/ready")  # and /v2/health/...: orchestrators' probes
OPEN_PREFIX = "/v2/health/"
ADMIN_PREFIX = "/admin/"
URL_KEY_NAMES = frozenset({"api_key", "apikey", "api-key", "key", "token", "access_token", "auth", "authorization",
                           "bearer", "password", "secret"})
MIN_KEY_CHARS = 16


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def parse_keys(text: str, path: str) -> FrozenSet[bytes]:
    """The keys of a keys file (blank lines and `#` comments skipped) as sha256 digests; a key
    shorter than 16 characters or holding a space is refused by line number (never quoted)."""
    keys = set()
    for number, line in enumerate(text.splitlines(), 1):
        key = line.strip()
        if not key or key.startswith("#"):
            continue
        if len(key) < MIN_KEY_CHARS or any(c.isspace() for c in key):
            raise UserError(f"a key must be at least {MIN_KEY_CHARS} characters without spaces (e.g. `openssl rand "
                            "-hex 32`)", path, number)
        keys.add(digest(key))
    if not keys:
        raise UserError("holds no key (one key a line)", path)
    return frozenset(keys)


class KeyFile:
    """The keys of one file, re-read when the file changes."""

    def __init__(self, path: str, flag: str):
        self.path, self.flag = path, flag
        self._lock = threading.Lock()
        self._stamp: Optional[Tuple[int, int, int]] = None
        self.keys: FrozenSet[bytes] = frozenset()
        self.problem: Optional[str] = None
        self.keys = self._read()  # a start-up error is the flag's UserError

    def _read(self) -> FrozenSet[bytes]:
        try:
            stat = os.stat(self.path)
            with open(self.path, encoding="utf-8-sig") as fp:  # -sig: a BOM (Notepad's) is not part of the first key
                text = fp.read()
        except FileNotFoundError:
            raise UserError("no such file (the API keys, one a line)", self.flag) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"cannot read {self.path}: {getattr(exc, 'strerror', None) or exc}", self.flag) from None
        keys = parse_keys(text, self.path)
        self._stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        return keys

    def current(self) -> FrozenSet[bytes]:
        """The keys now: re-read if the file changed; none (every request refused) if it is gone or bad."""
        try:
            stat = os.stat(self.path)
            stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        except OSError:
            stamp = None
        if stamp == self._stamp and stamp is not None:
            return self.keys
        with self._lock:
            try:
                self.keys, self.problem = self._read(), None
                logger.info("%s re-read: %d key(s)", self.flag, len(self.keys))
            except UserError as exc:
                if self.problem != str(exc):
                    logger.error("%s: %s: every request needing its keys is refused until it is fixed", self.flag, exc)
                self.keys, self.problem, self._stamp = frozenset(), str(exc), stamp
        return self.keys

    def accepts(self, key: Optional[str]) -> bool:
        """Whether `key` is one of the keys: compared in constant time against every key."""
        keys = self.current()
        if key is None:
            return False
        given, found = digest(key), False
        for known in keys:
            found |= hmac.compare_digest(given, known)
        return found


def bearer(scope) -> Optional[str]:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, key = value.decode("latin-1").partition(" ")
            return key.strip() if scheme.lower() == "bearer" and key.strip() else None
    return None


def key_in_query(query: bytes) -> bool:
    try:
        pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
    except ValueError:
        return False
    return any(name.lower() in URL_KEY_NAMES for name, _ in pairs)


class ApiKeys:
    """ASGI middleware: the key check, before the app (and its body reading) runs."""

    def __init__(self, app, api_keys: Optional[KeyFile], admin_keys: Optional[KeyFile]):
        self.app, self.api_keys, self.admin_keys = app, api_keys, admin_keys

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        refusal = self.refusal(path, scope)
        if refusal is None:
            return await self.app(scope, receive, send)
        from .middleware import error_response

        status, message = refusal
        client = scope.get("client") or ("?", 0)
        logger.warning("refused %s %s from %s (%d): %s", scope.get("method"), path, client[0], status,
                       message.split(":")[0])  # (the path without its query: never a key)
        headers = {"Connection": "close"}  # the body is never read
        if status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="ptuning"'
        await error_response(status, "authorization" if status != 400 else "query", message, headers, path)(
            scope, receive, send)

    def refusal(self, path: str, scope) -> Optional[Tuple[int, str]]:
        """(status, message) for a request this middleware refuses, None for one it lets through."""
        if (self.api_keys or self.admin_keys) and key_in_query(scope.get("query_string", b"")):
            return 400, ("a key in the URL is refused (URLs are logged): send it as the header "
                         "`Authorization: Bearer KEY`, and replace that key, it may be in logs now")
        if path in OPEN_PATHS or path.startswith(OPEN_PREFIX):
            return None
        key = bearer(scope)
        if path.startswith(ADMIN_PREFIX):
            if self.admin_keys is None:
                return 403, "the admin routes are disabled: start serve.py with --admin_key_file FILE"
            if self.admin_keys.accepts(key):
                return None
            return 401, "an admin key is required: `Authorization: Bearer KEY` with a key of --admin_key_file"
        if self.api_keys is None or self.api_keys.accepts(key) or (self.admin_keys and self.admin_keys.accepts(key)):
            return None
        what = "is missing" if key is None else "is not valid"
        return 401, f"an API key {what}: send `Authorization: Bearer KEY` with a key of --api_key_file"


class RedactKeys(logging.Filter):
    """For uvicorn's access log: a URL whose query holds a key-like field is logged without its query."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "?" in args[2]:
            path, _, query = args[2].partition("?")
            if key_in_query(query.encode("latin-1", "replace")):
                record.args = (*args[:2], f"{path}?[redacted]", *args[3:])
        return True
