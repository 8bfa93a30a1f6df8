"""The fault campaign, small: `peerload chaos --quick` runs a few trials of every fault against
real `peerload serve`, `redis-server` and `peerload seed` processes, and must find nothing unsound."""

from __future__ import annotations

import json
import shutil

import pytest

from peerload.chaos.campaign import FAULTS


@pytest.mark.timeout(600)
def test_quick_campaign_finds_no_corrupted_or_half_loaded_model(run_peerload, tmp_path):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    out, table = tmp_path / "chaos.json", tmp_path / "reliability.md"
    table.write_text(
        "# doc\n<!-- chaos table: begin (written by `peerload chaos --markdown`) -->\nold\n"
        "<!-- chaos table: end -->\nafter\n"
    )
    proc = run_peerload(
        "chaos",
        "--quick",
        "--out",
        str(out),
        "--markdown",
        str(table),
        "--workdir",
        str(tmp_path / "work"),
        timeout=540,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(out.read_text())
    faults = {f["name"]: f for f in report["faults"]}
    assert set(faults) == {f.name for f in FAULTS}
    for fault in FAULTS:
        got = faults[fault.name]
        if fault.needs or (fault.cluster == "fleet" and got["status"] == "not run here"):
            assert got["trials"] == 0 and got["notes"], got  # says why (e.g. not root, no `nft`)
            continue
        assert got["status"] == "ran", got
        assert got["trials"] == got["planned"] == fault.quick and got["faults_injected"] >= 1, got
        assert got["corrupted"] == got["half_loaded"] == got["server_errors"] == 0, got
    # Every flipped byte was caught by a checksum, and the load still returned the right bytes.
    assert faults["flipped-byte"]["from_storage"] == faults["flipped-byte"]["trials"]
    # Seeds were READY again after each coordinator or Redis restart.
    for name in ("coordinator-restart-memory", "coordinator-restart-redis", "redis-restart"):
        assert faults[name]["recover_s"], faults[name]
    text = table.read_text()
    assert text.startswith("# doc\n") and text.endswith("after\n") and "old" not in text
    assert "| seed SIGKILLed at a random point of the transfer | 3 |" in text
    # A network fault either ran on emulated hosts or its row says why it could not run here.
    loss = faults["packet-loss-5pct"]
    assert loss["status"] == "ran" or "not run here" in text, loss
