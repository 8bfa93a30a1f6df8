"""Which network path a source's bytes take, as configured and as routed (for reports and warnings).

Users of other systems were bitten by silent fallbacks to slower paths, so every source in a
load report names its transport settings and the interface that routes to the peer, and a
mismatch between the two is logged as a warning.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Mapping

from peerload.transport.ucx_env import UCX_PATH_KEYS

log = logging.getLogger(__name__)


def route_interface(host: str) -> str:
    """The interface the kernel routes `host` through ("" when unknown)."""
    ip = shutil.which("ip")
    if ip is None or not host:
        return ""
    try:
        out = subprocess.run([ip, "-o", "route", "get", host], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    words = out.split()
    return words[words.index("dev") + 1] if "dev" in words[:-1] else ""


def describe_path(transport: str, host: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The path to the source at `host`: transport knobs as configured plus the routing interface."""
    env = os.environ if env is None else env
    path = {"peer_host": host, "interface": route_interface(host)}
    if transport == "nixl":
        path.update({key: env.get(key, "") or "(UCX default)" for key in UCX_PATH_KEYS})
    else:
        path["protocol"] = "tcp"
    warn_if_slower(transport, path)
    return path


def warn_if_slower(transport: str, path: Mapping[str, str]) -> None:
    """Warn when the configured devices exclude the interface that routes to the peer."""
    devices = path.get("UCX_NET_DEVICES", "")
    routed = path.get("interface", "")
    if transport != "nixl" or not routed or devices in ("", "(UCX default)", "all"):
        return
    allowed = {d.split(":")[0] for d in devices.split(",")}
    if routed not in allowed:
        log.warning(
            "peer %s is routed via %s but UCX_NET_DEVICES=%s: UCX may fail or take a slower path",
            path.get("peer_host"),
            routed,
            devices,
        )
