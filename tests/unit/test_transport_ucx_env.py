"""The UCX environment and backend parameters peerload gives NIXL: defaults only where unset, and
a peer error-handling parameter the installed UCX plugin actually knows."""

from __future__ import annotations

import pytest

from peerload.transport.ucx_env import UCX_BACKEND_PARAMS, UCX_DEFAULTS, apply_ucx_defaults


def test_defaults_fill_only_what_is_unset_and_bound_tcp_keepalive():
    env = {"UCX_TCP_KEEPIDLE": "30s"}
    apply_ucx_defaults(env, loopback=True)
    assert env["UCX_TCP_KEEPIDLE"] == "30s", "a value the user set must win"
    assert (env["UCX_TCP_KEEPINTVL"], env["UCX_TCP_KEEPCNT"]) == ("2s", "3")
    assert env["UCX_NET_DEVICES"] == "lo" and env["UCX_MODULES"] == UCX_DEFAULTS["UCX_MODULES"]


def test_the_ucx_plugin_knows_the_peer_error_mode_parameter():
    pytest.importorskip("nixl_cu12")
    from nixl_cu12._api import nixl_agent, nixl_agent_config

    apply_ucx_defaults()
    agent = nixl_agent("ucx-env-probe", nixl_agent_config(enable_prog_thread=False, backends=[]))
    known = agent.get_plugin_params("UCX")
    assert UCX_BACKEND_PARAMS == {"ucx_error_handling_mode": "peer"}
    assert set(UCX_BACKEND_PARAMS) <= set(known), f"the UCX plugin's parameters are {sorted(known)}"
    agent.create_backend("UCX", dict(UCX_BACKEND_PARAMS))  # accepted (an unknown mode raises)
    assert "UCX" in agent.backends
