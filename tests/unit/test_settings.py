"""Settings: precedence, the ModelExpress-compatible forms, and errors that name the bad input."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from peerload.errors import ConfigError
from peerload.settings import Settings, parse_bool, split_host_port


def test_defaults_without_env():
    s = Settings.load(env={})
    assert s.coordinator == "127.0.0.1:8001" and s.transport == "nixl" and s.verify_checksums is True


def test_precedence_override_over_json_over_env_over_mx():
    env = {"MODEL_EXPRESS_URL": "mx:1", "PEERLOAD_COORDINATOR": "env:2", "PEERLOAD_TRANSPORT": "transfer_engine"}
    assert Settings.load(env={"MODEL_EXPRESS_URL": "mx:1"}).coordinator == "mx:1"
    assert Settings.load(env={"MX_SERVER_ADDRESS": "mx2:9"}).coordinator == "mx2:9"
    assert Settings.load(env=env).coordinator == "env:2"
    assert Settings.load(config={"url": "json:3"}, env=env).coordinator == "json:3"
    assert Settings.load(config={"url": "json:3"}, env=env, coordinator="kw:4").coordinator == "kw:4"
    assert Settings.load(env=env).transport == "transfer_engine"


def test_modelexpress_json_string_and_file(tmp_path):
    text = json.dumps({"url": "10.0.0.1:8001", "transport": "transfer_engine"})
    assert Settings.load(config=text, env={}).transport == "transfer_engine"
    path = tmp_path / "mx.json"
    path.write_text(text)
    assert Settings.load(config=str(path), env={}).coordinator == "10.0.0.1:8001"
    assert Settings.load(env={"PEERLOAD_CONFIG": text}).coordinator == "10.0.0.1:8001"


@pytest.mark.parametrize(
    "config, fragment",
    [
        ({"url": "h:1", "colour": "red"}, "colour"),
        ('{"url": ', "not valid JSON"),
        ("/no/such/file.json", "neither JSON nor a readable file"),
        ({"transport": "carrier-pigeon"}, "carrier-pigeon"),
        ({"url": "no-port"}, "no-port"),
        ({"heartbeat_interval_s": 20}, "heartbeat_interval_s"),
        ({"verify_checksums": "maybe"}, "verify_checksums"),
        ({"rpc_timeout_s": "soon"}, "rpc_timeout_s"),
        ({"seed_max_readers": -1}, "seed_max_readers"),
        ({"lease_timeout_s": 0}, "lease_timeout_s"),
        ({"lease_close_wait_s": -1}, "lease_close_wait_s"),
        ({"metadata_port": 70000}, "metadata_port"),
    ],
)
def test_bad_config_is_named(config, fragment):
    with pytest.raises(ConfigError, match=fragment):
        Settings.load(config=config, env={})


def test_env_booleans_and_numbers():
    s = Settings.load(
        env={
            "PEERLOAD_VERIFY_CHECKSUMS": "off",
            "PEERLOAD_CHUNK_BYTES": "1048576",
            "PEERLOAD_TRANSFER_TIMEOUT_S": "2.5",
        }
    )
    assert s.verify_checksums is False and s.chunk_bytes == 1 << 20 and s.transfer_timeout_s == 2.5
    assert parse_bool("x", "YES") is True
    with pytest.raises(ConfigError, match="PEERLOAD_X"):
        parse_bool("PEERLOAD_X", "2")


def test_modelexpress_p2p_metadata_mode():
    assert Settings.load(env={}).mx_p2p_metadata is True
    assert Settings.load(env={"MX_P2P_METADATA": "0"}).mx_p2p_metadata is False
    assert Settings.load(env={"MX_P2P_METADATA": "0", "PEERLOAD_MX_P2P_METADATA": "1"}).mx_p2p_metadata is True
    with pytest.raises(ConfigError, match="MX_P2P_METADATA"):
        Settings.load(env={"MX_P2P_METADATA": "sometimes"})


def test_host_port_forms():
    assert split_host_port("grpc://h:5") == ("h", 5)
    assert split_host_port("[::1]:8001") == ("::1", 8001)
    with pytest.raises(ConfigError, match="HOST:PORT"):
        split_host_port("h:99999")


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"port": 80000}, "port must be in 0..65535"),
        ({"port": -1}, "port must be in 0..65535"),
        ({"host": "bad host"}, "host 'bad host' is not an IP address"),
        ({"advertise_host": ""}, "advertise_host '' is not an IP address"),
        ({"coordinator": "bad host:8001"}, "is not HOST:PORT"),
        ({"rpc_timeout_s": float("nan")}, "rpc_timeout_s must be a number of seconds > 0"),
        ({"transfer_timeout_s": float("inf")}, "transfer_timeout_s must be a number of seconds > 0"),
        ({"gc_timeout_s": 0}, "gc_timeout_s must be a number of seconds > 0"),
        ({"redis_url": "localhost:6379"}, "redis_url 'localhost:6379' must start with redis://"),
        ({"tls_ca": "/no/such/ca.pem"}, "tls_ca: '/no/such/ca.pem' is not a readable file"),
        ({"accept_tokens_file": "/no/such/tokens"}, "accept_tokens_file: '/no/such/tokens' is not a readable file"),
        ({"auth_token": "two words"}, "auth_token must be printable ASCII without spaces"),
        ({"tls_server_name": "not a name"}, "tls_server_name 'not a name' is not a host name"),
    ],
)
def test_bad_values_are_refused_naming_the_setting(overrides, fragment):
    with pytest.raises(ConfigError, match=fragment):
        Settings.load(env={}, **overrides)


def test_tls_cert_and_key_go_together(tmp_path):
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    with pytest.raises(ConfigError, match="tls_cert and tls_key go together"):
        Settings.load(env={}, tls_cert=str(cert))


def test_hosts_and_ports_that_are_fine():
    s = Settings.load(env={}, host="0.0.0.0", advertise_host="node-1.cluster.local", port=0, coordinator="[::1]:8001")
    assert (s.host, s.advertise_host, s.port) == ("0.0.0.0", "node-1.cluster.local", 0)
    assert Settings.load(env={}, host="::").host == "::"


def test_token_file_from_the_official_clients_variable_and_token_not_in_repr(tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    assert Settings.load(env={"MX_AUTH_TOKEN_PATH": str(token)}).auth_token_file == str(token)
    both = {"MX_AUTH_TOKEN_PATH": "/elsewhere", "PEERLOAD_AUTH_TOKEN_FILE": str(token)}
    assert Settings.load(env=both).auth_token_file == str(token)
    assert "s3cret" not in repr(Settings.load(env={}, auth_token="s3cret"))


def test_several_coordinators_comma_separated_from_every_source() -> None:
    from peerload.settings import coordinator_addresses

    assert coordinator_addresses("a:1, b:2,grpc://c:3,[::1]:4,a:1,") == ("a:1", "b:2", "c:3", "[::1]:4")
    assert Settings.load(env={"PEERLOAD_COORDINATOR": "a:1,b:2"}).coordinators == ("a:1", "b:2")
    assert Settings.load(env={"MODEL_EXPRESS_URL": "http://mx-0:8001,mx-1:8001"}).coordinators == (
        "mx-0:8001",
        "mx-1:8001",
    )
    assert Settings.load(env={}, coordinator="only:9").coordinators == ("only:9",)
    with pytest.raises(ConfigError, match=r"coordinator 'b:x' is not HOST:PORT"):
        Settings.load(env={}, coordinator="a:1,b:x")
    with pytest.raises(ConfigError, match="names no HOST:PORT"):
        Settings.load(env={}, coordinator=" , ")


def test_redis_sentinel_urls() -> None:
    from peerload.settings import parse_sentinel_url

    url = "redis+sentinel://10.0.0.1:26379, 10.0.0.2:26380/peerload/2"
    assert parse_sentinel_url(url) == ([("10.0.0.1", 26379), ("10.0.0.2", 26380)], "peerload", 2)
    assert parse_sentinel_url("redis+sentinel://s:26379/pl") == ([("s", 26379)], "pl", 0)
    assert parse_sentinel_url("redis://h:6379/0") is None
    assert Settings.load(env={}, redis_url=url).redis_url == url
    with pytest.raises(ConfigError, match="names no Sentinel or no service"):
        Settings.load(env={}, redis_url="redis+sentinel://s:26379")
    with pytest.raises(ConfigError, match="is not a number"):
        Settings.load(env={}, redis_url="redis+sentinel://s:26379/pl/x")
    with pytest.raises(ConfigError, match="Sentinel 's' is not HOST:PORT"):
        Settings.load(env={}, redis_url="redis+sentinel://s/pl")


def test_model_express_url_wins_over_mx_server_address_as_in_the_official_client() -> None:
    """modelexpress 0.7.0's _get_server_url reads MODEL_EXPRESS_URL first, then MX_SERVER_ADDRESS."""
    both = {"MODEL_EXPRESS_URL": "url-host:8001", "MX_SERVER_ADDRESS": "address-host:8002"}
    assert Settings.load(env=both).coordinator == "url-host:8001"
    assert Settings.load(env={"MX_SERVER_ADDRESS": "address-host:8002"}).coordinator == "address-host:8002"
    assert Settings.load(env={**both, "PEERLOAD_COORDINATOR": "mine:9"}).coordinator == "mine:9"


