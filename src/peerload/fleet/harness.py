"""Emulated hosts on one machine: N network namespaces on one bridge, optionally capped NICs.

Layout: a hub namespace holds a bridge; every host is a namespace whose `eth0` is one end of a
veth pair, the other end plugged into the bridge. Nothing is made in the root namespace, and
private addresses exist only inside these namespaces. A NIC cap shapes both directions (the
host's `eth0` egress and the bridge port's egress towards it). Processes run in a host with
`ip netns exec`. Everything a Fleet made is removed on `close()`, at interpreter exit, on
SIGINT/SIGTERM, and by a watchdog once `max_seconds` have passed. Network faults (`loss`,
`partition`, `heal`) are nftables drops inside a host's namespace, so they go with it too.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import signal
import subprocess
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from peerload.errors import ConfigError
from peerload.fleet import netns
from peerload.transport.ucx_env import cross_host_env

log = logging.getLogger(__name__)

PREFIX = "pl"  # every namespace a Fleet makes starts with this, then the pid
DEVICE = "eth0"  # a host's NIC, inside its namespace
SUBNET = "10.77.0"  # /24, inside the fleet's own namespaces only
MAX_HOSTS = 200
_counter = itertools.count()
_live: set[Fleet] = set()  # fleets to clean at exit or on a signal (owned by Fleet itself)
_live_lock = threading.Lock()
_previous_handlers: dict[int, Any] = {}


@dataclass(frozen=True)
class Host:
    """One emulated host: its namespace, address and the env its processes need."""

    index: int
    netns: str
    address: str
    port_name: str  # its veth end on the bridge (in the hub namespace)

    def env(self) -> dict[str, str]:
        """Environment for peerload processes on this host: UCX on TCP over eth0.

        No advertise address is given: processes find theirs from the route to the coordinator,
        as they must on real hosts (every fleet test checks the address peers were told).
        """
        return cross_host_env(DEVICE)


class Fleet:
    """N emulated hosts; use as a context manager (or call `close()`).

    Args:
        hosts: how many hosts (2..MAX_HOSTS).
        nic_gbit: NIC cap in Gbit/s, both directions: one for every host, or one per host
            (None: uncapped).
        delay_ms: added one-way delay on each host's egress (None: none).
        max_seconds: the watchdog removes everything after this long, whatever is running.

    Raises:
        FleetUnavailable: not root, no iproute2, or namespaces cannot be made (says which).
    """

    def __init__(
        self,
        hosts: int,
        *,
        nic_gbit: float | Sequence[float | None] | None = None,
        delay_ms: float | None = None,
        max_seconds: float = 900.0,
    ) -> None:
        if not 2 <= hosts <= MAX_HOSTS:
            raise ConfigError(f"a fleet has 2..{MAX_HOSTS} hosts, got {hosts}")
        caps = list(nic_gbit) if isinstance(nic_gbit, Sequence) else [nic_gbit] * hosts
        if len(caps) != hosts or any(c is not None and c <= 0 for c in caps) or (delay_ms or 0) < 0:
            raise ConfigError(f"nic_gbit must be > 0 (one value, or one per host) and delay_ms >= 0, got {nic_gbit}")
        self.prefix = f"{PREFIX}{os.getpid()}x{next(_counter)}"
        self.hub = f"{self.prefix}hub"
        self.nic_gbit = caps
        self.delay_ms = delay_ms
        self.hosts = [Host(i, f"{self.prefix}h{i}", f"{SUBNET}.{i + 1}", f"v{i}") for i in range(hosts)]
        self._procs: list[subprocess.Popen[bytes]] = []
        self._faults: dict[int, list[str]] = {}  # host -> its nft drop rules ("in ..."/"out ...")
        self._closed = False
        self._lock = threading.Lock()
        netns.check_available(f"{self.prefix}probe")
        _register(self)
        self._watchdog = threading.Timer(max_seconds, self._expire, args=(max_seconds,))
        self._watchdog.daemon = True
        self._watchdog.start()
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        run = netns.run
        run("ip", "netns", "add", self.hub)
        run("ip", "-n", self.hub, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", self.hub, "link", "set", "br0", "up")
        for host in self.hosts:
            run("ip", "netns", "add", host.netns)
            run("ip", "-n", self.hub, "link", "add", host.port_name, "type", "veth", "peer", "name", DEVICE,
                "netns", host.netns)  # fmt: skip
            run("ip", "-n", self.hub, "link", "set", host.port_name, "master", "br0", "up")
            run("ip", "-n", host.netns, "addr", "add", f"{host.address}/24", "dev", DEVICE)
            run("ip", "-n", host.netns, "link", "set", DEVICE, "up")
            run("ip", "-n", host.netns, "link", "set", "lo", "up")
            gbit = self.nic_gbit[host.index]
            if gbit or self.delay_ms:
                netns.cap(host.netns, DEVICE, gbit, self.delay_ms)
                if gbit:
                    netns.cap(self.hub, host.port_name, gbit, None)
        log.info(
            "fleet %s: %d hosts on %s.0/24, NIC cap %s Gbit/s", self.prefix, len(self.hosts), SUBNET, self.nic_gbit
        )

    # -- processes -----------------------------------------------------------------------------

    def popen(
        self,
        host: int,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        stdin: Any = subprocess.DEVNULL,
    ) -> subprocess.Popen[bytes]:
        """Start `argv` inside host `host` (its env added), output to `log_path`; stopped on close."""
        h = self.hosts[host]
        full_env = {**os.environ, **h.env(), **(env or {})}
        with self._lock:
            if self._closed:
                raise ConfigError(f"fleet {self.prefix} is closed")
            with open(log_path, "wb") as out:
                proc = subprocess.Popen(
                    ["ip", "netns", "exec", h.netns, *argv], stdin=stdin, stdout=out, stderr=subprocess.STDOUT,
                    env=full_env,
                )  # fmt: skip
            self._procs.append(proc)
        return proc

    def nic_bytes(self, host: int) -> tuple[int, int]:
        """(received, sent) bytes on host `host`'s NIC so far."""
        return netns.link_bytes(self.hosts[host].netns, DEVICE)

    # -- network faults --------------------------------------------------------------------------

    def loss(self, host: int, percent: float, peer: int | None = None) -> None:
        """Drop `percent`% of host `host`'s packets, each direction, to and from `peer` (None: all).

        Raises:
            FleetUnavailable: `nft` or the kernel's nftables is missing (says which).
        """
        if not 0 < percent <= 100:
            raise ConfigError(f"loss percent must be in (0, 100], got {percent}")
        share = f"numgen random mod 10000 < {round(percent * 100)}"
        self._add_faults(host, [f"{rule} {share} drop" for rule in self._matches(peer)])

    def partition(self, host: int, peer: int | None = None) -> None:
        """Drop every packet between host `host` and `peer` (None: every other host), both ways.

        Raises:
            FleetUnavailable: `nft` or the kernel's nftables is missing (says which).
        """
        self._add_faults(host, [f"{rule} drop" for rule in self._matches(peer)])

    def heal(self, host: int | None = None) -> None:
        """Remove the network faults of host `host` (None: of every host)."""
        hosts = list(self._faults) if host is None else [host]
        for h in hosts:
            if self._faults.pop(h, None) is not None:
                netns.clear_drop_rules(self.hosts[h].netns)

    def _matches(self, peer: int | None) -> list[str]:
        """The nft matches for `eth0` traffic out to and in from `peer` (or anyone)."""
        if peer is None:
            return [f'out oifname "{DEVICE}"', f'in iifname "{DEVICE}"']
        address = self.hosts[peer].address
        return [f'out oifname "{DEVICE}" ip daddr {address}', f'in iifname "{DEVICE}" ip saddr {address}']

    def _add_faults(self, host: int, rules: list[str]) -> None:
        wanted = [*self._faults.get(host, []), *rules]
        netns.set_drop_rules(self.hosts[host].netns, wanted)
        self._faults[host] = wanted

    # -- cleanup -------------------------------------------------------------------------------

    def leftovers(self) -> list[str]:
        """Namespaces of this fleet that still exist (empty after `close()`)."""
        return netns.namespaces(self.prefix)

    def close(self) -> None:
        """Stop every process started here, then delete every namespace (links and qdiscs go too)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            procs, self._procs = self._procs, []
        self._watchdog.cancel()
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for host in self.hosts:
            netns.delete_namespace(host.netns)
        netns.delete_namespace(self.hub)
        _unregister(self)

    def _expire(self, max_seconds: float) -> None:
        log.error("fleet %s ran past %.0f s: removing it", self.prefix, max_seconds)
        self.close()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _register(fleet: Fleet) -> None:
    with _live_lock:
        first = not _live
        _live.add(fleet)
    if first and threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            if sig not in _previous_handlers:
                _previous_handlers[sig] = signal.signal(sig, _on_signal)


def _unregister(fleet: Fleet) -> None:
    with _live_lock:
        _live.discard(fleet)


def close_all() -> None:
    """Close every fleet still open in this process."""
    with _live_lock:
        fleets = list(_live)
    for fleet in fleets:
        fleet.close()


def _on_signal(signum: int, frame: FrameType | None) -> None:
    """Clean up, then behave as the handler in place before the first fleet would have."""
    close_all()
    previous = _previous_handlers.get(signum)
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_DFL:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


atexit.register(close_all)
