"""Artifact manifests (CRC32C, artifact id, the checks of a served table) and environment stamps."""

from __future__ import annotations

import pytest

from peerload._gen.model_express import p2p_pb2 as pb
from peerload.artifacts.manifest import (
    artifact_id,
    build_manifest,
    check_served,
    crc32c_combine,
    crc32c_extend,
    crc32c_hex,
)
from peerload.artifacts.stamp import describe, mismatches, stamp_of, stamped
from peerload.errors import ArtifactRejected
from peerload.identity import SourceIdentity


def test_crc32c_wire_form() -> None:
    assert crc32c_hex(b"") == "00000000"
    assert crc32c_hex(b"123456789") == "e3069283"  # the CRC-32C check value


@pytest.mark.parametrize("split", [0, 1, 7, 4096, 99_999, 100_000])
def test_crc32c_of_pieces_combines_to_the_whole(split: int) -> None:
    """A chunk's CRC from its pieces', a file's from its chunks' (no second pass over the bytes)."""
    data = bytes((i * 131 + (i >> 7)) & 0xFF for i in range(100_000))
    a, b = memoryview(data)[:split], memoryview(data)[split:]
    assert crc32c_combine(crc32c_extend(0, a), crc32c_extend(0, b), len(b)) == int(crc32c_hex(data), 16)
    assert crc32c_extend(crc32c_extend(0, a), b) == int(crc32c_hex(data), 16)
    assert crc32c_extend(0, bytes(a)) == crc32c_extend(0, a)  # bytes and in-place memory agree


def test_manifest_chunks_cover_files_in_path_order() -> None:
    m = build_manifest([("/b/x.tar", b"b" * 10), ("/a/y.tar", b"a" * 25)], kind=3, chunk_bytes=10)
    assert [f.path for f in m.files] == ["/a/y.tar", "/b/x.tar"]
    assert [(c.chunk_index, c.file_index, c.file_offset, c.length) for c in m.chunks] == [
        (0, 0, 0, 10),
        (1, 0, 10, 10),
        (2, 0, 20, 5),
        (3, 1, 0, 10),
    ]
    assert m.files[0].checksum == crc32c_hex(b"a" * 25) and m.chunks[2].checksum == crc32c_hex(b"a" * 5)
    assert m.files[1].checksum == crc32c_hex(b"b" * 10)
    assert len(artifact_id(m)) == 64


def served(m: pb.ArtifactManifest) -> tuple[pb.GetArtifactManifestHeaderResponse, list[pb.ArtifactManifestChunk]]:
    header = pb.GetArtifactManifestHeaderResponse(
        mx_source_id="s",
        artifact_id=artifact_id(m),
        manifest_version=m.manifest_version,
        mx_source_type=m.mx_source_type,
        total_size=sum(f.size for f in m.files),
        file_count=len(m.files),
        chunk_count=len(m.chunks),
        chunk_size=m.chunk_size,
        files=m.files,
    )
    return header, [pb.ArtifactManifestChunk.FromString(c.SerializeToString()) for c in m.chunks]


def test_a_consistent_table_passes() -> None:
    m = build_manifest([("/a/artifact.tar", b"z" * 33)], kind=3, chunk_bytes=8)
    header, chunks = served(m)
    assert check_served(header, chunks, header.artifact_id) == m


@pytest.mark.parametrize(
    "tamper, message",
    [
        (lambda h, c: c[1].__setattr__("checksum", "deadbeef"), "hash to"),
        (lambda h, c: c[1].__setattr__("file_offset", 9), "gap or overlaps"),
        (lambda h, c: c.pop(), "counts disagree"),
        (lambda h, c: h.__setattr__("total_size", 1), "total_size"),
        (lambda h, c: h.files[0].__setattr__("size", 40), "cover"),
        (lambda h, c: c[0].__setattr__("length", 0), "malformed"),
    ],
)
def test_a_tampered_table_is_rejected(tamper, message) -> None:  # type: ignore[no-untyped-def]
    m = build_manifest([("/a/artifact.tar", b"z" * 33)], kind=3, chunk_bytes=8)
    header, chunks = served(m)
    expected = header.artifact_id
    tamper(header, chunks)
    with pytest.raises(ArtifactRejected, match=message):
        check_served(header, chunks, expected)


def test_published_id_must_match() -> None:
    header, chunks = served(build_manifest([("/a/artifact.tar", b"z")], kind=3))
    with pytest.raises(ArtifactRejected, match="not the published"):
        check_served(header, chunks, "0" * 64)


def test_stamp_round_trip_and_mismatch_names_field_and_values() -> None:
    base = SourceIdentity(model_name="m", extra_parameters={"keep": "1", "cpu_old": "x"})
    stamp = {"torch_version": "2.13.0", "gpu_arch": "cpu-x86_64-avx512", "cpu_compiler": "gcc 12"}
    identity = stamped(base, stamp)
    assert identity.extra_parameters == {"keep": "1", "cpu_compiler": "gcc 12"}
    assert stamp_of(identity)["gpu_arch"] == "cpu-x86_64-avx512"
    other = stamp_of(stamped(base, {**stamp, "gpu_arch": "cpu-x86_64-avx2"}))
    differences = mismatches(other, stamp_of(identity))
    assert differences == [("gpu_arch", "cpu-x86_64-avx2", "cpu-x86_64-avx512")]
    assert describe(differences) == "gpu_arch: source 'cpu-x86_64-avx2', here 'cpu-x86_64-avx512'"
    assert stamped(base, stamp).source_id() != stamped(base, {**stamp, "torch_version": "2.12"}).source_id()