def _official_server_urls(env: dict[str, str], explicit: list[str]) -> list[str]:
    """modelexpress.client._get_server_url, in a process of its own (its stubs clash with ours)."""
    if importlib.util.find_spec("modelexpress") is None:
        pytest.skip("modelexpress==0.7.0 (the oracle) is not installed; `make install` adds it")
    script = (
        "import json, sys\nfrom modelexpress.client import _get_server_url\n"
        "print(json.dumps([_get_server_url()] + [_get_server_url(u) for u in json.loads(sys.argv[1])]))"
    )
    clean = {k: v for k, v in os.environ.items() if k not in ("MODEL_EXPRESS_URL", "MX_SERVER_ADDRESS")}
    out = subprocess.run(
        [sys.executable, "-c", script, json.dumps(explicit)],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(out.stdout.splitlines()[-1])


def test_coordinator_address_handling_matches_the_installed_official_client() -> None:
    both = {"MODEL_EXPRESS_URL": "url-host:8001", "MX_SERVER_ADDRESS": "address-host:8002"}
    urls = ["http://mx:8001", "https://mx:8001", "mx:8001"]
    from_env, *explicit = _official_server_urls(both, urls)
    assert from_env == Settings.load(env=both).coordinator == "url-host:8001"
    assert [Settings.load(env={}, coordinator=u).coordinators for u in urls] == [(e,) for e in explicit]


@pytest.mark.parametrize("prefix", ["http://", "https://", "HTTP://", "grpc://", "dns:///", "ipv4:"])
def test_coordinator_prefixes_the_official_client_or_grpc_accept_are_dropped(prefix: str) -> None:
    s = Settings.load(env={}, coordinator=f"{prefix}10.0.0.1:8001, {prefix}10.0.0.2:8001/")
    assert s.coordinators == ("10.0.0.1:8001", "10.0.0.2:8001")
    assert Settings.load(env={"MODEL_EXPRESS_URL": f"{prefix}mx:8001"}).coordinators == ("mx:8001",)


@pytest.mark.parametrize("address", ["ftp://10.0.0.1:8001", "unix:///run/mx.sock", "redis://h:6379", "a:1,tcp://b:2"])
def test_other_coordinator_schemes_are_refused_naming_the_scheme(address: str) -> None:
    scheme = address.split(",")[-1].split("://")[0]
    with pytest.raises(ConfigError, match=rf"scheme {scheme}:// is not one peerload dials; give HOST:PORT"):
        Settings.load(env={}, coordinator=address)
    with pytest.raises(ConfigError, match=rf"scheme {scheme}://"):
        Settings.load(env={"MX_SERVER_ADDRESS": address})
