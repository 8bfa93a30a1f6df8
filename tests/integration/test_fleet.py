"""Emulated hosts: real namespaces, veth links and capped NICs; real seed/target processes on
different hosts, bytes crossing the emulated NICs (NIXL over UCX tcp, Mooncake tcp); cleanup."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from peerload.errors import FleetUnavailable
from peerload.fleet import Fleet, run_target, start_coordinator, start_seed
from peerload.fleet import netns as fleet_netns
from peerload.fleet.harness import PREFIX
from peerload.tensors import sha256_of

NAME = "test/fleet"
PART = 1 << 20


def make_fleet(hosts: int, **kwargs) -> Fleet:
    try:
        return Fleet(hosts, max_seconds=240, **kwargs)
    except FleetUnavailable as exc:
        pytest.skip(f"emulated hosts unavailable here: {exc}")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    gen = torch.Generator().manual_seed(3)
    tensors = {f"w{i}": torch.randn(512, 1024, generator=gen) for i in range(6)}  # 12 MiB
    tensors["b"] = torch.randn(77, generator=gen).to(torch.bfloat16)
    path = tmp_path_factory.mktemp("fleet") / "model.safetensors"
    save_file(tensors, str(path))
    return path, {n: sha256_of(t) for n, t in tensors.items()}


@pytest.mark.parametrize("transport", ["nixl", "transfer_engine"])
def test_two_hosts_cross_the_emulated_nic_bit_exact(transport, checkpoint, tmp_path):
    model, expected = checkpoint
    with make_fleet(2, nic_gbit=4) as fleet:
        coordinator = start_coordinator(fleet, 0, tmp_path)
        _, seed = start_seed(fleet, 0, model, NAME, coordinator, tmp_path, "--transport", transport)
        received_before, _ = fleet.nic_bytes(1)
        report = run_target(fleet, 1, model, NAME, coordinator, tmp_path, "--transport", transport, "--no-fallback")
        received = fleet.nic_bytes(1)[0] - received_before
    assert fleet.leftovers() == []
    assert report["source"] == seed["worker_id"] and report["sha256"] == expected
    assert received >= report["bytes"], "the bytes did not cross the target's emulated NIC"
    [source] = report["sources"]
    assert source["transport"] == transport and source["network"]["interface"] == "eth0"
    assert source["network"]["peer_host"] == fleet.hosts[0].address
    if transport == "nixl":
        assert source["network"]["UCX_TLS"] == "tcp,self" and source["network"]["UCX_NET_DEVICES"] == "eth0"


@pytest.mark.parametrize("transport", ["nixl", "transfer_engine"])
def test_five_hosts_stripe_over_three_seeds(transport, checkpoint, tmp_path):
    model, expected = checkpoint
    env = {"PEERLOAD_CHUNK_BYTES": str(PART), "PEERLOAD_TRANSPORT": transport}
    with make_fleet(5, nic_gbit=2) as fleet:
        coordinator = start_coordinator(fleet, 0, tmp_path)
        seeds = [start_seed(fleet, h, model, NAME, coordinator, tmp_path, env=env)[1]["worker_id"] for h in (1, 2, 3)]
        sent_before = [fleet.nic_bytes(h)[1] for h in (1, 2, 3)]
        report = run_target(fleet, 4, model, NAME, coordinator, tmp_path, "--no-fallback", env=env)
        sent = [fleet.nic_bytes(h)[1] - before for h, before in zip((1, 2, 3), sent_before, strict=True)]
    assert fleet.leftovers() == []
    assert report["sha256"] == expected
    by_source = {s["worker_id"]: s for s in report["sources"]}
    assert set(by_source) == set(seeds) and {s["transport"] for s in by_source.values()} == {transport}
    for host, worker, nic in zip((1, 2, 3), seeds, sent, strict=True):
        assert by_source[worker]["bytes"] > 0 and nic >= by_source[worker]["bytes"], (host, by_source, sent)
        assert by_source[worker]["network"]["peer_host"] == fleet.hosts[host].address


class Boom(RuntimeError):
    pass


def test_harness_cleans_up_after_a_failing_test(checkpoint, tmp_path):
    model, _ = checkpoint
    fleet = None
    with pytest.raises(Boom):
        with make_fleet(3, nic_gbit=1) as fleet:
            coordinator = start_coordinator(fleet, 0, tmp_path)
            proc = fleet.popen(1, ["sleep", "300"], log_path=tmp_path / "sleep.log")
            assert len(fleet.leftovers()) == 4 and coordinator
            raise Boom("fails on purpose inside the harness")
    assert fleet is not None
    assert fleet.leftovers() == [] and fleet_netns.namespaces(fleet.prefix) == []
    assert proc.poll() is not None, "a process started in the fleet outlived it"
    assert not [n for n in fleet_netns.namespaces(PREFIX) if n.startswith(fleet.prefix)]


def test_a_fleet_that_cannot_be_built_says_why_and_leaves_nothing():
    make_fleet(2).close()  # skips here when namespaces cannot be made at all
    try:
        fleet = Fleet(2, nic_gbit=1, delay_ms=5, max_seconds=60)
    except FleetUnavailable as exc:  # e.g. a kernel without the netem qdisc (sch_netem)
        assert "netem" in str(exc)
        assert fleet_netns.namespaces(f"{PREFIX}{os.getpid()}x") == []
    else:
        with fleet:
            assert len(fleet.leftovers()) == 3
        assert fleet.leftovers() == []


def test_harness_cleans_up_on_sigterm(tmp_path):
    import subprocess
    import sys

    make_fleet(2).close()  # skips here when namespaces cannot be made
    script = (
        "import sys, time\n"
        "from peerload.fleet import Fleet\n"
        "fleet = Fleet(2, nic_gbit=1, max_seconds=60)\n"
        "print(fleet.prefix, flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    prefix = proc.stdout.readline().strip()
    assert prefix and len(fleet_netns.namespaces(prefix)) == 3
    proc.terminate()
    assert proc.wait(timeout=30) != 0
    assert fleet_netns.namespaces(prefix) == []


def test_demo_on_emulated_hosts_grows_a_striping_fleet(run_peerload):
    make_fleet(2).close()  # skips here when namespaces cannot be made
    proc = run_peerload("demo", "--hosts", "4", "--hidden", "128", "--layers", "2", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    assert "fleet demo OK" in proc.stdout
    # the replica on host 3 read from the seed and the replica on host 2: two sources
    row = next(line for line in proc.stdout.splitlines() if line.lstrip("│ ").startswith("3 ("))
    assert "│ 2 " in row and "True" in row, row
    assert "none left" in proc.stdout
