"""vLLM adapter parts that need no vLLM: option parsing and the owner of live sources."""

from __future__ import annotations

import pytest

from peerload.adapters.vllm_support import LiveSources, loader_settings
from peerload.errors import ConfigError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in (
        "PEERLOAD_COORDINATOR",
        "PEERLOAD_CONFIG",
        "MODEL_EXPRESS_URL",
        "MX_SERVER_ADDRESS",
        "PEERLOAD_TRANSPORT",
    ):
        monkeypatch.delenv(key, raising=False)


@pytest.mark.parametrize(
    "extra, coordinator",
    [
        ({"coordinator": "10.1.2.3:9000"}, "10.1.2.3:9000"),
        ({"url": "10.1.2.4:9001"}, "10.1.2.4:9001"),  # ModelExpress-style key
        (None, "127.0.0.1:8001"),
        ({}, "127.0.0.1:8001"),
    ],
)
def test_coordinator_from_extra_config(extra: dict | None, coordinator: str) -> None:
    assert loader_settings(extra).coordinator == coordinator


def test_env_vars_apply_and_extra_config_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MX_SERVER_ADDRESS", "10.0.0.9:7000")
    assert loader_settings(None).coordinator == "10.0.0.9:7000"
    monkeypatch.setenv("PEERLOAD_COORDINATOR", "10.0.0.8:7001")
    assert loader_settings({}).coordinator == "10.0.0.8:7001"
    assert loader_settings({"coordinator": "10.0.0.7:7002"}).coordinator == "10.0.0.7:7002"


def test_timeouts_and_transport_are_typed() -> None:
    s = loader_settings({"transport": "transfer_engine", "rpc_timeout_s": "5", "transfer_timeout_s": 60})
    assert (s.transport, s.rpc_timeout_s, s.transfer_timeout_s) == ("transfer_engine", 5.0, 60.0)


@pytest.mark.parametrize(
    "extra, named",
    [
        ({"coordinator": "127.0.0.1:1", "bogus": 1, "also_bad": 2}, ["'also_bad'", "'bogus'"]),
        ({"transport": "carrier-pigeon"}, ["carrier-pigeon"]),
        ({"coordinator": "no-port"}, ["no-port"]),
        ({"rpc_timeout_s": -1}, ["rpc_timeout_s"]),
    ],
)
def test_bad_options_are_named(extra: dict, named: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        loader_settings(extra)
    message = str(err.value)
    assert message.startswith("--model-loader-extra-config for load format `peerload`")
    assert all(n in message for n in named), message


def test_extra_config_must_be_an_object() -> None:
    with pytest.raises(ConfigError, match="must be a JSON object"):
        loader_settings(["coordinator", "127.0.0.1:1"])


class _Closable:
    def __init__(self) -> None:
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


def test_live_sources_keeps_until_closed_once() -> None:
    owner = LiveSources()
    a, b = _Closable(), _Closable()
    owner.keep(a)  # type: ignore[arg-type]
    owner.keep(b)  # type: ignore[arg-type]
    assert owner.publishers() == [a, b]
    owner.close()
    owner.close()
    assert (a.closed, b.closed) == (1, 1) and owner.publishers() == []


def test_several_coordinator_replicas_from_the_extra_config_or_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert loader_settings({"url": "mx-0:8001,mx-1:8001"}).coordinators == ("mx-0:8001", "mx-1:8001")
    monkeypatch.setenv("MODEL_EXPRESS_URL", "10.0.0.1:8001, 10.0.0.2:8001")
    assert loader_settings(None).coordinators == ("10.0.0.1:8001", "10.0.0.2:8001")
