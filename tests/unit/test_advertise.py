"""The address a serving process advertises: given, or the local end of the route to the coordinator."""

from __future__ import annotations

import logging

import pytest

from peerload.advertise import advertise_host, is_loopback
from peerload.settings import AUTO_ADVERTISE_HOST, Settings


def test_the_default_follows_the_route_to_a_local_coordinator() -> None:
    settings = Settings.load(env={}, coordinator="127.0.0.1:8001")
    assert settings.advertise_host == AUTO_ADVERTISE_HOST
    assert advertise_host(settings) == "127.0.0.1"


def test_a_given_address_is_advertised_as_is() -> None:
    settings = Settings.load(env={}, advertise_host="10.9.8.7", coordinator="10.9.8.1:8001")
    assert advertise_host(settings) == "10.9.8.7"


def test_loopback_told_to_a_remote_coordinator_warns_with_the_fix(caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings.load(env={}, advertise_host="127.0.0.1", coordinator="10.9.8.2:8001")
    with caplog.at_level(logging.WARNING, logger="peerload.advertise"):
        assert advertise_host(settings) == "127.0.0.1"
    [record] = [r for r in caplog.records if r.name == "peerload.advertise"]
    assert "10.9.8.2" in record.getMessage() and "--advertise-host" in record.getMessage()


def test_loopback_to_a_local_coordinator_is_quiet(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="peerload.advertise"):
        advertise_host(Settings.load(env={}, advertise_host="localhost", coordinator="127.0.0.2:8001"))
    assert not [r for r in caplog.records if r.name == "peerload.advertise"]


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("::1", True), ("localhost", True), ("10.0.0.1", False), ("node-1", False)],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
