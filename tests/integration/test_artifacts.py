"""Artifact sources: a cache directory published and installed between two peers, checked and atomic.

Real coordinator, real ArtifactSource (NIXL agent, gRPC WorkerService on loopback), real reads.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from peerload._gen.model_express import p2p_pb2 as pb
from peerload._gen.model_express import p2p_pb2_grpc as pb_grpc
from peerload.artifacts import FAILED, INSTALLED, SKIPPED, ArtifactSource, artifact_identity, fetch_artifact
from peerload.artifacts.manifest import artifact_id, check_served
from peerload.artifacts.stamp import environment_stamp
from peerload.identity import SourceIdentity
from peerload.settings import Settings

MODEL = SourceIdentity(model_name="test/artifacts", dtype="float32")


def make_cache(root: Path) -> dict[str, bytes]:
    """A small compile-cache-like tree: nested dirs, a .so-like binary, an empty file, an empty dir."""
    files = {
        "torch_aot_compile/abc123/rank_0_0/model.bin": os.urandom(300_000),
        "torch_aot_compile/abc123/inductor_cache/xy/kernel.cpp": b"// generated\n" * 100,
        "torch_aot_compile/abc123/inductor_cache/xy/kernel.so": os.urandom(70_000),
        "modelinfos/empty.json": b"",
    }
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / "torch_aot_compile/abc123/inductor_cache/xy/kernel.so").chmod(0o755)
    (root / "empty_dir").mkdir()
    return files


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def settings(coordinator) -> Settings:
    return Settings.load(env={}, coordinator=coordinator.address, heartbeat_interval_s=0.5)


def test_published_cache_installs_identically(tmp_path: Path, settings: Settings) -> None:
    files = make_cache(tmp_path / "seed-cache")
    identity = artifact_identity(MODEL, "torch_compile_cache")
    # 64 KiB chunks: the 370 KB archive spans several chunks and batches of leases.
    with ArtifactSource(tmp_path / "seed-cache", identity, settings=settings, chunk_bytes=64 << 10) as source:
        assert len(source.manifest.chunks) > 4
        dest = tmp_path / "replica" / "torch_compile_cache"
        outcome = fetch_artifact(identity, dest, settings=settings)
        assert outcome.status == INSTALLED, outcome.reason
        assert outcome.source == source.worker_id and outcome.artifact_id == source.artifact_id
        assert tree(dest) == files
        assert (dest / "empty_dir").is_dir()
        assert os.access(dest / "torch_aot_compile/abc123/inductor_cache/xy/kernel.so", os.X_OK)
        assert not list(dest.parent.glob(".*peerload-*")), "the staging directory was left behind"
        assert source.leases.active() == 0, "every chunk lease was released"
        # The rule for an existing cache: it is kept, never replaced.
        again = fetch_artifact(identity, dest, settings=settings)
        assert again.status == SKIPPED and "already holds a cache" in again.reason


def test_environment_mismatch_is_refused_naming_the_field(tmp_path: Path, settings: Settings) -> None:
    make_cache(tmp_path / "seed-cache")
    stamp = environment_stamp()
    theirs = artifact_identity(MODEL, "torch_compile_cache", {**stamp, "torch_version": "2.99.0"})
    ours = artifact_identity(MODEL, "torch_compile_cache", stamp)
    with ArtifactSource(tmp_path / "seed-cache", theirs, settings=settings):
        dest = tmp_path / "replica"
        outcome = fetch_artifact(ours, dest, settings=settings)
    assert outcome.status == SKIPPED
    assert "torch_version" in outcome.reason and "2.99.0" in outcome.reason and stamp["torch_version"] in outcome.reason
    assert outcome.mismatches == [{"field": "torch_version", "source": "2.99.0", "here": stamp["torch_version"]}]
    assert not dest.exists()


def test_no_source_is_skipped(tmp_path: Path, settings: Settings) -> None:
    outcome = fetch_artifact(artifact_identity(MODEL, "triton_cache"), tmp_path / "d", settings=settings)
    assert outcome.status == SKIPPED and "no READY triton_cache source" in outcome.reason


def test_worker_service_serves_the_manifest_official_readers_check(tmp_path: Path, settings: Settings) -> None:
    make_cache(tmp_path / "seed-cache")
    identity = artifact_identity(MODEL, "torch_compile_cache")
    with ArtifactSource(tmp_path / "seed-cache", identity, settings=settings, chunk_bytes=32 << 10) as source:
        with grpc.insecure_channel(source.endpoint) as channel:
            stub = pb_grpc.WorkerServiceStub(channel)
            header = stub.GetArtifactManifestHeader(
                pb.GetArtifactManifestHeaderRequest(mx_source_id=source.source_id, artifact_id=source.artifact_id)
            )
            page = stub.GetArtifactManifestChunks(
                pb.GetArtifactManifestChunksRequest(
                    mx_source_id=source.source_id, artifact_id=source.artifact_id, max_chunks=3
                )
            )
            assert len(page.chunks) == 3 and page.next_page_token == "3"
            rest = stub.GetArtifactManifestChunks(
                pb.GetArtifactManifestChunksRequest(
                    mx_source_id=source.source_id, artifact_id=source.artifact_id, start_chunk_index=3
                )
            )
            chunks = [*page.chunks, *rest.chunks]
            assert rest.next_page_token == ""
            assert check_served(header, chunks, source.artifact_id) is not None
            assert artifact_id(source.manifest) == header.artifact_id
            lease = stub.PrepareArtifactChunk(
                pb.PrepareArtifactChunkRequest(
                    mx_source_id=source.source_id, artifact_id=source.artifact_id, chunk_index=1
                )
            )
            assert lease.chunk == chunks[1] and lease.source.length == chunks[1].length
            assert lease.source_metadata.startswith(b"nixlSerDes")
            assert source.leases.active() == 1
            released = stub.ReleaseArtifactChunk(
                pb.ReleaseArtifactChunkRequest(
                    mx_source_id=source.source_id, artifact_id=source.artifact_id, lease_id=lease.lease_id
                )
            )
            assert released.chunk == chunks[1] and source.leases.active() == 0
            with pytest.raises(grpc.RpcError) as again:
                stub.ReleaseArtifactChunk(
                    pb.ReleaseArtifactChunkRequest(
                        mx_source_id=source.source_id, artifact_id=source.artifact_id, lease_id=lease.lease_id
                    )
                )
            assert again.value.code() == grpc.StatusCode.NOT_FOUND
            with pytest.raises(grpc.RpcError) as other:
                stub.GetArtifactManifestHeader(
                    pb.GetArtifactManifestHeaderRequest(mx_source_id=source.source_id, artifact_id="0" * 64)
                )
            assert other.value.code() == grpc.StatusCode.NOT_FOUND
            with pytest.raises(grpc.RpcError) as tensors:
                stub.GetTensorManifest(pb.GetTensorManifestRequest(mx_source_id=source.source_id))
            assert tensors.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_kind_is_part_of_the_identity(tmp_path: Path, settings: Settings) -> None:
    make_cache(tmp_path / "seed-cache")
    with ArtifactSource(tmp_path / "seed-cache", artifact_identity(MODEL, "triton_cache"), settings=settings):
        wanted = artifact_identity(MODEL, "torch_compile_cache")
        outcome = fetch_artifact(wanted, tmp_path / "d", settings=settings)
    assert outcome.status == SKIPPED and "no READY torch_compile_cache source" in outcome.reason
    assert replace(wanted, mx_source_type=4).source_id() != wanted.source_id()


def test_chunks_read_in_pieces_install_identically_and_a_bad_piece_is_refused(
    tmp_path: Path, settings: Settings, monkeypatch
) -> None:
    """Pieces smaller than a chunk (and not dividing it): each piece is checksummed on its own
    thread while the next is read, and their CRCs combine to the chunk's; one flipped byte in a
    later piece of a chunk still fails that chunk."""
    monkeypatch.setattr("peerload.artifacts.install._PIECE", 20_000)
    files = make_cache(tmp_path / "seed-cache")
    identity = artifact_identity(MODEL, "torch_compile_cache")
    with ArtifactSource(tmp_path / "seed-cache", identity, settings=settings, chunk_bytes=64 << 10) as source:
        outcome = fetch_artifact(identity, tmp_path / "good", settings=settings)
        assert outcome.status == INSTALLED, outcome.reason
        assert tree(tmp_path / "good") == files
        source._bytes[(64 << 10) * 2 + 50_000] ^= 0xFF  # chunk 2, its third piece
        outcome = fetch_artifact(identity, tmp_path / "bad", settings=settings)
        assert source.leases.active() == 0, "every chunk lease was released"
    assert outcome.status == FAILED and "chunk 2 crc32c" in outcome.reason
    assert not (tmp_path / "bad").exists()


def test_a_refused_lease_gives_back_the_others(tmp_path: Path, settings: Settings, monkeypatch) -> None:
    """Leases of a batch are requested together; when the source refuses one (all its leases
    taken), the ones granted are given back and nothing is installed."""
    from peerload.seed.leases import LeaseTable

    make_cache(tmp_path / "seed-cache")
    identity = artifact_identity(MODEL, "torch_compile_cache")
    with ArtifactSource(tmp_path / "seed-cache", identity, settings=settings, chunk_bytes=64 << 10) as source:
        source.leases = source.servicer._leases = LeaseTable(2, settings.lease_timeout_s)
        outcome = fetch_artifact(identity, tmp_path / "replica", settings=settings)
        assert source.leases.active() == 0, "the granted leases were given back"
    assert outcome.status == FAILED and "RESOURCE_EXHAUSTED" in outcome.reason, outcome.reason
    assert not (tmp_path / "replica").exists()


def test_tampered_bytes_are_refused_and_nothing_is_installed(tmp_path: Path, settings: Settings) -> None:
    make_cache(tmp_path / "seed-cache")
    identity = artifact_identity(MODEL, "torch_compile_cache")
    with ArtifactSource(tmp_path / "seed-cache", identity, settings=settings, chunk_bytes=64 << 10) as source:
        source._bytes[70_000] ^= 0xFF  # the served memory no longer matches its manifest (chunk 1)
        dest = tmp_path / "replica"
        outcome = fetch_artifact(identity, dest, settings=settings)
    assert outcome.status == FAILED
    assert "chunk 1 crc32c" in outcome.reason
    assert not dest.exists() and list(tmp_path.iterdir()) == [tmp_path / "seed-cache"]


def test_a_hostile_archive_from_a_peer_is_refused(tmp_path: Path, settings: Settings, monkeypatch) -> None:
    """A source whose (correctly checksummed) archive holds a link out of the cache: nothing installed."""
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as t:
        info = tarfile.TarInfo("x/evil")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        t.addfile(info)
    monkeypatch.setattr("peerload.artifacts.source.archive.pack", lambda root: buffer.getvalue())
    (tmp_path / "c").mkdir()
    identity = artifact_identity(MODEL, "torch_compile_cache")
    with ArtifactSource(tmp_path / "c", identity, settings=settings):
        dest = tmp_path / "replica"
        outcome = fetch_artifact(identity, dest, settings=settings)
    assert outcome.status == FAILED and "is a link" in outcome.reason
    assert not dest.exists() and not list(tmp_path.glob(".*peerload-*"))


def test_tokens_apply_as_for_weights(tmp_path: Path, coordinator) -> None:
    make_cache(tmp_path / "seed-cache")
    (tmp_path / "tokens").write_text("s3cret\n")
    seed = Settings.load(env={}, coordinator=coordinator.address, accept_tokens_file=str(tmp_path / "tokens"))
    identity = artifact_identity(MODEL, "torch_compile_cache")
    with ArtifactSource(tmp_path / "seed-cache", identity, settings=seed):
        anonymous = Settings.load(env={}, coordinator=coordinator.address)
        refused = fetch_artifact(identity, tmp_path / "a", settings=anonymous)
        assert refused.status == FAILED and "UNAUTHENTICATED" in refused.reason
        assert not (tmp_path / "a").exists()
        allowed = Settings.load(env={}, coordinator=coordinator.address, auth_token="s3cret")
        assert fetch_artifact(identity, tmp_path / "b", settings=allowed).status == INSTALLED


def test_cli_seed_beside_weights_then_fetch(
    tmp_path: Path, coordinator, tiny_model, seed_process, run_peerload
) -> None:
    files = make_cache(tmp_path / "seed-cache")
    ready = seed_process(
        tiny_model("gpt2"),
        coordinator.address,
        "--artifact",
        f"torch_compile_cache={tmp_path / 'seed-cache'}",
        name="test/cli-artifacts",
    )
    [published] = ready["artifacts"]
    assert published["kind"] == "torch_compile_cache"
    dest, report = tmp_path / "replica" / "cache", tmp_path / "outcome.json"
    args = ("--kind", "torch_compile_cache", "--model-name", "test/cli-artifacts", "--coordinator", coordinator.address)
    done = run_peerload("artifact", "fetch", str(dest), *args, "--dtype", "float32", "--report", str(report))
    assert done.returncode == 0, done.stderr
    outcome = json.loads(report.read_text())
    assert outcome["status"] == "installed" and outcome["artifact_id"] == published["artifact_id"]
    assert tree(dest) == files
    # Without the dtype the identity is another one: nothing to install, and that is no failure.
    missed = run_peerload("artifact", "fetch", str(tmp_path / "other"), *args)
    assert missed.returncode == 0 and "skipped: no READY torch_compile_cache source" in missed.stderr
