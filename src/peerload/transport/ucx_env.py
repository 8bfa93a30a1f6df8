"""The UCX/NIXL environment these machines need, in one place (the NIXL transport, bench children).

Applied with setdefault before the first agent exists, so what a user set always wins.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

UCX_DEFAULTS = {
    # Without it every process that made a UCX agent segfaults at exit here (rc 139).
    "UCX_MODULES": "^ib",
    # UCX's memory-event hooks cost ~0.4 s per process with torch loaded (they patch every loaded
    # library); they only serve the registration cache, disabled with them: NIXL registers each
    # region once, explicitly, so the cache buys nothing and cannot go stale.
    "UCX_MEM_EVENTS": "n",
    "UCX_RCACHE_ENABLE": "n",
    # NIXL's Python logger prints INFO lines to stdout, which would mix with a program's output.
    "NIXL_LOG_LEVEL": "WARN",
    # An idle TCP connection to a host that vanished without closing it (power, partition) fails
    # after ~16 s as an endpoint error, which peer error handling turns into a failed transfer.
    "UCX_TCP_KEEPIDLE": "10s",
    "UCX_TCP_KEEPINTVL": "2s",
    "UCX_TCP_KEEPCNT": "3",
}
# Backend parameters of NIXL's UCX plugin. Peer error handling: a peer's failure completes its
# endpoints' requests with an error instead of aborting the process (NIXL defaults to it, but not
# every release did); docs/transport.md#peer-failures says what it does not cover.
UCX_BACKEND_PARAMS = {"ucx_error_handling_mode": "peer"}
# Single-host runs: keep UCX on loopback.
LOOPBACK = {"UCX_NET_DEVICES": "lo"}


def apply_ucx_defaults(env: MutableMapping[str, str] | None = None, *, loopback: bool = False) -> None:
    """Set the defaults (and loopback devices) in `env` (default: os.environ) where unset."""
    env = os.environ if env is None else env
    for key, value in {**UCX_DEFAULTS, **(LOOPBACK if loopback else {})}.items():
        env.setdefault(key, value)


# The knobs that decide which path UCX takes (what load reports name per source).
UCX_PATH_KEYS = ("UCX_TLS", "UCX_NET_DEVICES")


def cross_host_env(device: str) -> dict[str, str]:
    """UCX settings for hosts that share a kernel but must talk over `device` (emulated hosts).

    Shared-memory and cross-memory-attach transports would bypass the emulated NIC, so UCX is
    held to TCP (plus `self` for loopback within one process) on that one interface.
    """
    return {"UCX_TLS": "tcp,self", "UCX_NET_DEVICES": device}
