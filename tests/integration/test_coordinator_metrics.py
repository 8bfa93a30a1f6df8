"""The coordinator's Prometheus endpoint counts RPCs by method and code and workers by status."""

from __future__ import annotations

import urllib.request

import pytest

from peerload.client import CoordinatorClient, SourceStatus, WorkerInfo
from peerload.errors import CoordinatorError
from peerload.identity import SourceIdentity


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return reply.read().decode()


def test_metrics_follow_rpcs_and_statuses(coordinator_factory):
    server = coordinator_factory(metrics_port=0)
    assert server.metrics_port
    identity = SourceIdentity(model_name="m/metrics")
    with CoordinatorClient(server.address, retries=0) as client:
        sid = client.publish(identity, WorkerInfo(rank=0, nixl_metadata=b"x"), "w0")
        client.publish(identity, WorkerInfo(rank=1, nixl_metadata=b"x"), "w1")
        client.update_status(sid, "w1", 1, SourceStatus.READY)
        with pytest.raises(CoordinatorError):
            client.publish(identity, WorkerInfo(rank=0), "")  # empty worker_id: INVALID_ARGUMENT
    text = scrape(server.metrics_port)
    assert 'peerload_workers{model="m/metrics",status="INITIALIZING"} 1.0' in text
    assert 'peerload_workers{model="m/metrics",status="READY"} 1.0' in text
    assert 'peerload_rpc_seconds_count{code="OK",method="PublishMetadata"} 2.0' in text
    assert 'peerload_rpc_seconds_count{code="INVALID_ARGUMENT",method="PublishMetadata"} 1.0' in text
    assert 'peerload_rpc_seconds_count{code="OK",method="UpdateStatus"} 1.0' in text
    server.stop()
    with pytest.raises(OSError):
        scrape(server.metrics_port)
