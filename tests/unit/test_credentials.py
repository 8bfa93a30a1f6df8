"""Token files (parsing, rotation, failing closed), PEM files and loopback detection."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from peerload._address import is_loopback
from peerload.credentials import TokenFile, is_token, parse_tokens, read_pem
from peerload.errors import ConfigError


def replace(path: Path, text: str) -> None:
    """Rewrite `path` atomically, as a secret mount or a careful operator does."""
    tmp = path.with_suffix(".new")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_tokens_one_per_line_with_comments_and_blanks():
    assert parse_tokens("# fleet tokens\n\n  alpha  \nbeta-2\n", "f") == ("alpha", "beta-2")


@pytest.mark.parametrize(
    "text, fragment",
    [("", "holds no token"), ("# only a comment\n", "holds no token"), ("ok\ntwo words\n", "line 2")],
)
def test_bad_token_files_are_named(text, fragment):
    with pytest.raises(ConfigError, match=fragment):
        parse_tokens(text, "accept_tokens_file /x")


def test_is_token():
    assert is_token("abc.DEF-123_=") and not is_token("") and not is_token("a b") and not is_token("é")


def test_rotation_is_seen_without_restart(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("old\n")
    tokens = TokenFile(str(path), "accept_tokens_file")
    assert tokens.tokens() == ("old",) and tokens.first() == "old"
    replace(path, "new\nold\n")
    assert tokens.tokens() == ("new", "old") and tokens.first() == "new"
    replace(path, "new\n")
    assert tokens.tokens() == ("new",)


def test_a_server_fails_closed_a_client_keeps_its_last_token(tmp_path, caplog):
    path = tmp_path / "tokens"
    path.write_text("only\n")
    tokens = TokenFile(str(path), "accept_tokens_file")
    replace(path, "\n")  # emptied: revoke everything
    assert tokens.tokens() == ()
    assert tokens.first() == "only"
    path.unlink()
    assert tokens.tokens() == () and tokens.first() == "only"
    assert "no token accepted until fixed" in caplog.text
    replace(path, "back\n")
    assert tokens.tokens() == ("back",)


def test_missing_or_empty_token_file_refused_at_start(tmp_path):
    with pytest.raises(ConfigError, match="auth_token_file: cannot read"):
        TokenFile(str(tmp_path / "absent"), "auth_token_file")
    (tmp_path / "empty").write_text("")
    with pytest.raises(ConfigError, match="holds no token"):
        TokenFile(str(tmp_path / "empty"), "auth_token_file")


def test_pem_files_are_checked(tmp_path):
    good = tmp_path / "ca.pem"
    good.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    assert read_pem(str(good), "tls_ca", "CERTIFICATE").startswith(b"-----BEGIN")
    with pytest.raises(ConfigError, match="tls_key: .* is not a PEM file with a PRIVATE KEY"):
        read_pem(str(good), "tls_key", "PRIVATE KEY")
    with pytest.raises(ConfigError, match="tls_ca: cannot read"):
        read_pem(str(tmp_path / "absent.pem"), "tls_ca", "CERTIFICATE")


@pytest.mark.parametrize(
    "host, loopback",
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("node-1.example", False),
    ],
)
def test_loopback(host, loopback):
    assert is_loopback(host) is loopback
