"""The campaign's bookkeeping: a network fault where emulated hosts cannot be made is reported as
not run here, with the reason, and does not count as a fault that failed to run; a reader that
died is counted apart from clean failures."""

from __future__ import annotations

import random
from dataclasses import asdict

from peerload.chaos.campaign import FAULTS, CampaignOptions, FaultResult, _run_fault, markdown_table
from peerload.chaos.trials import Trial
from peerload.errors import FleetUnavailable


def no_hosts(key: str):
    raise FleetUnavailable("emulated hosts need root (they create network namespaces and links)")


def test_network_fault_without_emulated_hosts_is_not_run_here_and_says_why():
    fault = next(f for f in FAULTS if f.name == "partition-10s")
    assert fault.cluster == "fleet" and fault.run is not None
    result = _run_fault(fault, 2, no_hosts, random.Random(0), CampaignOptions(quick=True))
    assert result.status == "not run here" and result.trials == 0
    assert result.notes == ["emulated hosts need root (they create network namespaces and links)"]
    report = {
        "faults": [asdict(result)],
        "model": {"tensors": 1, "mib": 1},
        "started": "t",
        "quick": True,
        "seed": 0,
        "machine": "m",
        "seconds": 1,
    }
    row = markdown_table(report).splitlines()[2]
    assert "not run here (2 planned)" in row and "need root" in row


def test_a_reader_that_died_is_counted_apart_from_clean_failures_and_makes_the_fault_unsound():
    result = FaultResult("reader-vanishes", "w", "ran", 3)
    result.add(Trial(injected=True, outcome="peer"))
    result.add(Trial(injected=True, outcome="failed"))  # a clean error: rolled back, exit 1
    result.add(Trial(injected=True, outcome="failed", reader_died=True, servers_died=1))
    assert (result.from_peers, result.failed_cleanly, result.readers_died, result.servers_died) == (1, 1, 1, 1)
    assert not result.sound
    clean = FaultResult("seed-vanishes", "w", "ran", 1)
    clean.add(Trial(injected=True, outcome="storage", servers_died=1))  # a seed crash alone: counted, sound
    assert clean.sound and clean.servers_died == 1
    report = {
        "faults": [asdict(result), asdict(clean)],
        "model": {"tensors": 1, "mib": 1},
        "started": "t",
        "quick": True,
        "seed": 0,
        "machine": "m",
        "seconds": 1,
    }
    lines = markdown_table(report).splitlines()
    assert "Readers died / seeds died" in lines[0]
    assert lines[2].endswith("| 1 | 0 | 1 | 0 | 1 / 1 |  |") and lines[3].endswith("| 0 | 1 | 0 | 0 | 0 / 1 |  |")
