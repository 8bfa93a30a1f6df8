"""Network addresses, low in the house so every layer (transport, servers, process helpers) can use
them: HOST:PORT split and joined (IPv6 in brackets), loopback hosts, a free port to listen on."""

from __future__ import annotations

import ipaddress
import re
import socket

from peerload.errors import ConfigError

_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


def split_host_port(address: str, what: str = "address") -> tuple[str, int]:
    """Split HOST:PORT (also [v6]:PORT, and grpc-style URLs); raises ConfigError naming `what`."""
    text = address.strip()
    for prefix in ("grpc://", "http://", "dns:///", "dns:", "ipv4:"):
        if text.startswith(prefix):
            text = text[len(prefix) :]
    text = text.rstrip("/")
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or not is_host(host.strip("[]")):
        raise ConfigError(f"{what} {address!r} is not HOST:PORT (for example 127.0.0.1:8001)")
    return host.strip("[]"), int(port)


def host_port(host: str, port: int) -> str:
    """HOST:PORT, with an IPv6 host in brackets ([::1]:8001) as gRPC and URLs want it."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_host(text: str) -> bool:
    """An IP address or a DNS name (labels of letters, digits, '-' and '_')."""
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        pass
    name = text[:-1] if text.endswith(".") else text
    return 0 < len(name) <= 253 and all(_HOSTNAME.fullmatch(label) for label in name.split("."))


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine only (127.0.0.0/8, ::1, localhost)."""
    if host.strip("[]").lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (free now: another process may take it before use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
