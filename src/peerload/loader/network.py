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


# UCX transport names by the path they take (`ucx_info -d` lists them per device).
_RDMA_TLS = {"rc", "rc_v", "rc_x", "rc_mlx5", "ud", "ud_v", "ud_x", "ud_mlx5", "dc", "dc_x", "dc_mlx5", "ib"}
_SHM_TLS = {"shm", "sm", "posix", "sysv", "xpmem", "cma", "knem"}


def data_path(transport: str, path: Mapping[str, str], env: Mapping[str, str] | None = None) -> str:
    """Which path a source's bytes took: "shm" (same host), "rdma", "tcp" or "auto" (UCX chose; unknown).

    Read from the transport settings the load reported (`describe_path`) and UCX_MODULES: Mooncake
    runs its tcp protocol here; UCX held to tcp by UCX_TLS, or with its `ib` module left out
    (UCX_MODULES=^ib) towards another host, has no other way across.
    """
    env = os.environ if env is None else env
    if transport != "nixl":
        return "rdma" if path.get("protocol") == "rdma" else "tcp"
    same_host = path.get("interface") == "lo" or path.get("peer_host", "").startswith("127.")
    tls = path.get("UCX_TLS", "")
    if tls and tls != "(UCX default)" and not tls.startswith("^"):
        names = {t.strip().split(":")[0] for t in tls.split(",")} - {"self"}
        if names & _RDMA_TLS:
            return "rdma"
        if names & _SHM_TLS and (same_host or "tcp" not in names):
            return "shm"
        if "tcp" in names:
            return "tcp"
    if same_host:
        return "shm"
    modules = env.get("UCX_MODULES", "")
    if modules.startswith("^") and "ib" in {m.strip() for m in modules[1:].split(",")}:
        return "tcp"
    return "auto"


def tcp_fix(transport: str, path: Mapping[str, str], env: Mapping[str, str] | None = None) -> str:
    """What to change so that a source's bytes stop taking TCP (the tcp_path alarm's fix)."""
    env = os.environ if env is None else env
    if transport != "nixl":
        return (
            "Mooncake runs its tcp protocol here; on RDMA hosts use the nixl transport (UCX picks RDMA), or set "
            "PEERLOAD_EXPECT_TCP=1 if TCP is intended"
        )
    tls = path.get("UCX_TLS", "")
    if tls and tls != "(UCX default)" and "tcp" in tls:
        return f"UCX_TLS={tls} holds UCX to TCP: add rc/shm (or unset it), or set PEERLOAD_EXPECT_TCP=1 if intended"
    if env.get("UCX_MODULES", "").startswith("^"):
        return (
            f"UCX_MODULES={env.get('UCX_MODULES')} leaves out UCX's ib module, so RDMA is off: set UCX_MODULES "
            "explicitly (e.g. to an empty value) on hosts with RDMA NICs, or set PEERLOAD_EXPECT_TCP=1 if intended"
        )
    return "check UCX_NET_DEVICES and that the RDMA NIC is up (ucx_info -d), or set PEERLOAD_EXPECT_TCP=1 if intended"
