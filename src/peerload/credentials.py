"""Credential files shared by clients and servers: bearer-token files (re-read on change) and PEM files.

A token file holds one token per line (blank lines and `#` comments ignored): a server accepts
any of them, a client sends the first. Rotation: add the new token to the servers' files, move
it first in the clients' files, then remove the old one; every reader notices a change by the
file's mtime, size and inode.
"""

from __future__ import annotations

import logging
import os
import threading

from peerload.errors import ConfigError

log = logging.getLogger(__name__)


def is_token(text: str) -> bool:
    """Whether `text` can be a bearer token: printable ASCII without whitespace (a header value)."""
    return bool(text) and all(33 <= ord(c) <= 126 for c in text)


def parse_tokens(text: str, source: str) -> tuple[str, ...]:
    """The tokens of a token file's text; raises ConfigError naming `source` and the bad line."""
    tokens = []
    for number, line in enumerate(text.splitlines(), start=1):
        token = line.strip()
        if not token or token.startswith("#"):
            continue
        if not is_token(token):
            raise ConfigError(f"{source}: line {number} is not a token (printable ASCII without spaces)")
        tokens.append(token)
    if not tokens:
        raise ConfigError(f"{source} holds no token: write one token per line")
    return tuple(tokens)


class TokenFile:
    """The tokens of one file, re-read whenever the file changes.

    A server fails closed: a file that became empty or unreadable accepts no token until it is
    fixed. A client keeps sending the last token it read.

    Args:
        path: the token file.
        setting: the setting or option that named it, for messages.

    Raises:
        ConfigError: the file cannot be read or holds no token (at construction only).
    """

    def __init__(self, path: str, setting: str) -> None:
        self.path = path
        self.setting = setting
        self._lock = threading.Lock()
        self._tokens: tuple[str, ...] = ()
        self._last_good: tuple[str, ...] = ()
        try:
            self._stamp: tuple[int, int, int] | None = self._stat()
            self._reload()
        except OSError as exc:
            raise ConfigError(f"{setting}: cannot read {path}: {exc.strerror or exc}") from None

    def tokens(self) -> tuple[str, ...]:
        """Every token of the file as it is now (re-read only when it changed; () while unusable)."""
        with self._lock:
            try:
                stamp: tuple[int, int, int] | None = self._stat()
            except OSError:
                stamp = None
            if stamp != self._stamp:  # warn once per change, not once per RPC
                self._stamp = stamp
                try:
                    self._reload()
                except (OSError, ConfigError) as exc:
                    log.warning("%s %s is unusable, no token accepted until fixed: %s", self.setting, self.path, exc)
            return self._tokens

    def first(self) -> str:
        """The token a client sends: the file's first, or the last one read while the file is unusable."""
        self.tokens()
        return self._last_good[0]

    def _stat(self) -> tuple[int, int, int]:
        st = os.stat(self.path)
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _reload(self) -> None:
        self._tokens = ()
        with open(self.path, encoding="utf-8", errors="replace") as fh:
            self._tokens = parse_tokens(fh.read(), f"{self.setting} {self.path}")
        self._last_good = self._tokens


def read_pem(path: str, setting: str, kind: str) -> bytes:
    """The bytes of a PEM file holding a `kind` block (CERTIFICATE, PRIVATE KEY); ConfigError otherwise."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data or f"{kind}-----".encode() not in data:
        raise ConfigError(f"{setting}: {path} is not a PEM file with a {kind} (-----BEGIN ... {kind}-----)")
    return data
