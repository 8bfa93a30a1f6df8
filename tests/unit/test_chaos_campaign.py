"""The campaign's bookkeeping: a network fault where emulated hosts cannot be made is reported as
not run here, with the reason, and does not count as a fault that failed to run."""

from __future__ import annotations

import random
from dataclasses import asdict

from peerload.chaos.campaign import FAULTS, CampaignOptions, _run_fault, markdown_table
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
