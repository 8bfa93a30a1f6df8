"""Seeds and targets export their metrics, and the alarms for silent degradation fire (one WARNING each).

Each case runs a coordinator, a seed and a target in one fresh process (real NIXL over UCX on
loopback) and reads that process's scrape; see tests/integration/metrics_peers.py.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

PEERS = Path(__file__).with_name("metrics_peers.py")
REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(180)


@functools.cache
def _run(scenario: str, env: tuple[tuple[str, str], ...]) -> tuple[dict, list[str]]:
    full = dict(os.environ, UCX_NET_DEVICES="lo", **dict(env))
    out = subprocess.run(
        [sys.executable, str(PEERS), scenario], env=full, capture_output=True, text=True, timeout=150, cwd=REPO
    )
    assert out.returncode == 0, out.stderr[-4000:]
    alarms = [line for line in out.stderr.splitlines() if "ALARM " in line]
    return json.loads(out.stdout.strip().splitlines()[-1]), alarms


def run(scenario: str, **env: str) -> tuple[dict, list[str]]:
    """(the script's JSON, the ALARM lines it logged); each scenario runs once per test session."""
    return _run(scenario, tuple(sorted(env.items())))


def value(scrape: str, sample: str) -> float:
    """The value of `sample` (name{labels}, labels sorted as prometheus_client prints them); 0 if absent."""
    for line in scrape.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_peer_load_metrics_on_seed_and_target_and_no_alarm():
    result, alarms = run("peer")
    scrape = result["scrape"]
    assert result["equal"] and result["source"] != "storage"
    assert alarms == []
    nbytes = 512 * 1024 * 4 + 1024 * 4
    # Target: bytes by origin and path, the load by origin, its phases, one source used.
    assert value(scrape, 'peerload_load_bytes_total{origin="peer"}') == nbytes
    assert value(scrape, 'peerload_load_bytes_total{origin="storage"}') == 0
    assert value(scrape, 'peerload_load_peer_bytes_total{path="shm",transport="nixl"}') == nbytes
    assert value(scrape, 'peerload_loads_total{origin="peer"}') == 1
    assert value(scrape, 'peerload_load_seconds_count{origin="peer"}') == 1
    assert value(scrape, 'peerload_load_phase_seconds_count{phase="transfer"}') == 1
    assert value(scrape, 'peerload_load_sources_used_total{kind="peerload"}') == 1
    # Seed: what the reader reported at release, one lease granted and ended, transport healthy.
    assert value(scrape, 'peerload_seed_bytes_served_total{transport="nixl"}') == nbytes
    assert value(scrape, 'peerload_seed_parts_served_total{transport="nixl"}') == 3
    assert value(scrape, "peerload_seed_leases_granted_total") == 1
    assert value(scrape, 'peerload_seed_leases_ended_total{how="released"}') == 1
    assert value(scrape, 'peerload_seed_transport_healthy{transport="nixl"}') == 1
    assert 'peerload_alarms_total{alarm="tcp_path"}' not in scrape
    assert value(scrape, 'peerload_seed_lease_refusals_total{reason="closing"}') == 1
    coordinator = result["coordinator_scrape"]
    assert value(coordinator, 'mx_grpc_requests_total{method="P2pService/ListSources",outcome="ok"}') >= 1


def test_tcp_where_shared_memory_was_expected_is_an_alarm():
    result, alarms = run("tcp", UCX_TLS="tcp,self")
    scrape = result["scrape"]
    assert result["equal"] and result["source"] != "storage"
    assert value(scrape, 'peerload_alarms_total{alarm="tcp_path"}') == 1
    assert value(scrape, 'peerload_load_peer_bytes_total{path="tcp",transport="nixl"}') > 0
    assert len(alarms) == 1 and "ALARM tcp_path" in alarms[0] and "UCX_TLS=tcp,self" in alarms[0]
    assert "fix:" in alarms[0] and "PEERLOAD_EXPECT_TCP" in alarms[0]


def test_tcp_alarm_is_off_when_tcp_is_expected():
    result, alarms = run("tcp", UCX_TLS="tcp,self", PEERLOAD_EXPECT_TCP="1")
    assert alarms == [] and 'alarm="tcp_path"' not in result["scrape"]


def test_fallback_to_storage_is_an_alarm():
    result, alarms = run("storage")
    scrape = result["scrape"]
    assert result["equal"] and result["source"] == "storage"
    assert value(scrape, 'peerload_alarms_total{alarm="storage_fallback"}') == 1
    assert value(scrape, 'peerload_load_fallbacks_total{reason="no_source"}') == 1
    assert value(scrape, 'peerload_loads_total{origin="storage"}') == 1
    assert value(scrape, 'peerload_load_bytes_total{origin="storage"}') == result["storage_bytes"] > 0
    assert len(alarms) == 1 and "ALARM storage_fallback" in alarms[0] and "fix:" in alarms[0]


def test_checksum_mismatch_is_an_alarm_and_storage_fills_the_part():
    result, alarms = run("checksum")
    scrape = result["scrape"]
    assert result["equal"], "the loaded model must equal the original, never the seed's changed bytes"
    assert value(scrape, 'peerload_checksum_failures_total{side="target"}') == 1
    assert value(scrape, 'peerload_alarms_total{alarm="checksum_mismatch"}') == 1
    assert value(scrape, 'peerload_load_fallbacks_total{reason="peers_incomplete"}') == 1
    kinds = sorted(line.split("ALARM ", 1)[1].split(":", 1)[0] for line in alarms)
    assert kinds == ["checksum_mismatch", "storage_fallback"], alarms
    mismatch = next(line for line in alarms if "checksum_mismatch" in line)
    assert "does not match its published checksum" in mismatch and "fix:" in mismatch


def test_multiprocess_counters_of_killed_processes_do_not_go_backwards(tmp_path):
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    directory = tmp_path / "prom"
    directory.mkdir()

    def scrape() -> str:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(directory))
        return generate_latest(registry).decode()

    seen = []
    for _ in range(2):  # each process loads once, then is SIGKILLed before any cleanup
        full = dict(os.environ, UCX_NET_DEVICES="lo", PROMETHEUS_MULTIPROC_DIR=str(directory))
        out = subprocess.run(
            [sys.executable, str(PEERS), "killed"], env=full, capture_output=True, text=True, timeout=150, cwd=REPO
        )
        assert out.returncode == -9, out.stderr[-3000:]
        assert json.loads(out.stdout.strip().splitlines()[-1])["equal"]
        seen.append(scrape())
    loads = [value(text, 'peerload_loads_total{origin="peer"}') for text in seen]
    served = [value(text, 'peerload_seed_bytes_served_total{transport="nixl"}') for text in seen]
    assert loads == [1, 2] and served[1] == 2 * served[0] > 0


def test_every_dashboard_query_names_a_metric_these_scrapes_show():
    scrapes = []
    for scenario, env in (("peer", {}), ("tcp", {"UCX_TLS": "tcp,self"}), ("storage", {}), ("checksum", {})):
        result, _ = run(scenario, **env)
        scrapes += [result["scrape"], result["coordinator_scrape"]]
    samples = [line for text in scrapes for line in text.splitlines() if line and not line.startswith("#")]
    shown = {line.split("{", 1)[0].split(" ", 1)[0] for line in samples}
    dashboard = json.loads((REPO / "docs" / "grafana-dashboard.json").read_text())
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    assert len(queries) >= 10
    for query in queries:
        names = set(re.findall(r"\b((?:peerload|mx)_[a-z_]+)\b", query))
        assert names, f"a dashboard query names no peerload/mx metric: {query}"
        assert names <= shown, f"{query}: {sorted(names - shown)} not in any test scrape"
