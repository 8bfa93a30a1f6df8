"""TLS and bearer tokens on real servers over loopback: the coordinator, a seed's gRPC server, a load."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch

from peerload._grpc import ChannelSecurity
from peerload._grpc_server import OPEN, ServerSecurity, bind, new_server
from peerload.client import CoordinatorClient, SourceStatus, TensorInfo, WorkerInfo
from peerload.errors import CoordinatorError, CoordinatorUnavailable, SeedServiceError
from peerload.identity import SourceIdentity
from peerload.loader import load_into
from peerload.seed.publisher import publish
from peerload.seed_client import fetch_manifest
from peerload.settings import Settings

IDENTITY = SourceIdentity(model_name="test/secured", dtype="float32")
WORKER = WorkerInfo(rank=0, nixl_metadata=b"meta", tensors=[TensorInfo("w", 4096, 64)])


def token_file(directory: Path, name: str, *tokens: str) -> Path:
    path = directory / name
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(f"{t}\n" for t in tokens))
    os.replace(tmp, path)  # atomic, as a rotated secret is
    return path


def client(address: str, **settings: Any) -> CoordinatorClient:
    """A client built the way every peerload client is: from settings."""
    return CoordinatorClient.from_settings(
        Settings.load(env={}, coordinator=address, rpc_retries=0, rpc_timeout_s=5, **settings)
    )


def code_of(call: Callable[[], Any]) -> str:
    """The status code name a failing client call raised with ("OK" if it succeeded)."""
    try:
        call()
    except CoordinatorError as exc:
        return exc.code
    return "OK"


def test_tls_needs_the_ca_that_signed_the_server(coordinator_factory, tls_files) -> None:
    server = coordinator_factory(tls_cert=str(tls_files.cert), tls_key=str(tls_files.key))
    with client(server.address, tls_ca=str(tls_files.ca)) as good:
        assert good.health_check()
        sid = good.publish(IDENTITY, WORKER, "w-0")
        assert [r.worker_id for r in good.list_sources(IDENTITY)] == ["w-0"] and sid
    for settings in ({}, {"tls_ca": str(tls_files.other_ca)}, {"tls_ca": str(tls_files.ca), "tls_server_name": "x.y"}):
        with client(server.address, **settings) as refused, pytest.raises(CoordinatorUnavailable):
            refused.health_check()
    # The certificate names localhost too: a client that dials an IP may check that name instead.
    with client(server.address, tls_ca=str(tls_files.ca), tls_server_name="localhost") as by_name:
        assert by_name.health_check()


def test_a_token_is_required_on_every_rpc_but_health(coordinator_factory, tmp_path) -> None:
    server = coordinator_factory(accept_tokens_file=str(token_file(tmp_path, "tokens", "alpha", "beta")))
    for settings in ({}, {"auth_token": "gamma"}):
        with client(server.address, **settings) as anonymous:
            assert anonymous.health_check()  # probes need no token
            assert code_of(lambda c=anonymous: c.list_sources()) == "UNAUTHENTICATED"
            assert code_of(lambda c=anonymous: c.publish(IDENTITY, WORKER, "w-0")) == "UNAUTHENTICATED"
            assert code_of(lambda c=anonymous: c.get_metadata("0" * 16, "w-0")) == "UNAUTHENTICATED"
            assert code_of(lambda c=anonymous: c.update_status("0" * 16, "w-0", 0, SourceStatus.READY)) == (
                "UNAUTHENTICATED"
            )
    for token in ("alpha", "beta"):
        with client(server.address, auth_token=token) as member:
            sid = member.publish(IDENTITY, WORKER, f"w-{token}")
            assert member.update_status(sid, f"w-{token}", 0, SourceStatus.READY)
    with client(server.address, auth_token="alpha") as member:
        assert {r.worker_id for r in member.list_sources()} == {"w-alpha", "w-beta"}


def test_unauthenticated_requests_are_refused_before_they_are_parsed(coordinator_factory, tmp_path) -> None:
    server = coordinator_factory(accept_tokens_file=str(token_file(tmp_path, "tokens", "alpha")))
    with grpc.insecure_channel(server.address) as channel:
        raw = channel.unary_unary("/model_express.p2p.P2pService/PublishMetadata")
        with pytest.raises(grpc.RpcError) as refused:
            raw(b"\xff\xff not a protobuf", timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as parsed:
            raw(b"\xff\xff not a protobuf", timeout=5, metadata=[("authorization", "Bearer alpha")])
        assert parsed.value.code() != grpc.StatusCode.UNAUTHENTICATED  # past the check, the body is refused


def test_writes_can_need_a_token_of_their_own(coordinator_factory, tmp_path) -> None:
    readers = token_file(tmp_path, "readers", "reader")
    writers = token_file(tmp_path, "writers", "writer")
    server = coordinator_factory(accept_tokens_file=str(readers), accept_write_tokens_file=str(writers))
    with client(server.address, auth_token="writer") as writer:
        sid = writer.publish(IDENTITY, WORKER, "w-0")
        assert writer.update_status(sid, "w-0", 0, SourceStatus.READY) and writer.list_sources()
    with client(server.address, auth_token="reader") as reader:
        assert [r.worker_id for r in reader.list_sources()] == ["w-0"]
        assert reader.get_metadata(sid, "w-0") is not None
        assert code_of(lambda: reader.publish(IDENTITY, WORKER, "w-1")) == "PERMISSION_DENIED"
        assert code_of(lambda: reader.update_status(sid, "w-0", 0, SourceStatus.STALE)) == "PERMISSION_DENIED"
    with client(server.address) as anonymous:
        assert code_of(anonymous.list_sources) == "UNAUTHENTICATED"

    # Only writes restricted: anyone may read.
    open_reads = coordinator_factory(accept_write_tokens_file=str(writers))
    with client(open_reads.address) as anonymous:
        assert anonymous.list_sources() == []
        assert code_of(lambda: anonymous.publish(IDENTITY, WORKER, "w-0")) == "UNAUTHENTICATED"
    with client(open_reads.address, auth_token="writer") as writer:
        assert writer.publish(IDENTITY, WORKER, "w-0")


def test_rotated_token_files_on_both_sides(coordinator_factory, tmp_path) -> None:
    accepted = token_file(tmp_path, "accepted", "old")
    sent = token_file(tmp_path, "sent", "old")
    server = coordinator_factory(accept_tokens_file=str(accepted))
    with (
        client(server.address, auth_token_file=str(sent)) as rotating,
        client(server.address, auth_token="old") as stuck,
    ):
        assert rotating.list_sources() == [] and stuck.list_sources() == []
        token_file(tmp_path, "accepted", "new", "old")  # step 1: servers accept both
        token_file(tmp_path, "sent", "new")  # step 2: clients move to the new token, no restart
        assert rotating.list_sources() == []
        token_file(tmp_path, "accepted", "new")  # step 3: the old token is revoked
        assert rotating.list_sources() == []
        assert code_of(stuck.list_sources) == "UNAUTHENTICATED"
        token_file(tmp_path, "accepted")  # emptied: the server fails closed
        assert code_of(rotating.list_sources) == "UNAUTHENTICATED"


def test_exposed_address_without_tls_or_token_warns(tls_files, tmp_path, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="peerload._grpc_server")
    secured = ServerSecurity.from_settings(
        Settings.load(
            env={},
            tls_cert=str(tls_files.cert),
            tls_key=str(tls_files.key),
            accept_tokens_file=str(token_file(tmp_path, "tokens", "t")),
        )
    )
    for security, host in ((OPEN, "127.0.0.1"), (secured, "0.0.0.0"), (OPEN, "0.0.0.0")):
        server = new_server(security, max_workers=1, options=[], thread_name_prefix="test")
        assert bind(server, host, 0, security, what="test server", fix="-") > 0
        server.stop(0)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1, warnings
    assert "test server listens on 0.0.0.0:0 without TLS" in warnings[0] and "without a token" in warnings[0]


def test_seed_server_and_a_load_over_tls_with_tokens(coordinator_factory, tls_files, tmp_path) -> None:
    tokens = str(token_file(tmp_path, "fleet", "fleet-token"))
    server_side = {"tls_cert": str(tls_files.cert), "tls_key": str(tls_files.key), "accept_tokens_file": tokens}
    coordinator = coordinator_factory(**server_side)
    fleet = Settings.load(
        env={}, coordinator=coordinator.address, tls_ca=str(tls_files.ca), auth_token_file=tokens, **server_side
    )
    weights = {"w": torch.randn(256, 64), "b": torch.arange(33.0)}
    with publish(weights, IDENTITY, settings=fleet) as seed, CoordinatorClient.from_settings(fleet) as member:
        record = member.get_metadata(seed.source_id, seed.worker_id)
        assert record is not None
        endpoint = record.worker_grpc_endpoint
        manifest = fetch_manifest(endpoint, seed.worker_id, 5, ChannelSecurity.from_settings(fleet))
        assert {t.name for t in manifest.tensors} == {"w", "b"}
        wrong = Settings.load(env={}, tls_ca=str(tls_files.ca), auth_token="nope")
        for security, code in ((ChannelSecurity.from_settings(wrong), "UNAUTHENTICATED"), (None, "UNAVAILABLE")):
            with pytest.raises(SeedServiceError) as refused:
                fetch_manifest(endpoint, seed.worker_id, 5, *([security] if security else []))
            assert refused.value.code == code

        empty = {name: torch.empty_like(t) for name, t in weights.items()}
        result = load_into(empty, IDENTITY, settings=fleet, publish=False)
        assert result.source == seed.worker_id
        assert all(torch.equal(empty[n], weights[n]) for n in weights)
