"""The network path a source's bytes take: what is reported, and when a slower path is warned about."""

from __future__ import annotations

import logging

import pytest

from peerload.loader.network import data_path, describe_path, route_interface, tcp_fix, warn_if_slower


def test_loopback_routes_via_lo_and_reports_ucx_settings_as_configured():
    path = describe_path("nixl", "127.0.0.1", env={"UCX_TLS": "tcp,self"})
    assert path["interface"] == "lo" and path["peer_host"] == "127.0.0.1"
    assert path["UCX_TLS"] == "tcp,self" and path["UCX_NET_DEVICES"] == "(UCX default)"
    assert describe_path("transfer_engine", "127.0.0.1", env={})["protocol"] == "tcp"


def test_unknown_host_has_no_interface():
    assert route_interface("") == "" and route_interface("not-an-address") == ""


@pytest.mark.parametrize(
    ("devices", "routed", "warns"),
    [
        ("eth0", "eth0", False),
        ("mlx5_0:1,eth0", "eth0", False),
        ("lo", "eth0", True),  # UCX held to loopback while the peer is on another interface
        ("(UCX default)", "eth0", False),
        ("all", "eth0", False),
        ("eth0", "", False),  # the route is unknown: nothing to compare
    ],
)
def test_warns_when_the_configured_devices_exclude_the_route(devices, routed, warns, caplog):
    with caplog.at_level(logging.WARNING, logger="peerload.loader.network"):
        warn_if_slower("nixl", {"peer_host": "10.0.0.2", "interface": routed, "UCX_NET_DEVICES": devices})
    assert bool(caplog.records) is warns


@pytest.mark.parametrize(
    ("transport", "path", "env", "expected"),
    [
        ("nixl", {"peer_host": "127.0.0.1", "interface": "lo", "UCX_TLS": "(UCX default)"}, {}, "shm"),
        ("nixl", {"peer_host": "127.0.0.1", "interface": "lo", "UCX_TLS": "tcp,self"}, {}, "tcp"),
        ("nixl", {"peer_host": "10.0.0.2", "interface": "eth0", "UCX_TLS": "rc,cuda_copy"}, {}, "rdma"),
        (
            "nixl",
            {"peer_host": "10.0.0.2", "interface": "eth0", "UCX_TLS": "(UCX default)"},
            {"UCX_MODULES": "^ib"},
            "tcp",
        ),
        ("nixl", {"peer_host": "10.0.0.2", "interface": "eth0", "UCX_TLS": "(UCX default)"}, {}, "auto"),
        ("nixl", {"peer_host": "127.0.0.1", "interface": "lo", "UCX_TLS": "shm,tcp"}, {}, "shm"),
        ("transfer_engine", {"peer_host": "127.0.0.1", "protocol": "tcp"}, {}, "tcp"),
        ("transfer_engine", {"peer_host": "10.0.0.2", "protocol": "rdma"}, {}, "rdma"),
    ],
)
def test_data_path_from_the_reported_settings(transport, path, env, expected):
    assert data_path(transport, path, env) == expected


def test_tcp_fix_names_the_knob_to_change():
    assert "UCX_TLS=tcp,self" in tcp_fix("nixl", {"UCX_TLS": "tcp,self"}, {})
    assert "UCX_MODULES=^ib" in tcp_fix("nixl", {"UCX_TLS": "(UCX default)"}, {"UCX_MODULES": "^ib"})
    assert "Mooncake" in tcp_fix("transfer_engine", {"protocol": "tcp"}, {})
