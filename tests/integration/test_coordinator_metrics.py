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


def _sample(text: str, line_start: str) -> float:
    """The value of the one sample whose line starts with `line_start` (name{labels})."""
    found = [line for line in text.splitlines() if line.startswith(line_start + " ")]
    assert len(found) == 1, f"{line_start} not in the scrape:\n{text}"
    return float(found[0].rsplit(" ", 1)[1])


def test_modelexpress_server_families(coordinator_factory):
    server = coordinator_factory(metrics_port=0)
    identity = SourceIdentity(model_name="m/mx-families")
    with CoordinatorClient(server.address, retries=0) as client:
        client.publish(identity, WorkerInfo(rank=0, nixl_metadata=b"x"), "w0")
        assert client.list_sources(model_name="m/none") == []  # an honest empty list: outcome ok
        with pytest.raises(CoordinatorError):
            client.publish(identity, WorkerInfo(rank=0), "")
    text = scrape(server.metrics_port)
    assert 'mx_build_info{backend="memory",component="server",scheme="grpc",version="' in text
    assert _sample(text, 'mx_grpc_requests_total{method="P2pService/PublishMetadata",outcome="ok"}') == 1
    assert _sample(text, 'mx_grpc_requests_total{method="P2pService/PublishMetadata",outcome="invalid_argument"}') == 1
    assert _sample(text, 'mx_grpc_requests_total{method="P2pService/ListSources",outcome="ok"}') == 1
    assert _sample(text, 'mx_grpc_request_seconds_count{method="P2pService/ListSources",outcome="ok"}') == 1
    assert _sample(text, 'mx_grpc_requests_in_flight{method="P2pService/ListSources"}') == 0
    assert _sample(text, 'mx_backend_ops_total{op="put",result="ok",store="p2p"}') == 1
    assert 'mx_backend_op_seconds_count{op="entries",result="ok",store="p2p"}' in text
    assert "backend_error" not in text and 'alarm="store_outage"' not in text


@pytest.mark.redis
def test_store_outage_shows_in_one_scrape_and_one_warning(coordinator_factory, redis_server, caplog):
    from peerload._process import redis_server as start_redis

    identity = SourceIdentity(model_name="m/outage")
    with start_redis() as url:  # a Redis of this test's own, stopped below: a real outage
        server = coordinator_factory("redis", redis_url=url, metrics_port=0, reap_interval_s=3600)
        with CoordinatorClient(server.address, retries=0) as client:
            client.publish(identity, WorkerInfo(rank=0, nixl_metadata=b"x"), "w0")
            assert len(client.list_sources(model_name="m/outage")) == 1
    caplog.set_level("WARNING")
    with CoordinatorClient(server.address, retries=0) as client:
        for _ in range(3):
            with pytest.raises(CoordinatorError) as failed:
                client.list_sources(model_name="m/outage")
            assert failed.value.code == "UNAVAILABLE"
    text = scrape(server.metrics_port)
    assert 'mx_build_info{backend="redis"' in text
    assert _sample(text, 'mx_grpc_requests_total{method="P2pService/ListSources",outcome="backend_error"}') == 3
    assert _sample(text, 'mx_backend_ops_total{op="entries",result="error",store="p2p"}') >= 3
    assert _sample(text, 'peerload_alarms_total{alarm="store_outage"}') == 1
    alarms = [r.getMessage() for r in caplog.records if "ALARM store_outage" in r.getMessage()]
    assert len(alarms) == 1 and "fix:" in alarms[0] and "redis" in alarms[0].lower(), alarms
