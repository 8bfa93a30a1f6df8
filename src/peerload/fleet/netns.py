"""The `ip` and `tc` commands behind emulated hosts: namespaces, veth links, NIC caps (no state here)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

from peerload.errors import FleetUnavailable

# Every command is bounded: a wedged `ip` must not hang a test or a benchmark.
COMMAND_TIMEOUT_S = 20.0


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run one `ip`/`tc` command; raise FleetUnavailable naming it when it fails."""
    try:
        done = subprocess.run(list(args), capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FleetUnavailable(f"`{' '.join(args)}` failed: {exc}") from None
    if check and done.returncode != 0:
        raise FleetUnavailable(f"`{' '.join(args)}` failed: {done.stderr.strip() or done.returncode}")
    return done


def check_available(probe_name: str) -> None:
    """Raise FleetUnavailable with the reason when namespaces cannot be made here."""
    if os.geteuid() != 0:
        raise FleetUnavailable("emulated hosts need root (they create network namespaces and links)")
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            raise FleetUnavailable(f"emulated hosts need `{tool}` (Debian: apt-get install iproute2)")
    run("ip", "netns", "add", probe_name)
    run("ip", "netns", "del", probe_name)


def namespaces(prefix: str) -> list[str]:
    """Network namespaces whose name starts with `prefix`."""
    out = run("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.split() and line.split()[0].startswith(prefix)]


def delete_namespace(name: str) -> None:
    """Delete a namespace; its links and their qdiscs go with it. Missing ones are fine."""
    run("ip", "netns", "del", name, check=False)


def cap(netns: str, device: str, gbit: float | None, delay_ms: float | None) -> None:
    """Shape `device`'s egress: a tbf rate cap, optionally behind a netem delay."""
    parent = ["root"]
    if delay_ms:
        run("tc", "-n", netns, "qdisc", "add", "dev", device, "root", "handle", "1:", "netem", "delay", f"{delay_ms}ms")
        parent = ["parent", "1:"]
    if gbit:
        rate_bytes = gbit * 1e9 / 8
        burst = max(256 << 10, int(rate_bytes / 100))  # 10 ms worth: smooth at Gbit/s rates
        run("tc", "-n", netns, "qdisc", "add", "dev", device, *parent, "tbf", "rate", f"{gbit}gbit",
            "burst", str(burst), "latency", "50ms")  # fmt: skip


def link_bytes(netns: str, device: str) -> tuple[int, int]:
    """(rx, tx) bytes counted on `device` inside `netns`."""
    out = run("ip", "-n", netns, "-j", "-s", "link", "show", "dev", device).stdout
    stats = json.loads(out)[0]["stats64"]
    return int(stats["rx"]["bytes"]), int(stats["tx"]["bytes"])
