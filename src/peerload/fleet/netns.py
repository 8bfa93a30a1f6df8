"""The `ip` and `tc` commands behind emulated hosts: namespaces, veth links, NIC caps (no state here)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

from peerload.errors import FleetUnavailable

# Every command is bounded: a wedged `ip` must not hang a test or a benchmark.
COMMAND_TIMEOUT_S = 20.0


def run(*args: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run one `ip`/`tc`/`nft` command; raise FleetUnavailable naming it when it fails."""
    try:
        done = subprocess.run(list(args), capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, input=stdin)
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


FAULT_TABLE = "peerload_faults"  # the nftables table of a host's injected network faults


def set_drop_rules(netns: str, rules: list[str]) -> None:
    """Replace `netns`'s fault table with `rules` (nft statements, `in`/`out` chain first), atomically.

    The kernel here has no `sch_netem`, so loss and partitions are nftables drops in the host's
    own namespace: `numgen random` for loss, plain drops for a partition.
    """
    if shutil.which("nft") is None:
        raise FleetUnavailable("network faults need `nft` (Debian: apt-get install nftables)")
    chains = {"in": "input", "out": "output"}
    body = "".join(
        f"  chain {name} {{ type filter hook {hook} priority 0; policy accept;\n"
        + "".join(f"    {rule.split(' ', 1)[1]}\n" for rule in rules if rule.split(" ", 1)[0] == name)
        + "  }\n"
        for name, hook in chains.items()
    )
    script = f"table inet {FAULT_TABLE}\ndelete table inet {FAULT_TABLE}\ntable inet {FAULT_TABLE} {{\n{body}}}\n"
    run("ip", "netns", "exec", netns, "nft", "-f", "-", stdin=script)


def clear_drop_rules(netns: str) -> None:
    """Remove `netns`'s fault table (a host with none is fine)."""
    if shutil.which("nft") is not None:
        run("ip", "netns", "exec", netns, "nft", "delete", "table", "inet", FAULT_TABLE, check=False)


def drop_rules(netns: str) -> str:
    """The fault table of `netns` as nft prints it (empty when there is none)."""
    return run("ip", "netns", "exec", netns, "nft", "list", "table", "inet", FAULT_TABLE, check=False).stdout
