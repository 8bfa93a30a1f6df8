"""The address a serving process tells its peers: given, or the one that routes to the coordinator.

A seed on a multi-host fleet that advertised loopback would be found by every target and read by
none (they would quietly load from storage), so the default is the local address of the interface
the kernel routes coordinator traffic through: on the coordinator's host that is loopback, on any
other host it is an address the coordinator's network can reach.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import socket

from peerload.settings import AUTO_ADVERTISE_HOST, Settings, coordinator_addresses, split_host_port

log = logging.getLogger(__name__)

LOOPBACK_FALLBACK = "127.0.0.1"


def advertise_host(settings: Settings) -> str:
    """The host part peers are told to use for this process' servers (resolved once per setting)."""
    return _resolve(settings.advertise_host, settings.coordinator)


@functools.lru_cache(maxsize=32)
def _resolve(configured: str, coordinator: str) -> str:
    coordinator_host = _first_coordinator_host(coordinator)
    host = configured if configured != AUTO_ADVERTISE_HOST else _route_source(coordinator_host)
    if is_loopback(host) and not is_loopback(coordinator_host):
        log.warning(
            "this process advertises loopback (%s) to a coordinator at %s: peers on other hosts find it "
            "and cannot reach it, so they load from storage instead; unset advertise_host (it then follows "
            "the route to the coordinator) or set --advertise-host / PEERLOAD_ADVERTISE_HOST to an address "
            "other hosts reach",
            host,
            coordinator_host,
        )
    return host


def _first_coordinator_host(coordinator: str) -> str:
    host, _port = split_host_port(coordinator_addresses(coordinator)[0], what="coordinator")
    return host


def _route_source(coordinator_host: str) -> str:
    """The local address the kernel would send from towards `coordinator_host` (no packet is sent)."""
    try:
        family, _, _, _, sockaddr = socket.getaddrinfo(coordinator_host, 9, type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect(sockaddr)  # a UDP connect only picks the route
            return str(probe.getsockname()[0])
    except OSError as e:
        log.warning(
            "cannot find the route to the coordinator host %s (%s): advertising %s; set --advertise-host "
            "if peers on other hosts must reach this process",
            coordinator_host,
            e,
            LOOPBACK_FALLBACK,
        )
        return LOOPBACK_FALLBACK


def is_loopback(host: str) -> bool:
    """True for loopback addresses and the name localhost."""
    if host.rstrip(".").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
