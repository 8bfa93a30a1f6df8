"""Artifact manifests as ModelExpress readers check them: files cut into chunks, CRC32C checksums.

Wire facts (model_express.p2p, manifest_version 1): every file of the bundle in path order, each
cut into chunks of at most `chunk_size` bytes numbered across the whole bundle; a checksum is the
CRC32C of the bytes as 8 lower-case hex digits (per chunk, and per file over the whole file);
`artifact_id` is the SHA-256 hex of the manifest as compact UTF-8 JSON with the keys in field
order. A reader recomputes the id from what it was served, so a tampered table is caught too.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import glob
import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import cast

import google_crc32c
import numpy as np

from peerload._gen.model_express import p2p_pb2 as pb
from peerload.errors import ArtifactRejected

MANIFEST_VERSION = 1
DEFAULT_CHUNK_BYTES = 64 << 20
MAX_CHUNK_BYTES = 4 << 30


def crc32c_hex(data: bytes | memoryview) -> str:
    """The wire form of a checksum: CRC32C as 8 lower-case hex digits."""
    return f"{crc32c_extend(0, data):08x}"


def crc32c_extend(crc: int, data: bytes | memoryview) -> int:
    """CRC32C of the bytes that gave `crc` followed by `data` (`crc` 0 starts a new one).

    Computed in place on the memory of a memoryview (no copy) through the C library
    google_crc32c wraps; ctypes releases the GIL for the call, so other threads run meanwhile.
    """
    if not len(data):
        return crc
    native = _native_extend()
    if native is not None:
        array = np.frombuffer(data, dtype=np.uint8)
        return native(crc, array.ctypes.data, array.nbytes)
    # google_crc32c's Python API takes bytes objects only: one copy
    return int(google_crc32c.extend(crc, bytes(data) if isinstance(data, memoryview) else data))


@functools.cache
def _native_extend() -> Callable[[int, int, int], int] | None:
    """`crc32c_extend` of the library google_crc32c wraps, called on memory in place (no copy)."""
    libs = Path(google_crc32c.__file__).resolve().parent.parent / "google_crc32c.libs"
    candidates = sorted(glob.glob(str(libs / "libcrc32c*.so*")))
    system = ctypes.util.find_library("crc32c")
    for path in [*candidates, *([system] if system else [])]:
        try:
            extend = ctypes.CDLL(path).crc32c_extend
        except (OSError, AttributeError):
            continue
        extend.restype = ctypes.c_uint32
        extend.argtypes = [ctypes.c_uint32, ctypes.c_void_p, ctypes.c_size_t]
        if extend(0, ctypes.cast(ctypes.c_char_p(b"123456789"), ctypes.c_void_p).value, 9) == 0xE3069283:
            return extend
    return None


# CRC arithmetic on reflected polynomials (bit 31 is x^0), as zlib 1.2.12's crc32_combine does it.
_POLY = 0x82F63B78  # CRC-32C (Castagnoli), reflected
_ONE = 1 << 31  # the polynomial 1


def _times(a: int, b: int) -> int:
    """a * b modulo the CRC polynomial."""
    product = 0
    bit = _ONE
    while a:
        if a & bit:
            product ^= b
            a ^= bit
        bit >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1
    return product


def _x_powers() -> list[int]:
    """x^(2^k) modulo the polynomial, for k = 0..31 (the cycle repeats after that)."""
    powers = [_ONE >> 1]  # x^1
    for _ in range(31):
        powers.append(_times(powers[-1], powers[-1]))
    return powers


_X_POWERS = _x_powers()


@functools.lru_cache(maxsize=64)
def _zeros_operator(length: int) -> int:
    """x^(8 * length) modulo the polynomial: what appending `length` zero bytes multiplies by."""
    operator, k = _ONE, 3  # 8 * length = length * 2^3
    while length:
        if length & 1:
            operator = _times(_X_POWERS[k & 31], operator)
        length >>= 1
        k += 1
    return operator


def crc32c_combine(crc_a: int, crc_b: int, length_b: int) -> int:
    """CRC32C of A+B from CRC32C(A), CRC32C(B) and len(B) (zlib's crc32_combine, for CRC-32C).

    A file's checksum from its chunks' without a second pass over the bytes: about 30 small
    polynomial products, cached per length (a file's chunks share one length).
    """
    if length_b <= 0:
        return crc_a
    return _times(_zeros_operator(length_b), crc_a) ^ crc_b


def build_manifest(
    files: Sequence[tuple[str, bytes | memoryview]], kind: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> pb.ArtifactManifest:
    """The manifest of `files` ((absolute path, contents), published in path order)."""
    if not 0 < chunk_bytes <= MAX_CHUNK_BYTES:
        raise ValueError(f"artifact chunk size must be in 1..{MAX_CHUNK_BYTES}, got {chunk_bytes}")
    manifest = pb.ArtifactManifest(
        manifest_version=MANIFEST_VERSION, mx_source_type=cast("pb.MxSourceType", kind), chunk_size=chunk_bytes
    )
    for file_index, (path, contents) in enumerate(sorted(files, key=lambda f: f[0])):
        data = memoryview(contents)
        whole = 0
        for offset in range(0, len(data), chunk_bytes):
            piece = data[offset : offset + chunk_bytes]
            crc = crc32c_extend(0, piece)
            whole = crc32c_combine(whole, crc, len(piece))
            manifest.chunks.append(
                pb.ArtifactManifestChunk(
                    chunk_index=len(manifest.chunks),
                    file_index=file_index,
                    file_offset=offset,
                    length=len(piece),
                    checksum=f"{crc:08x}",
                )
            )
        manifest.files.append(
            pb.ArtifactManifestFile(file_index=file_index, path=path, size=len(data), checksum=f"{whole:08x}")
        )
    return manifest


def artifact_id(manifest: pb.ArtifactManifest) -> str:
    """SHA-256 hex of the manifest's canonical JSON (what ModelExpress calls artifact_id)."""
    canonical = {
        "manifest_version": manifest.manifest_version,
        "mx_source_type": manifest.mx_source_type,
        "chunk_size": manifest.chunk_size,
        "files": [
            {"file_index": f.file_index, "path": f.path, "size": f.size, "checksum": f.checksum} for f in manifest.files
        ],
        "chunks": [
            {
                "chunk_index": c.chunk_index,
                "file_index": c.file_index,
                "file_offset": c.file_offset,
                "length": c.length,
                "checksum": c.checksum,
            }
            for c in manifest.chunks
        ],
    }
    return hashlib.sha256(json.dumps(canonical, ensure_ascii=False, separators=(",", ":")).encode()).hexdigest()


def source_metadata(manifest: pb.ArtifactManifest, node_rank: int = 0) -> pb.ArtifactSourceMetadata:
    """What a WorkerMetadata's `artifact_source` says about the manifest."""
    return pb.ArtifactSourceMetadata(
        artifact_id=artifact_id(manifest),
        total_size=sum(f.size for f in manifest.files),
        file_count=len(manifest.files),
        chunk_count=len(manifest.chunks),
        node_rank=node_rank,
    )


def check_served(
    header: pb.GetArtifactManifestHeaderResponse, chunks: Sequence[pb.ArtifactManifestChunk], expected_id: str
) -> pb.ArtifactManifest:
    """The manifest a source served, once its tables agree with each other and with `expected_id`.

    Raises:
        ArtifactRejected: counts, numbering, coverage of every file or the recomputed id disagree.
    """
    where = header.mx_source_id or "artifact source"
    if expected_id and header.artifact_id != expected_id:
        raise ArtifactRejected(where, f"serves artifact {header.artifact_id}, not the published {expected_id}")
    if header.manifest_version != MANIFEST_VERSION:
        raise ArtifactRejected(where, f"manifest_version {header.manifest_version} (this reader knows 1)")
    if header.file_count != len(header.files) or header.chunk_count != len(chunks):
        raise ArtifactRejected(
            where,
            f"counts disagree: {header.file_count} files / {header.chunk_count} chunks announced, "
            f"{len(header.files)} / {len(chunks)} served",
        )
    if not 0 < header.chunk_size <= MAX_CHUNK_BYTES and chunks:
        raise ArtifactRejected(where, f"chunk_size {header.chunk_size} is out of range")
    covered = [0] * len(header.files)
    for index, f in enumerate(header.files):
        if f.file_index != index:
            raise ArtifactRejected(where, f"file {index} is numbered {f.file_index}")
    for index, c in enumerate(chunks):
        if c.chunk_index != index or c.file_index >= len(header.files) or not 0 < c.length <= header.chunk_size:
            raise ArtifactRejected(where, f"chunk {index} is malformed (index, file or length)")
        if c.file_offset != covered[c.file_index]:
            raise ArtifactRejected(where, f"chunk {index} leaves a gap or overlaps in file {c.file_index}")
        covered[c.file_index] += c.length
    for f, size in zip(header.files, covered, strict=True):
        if size != f.size:
            raise ArtifactRejected(where, f"chunks cover {size} of the {f.size} bytes of file {f.file_index}")
    if sum(f.size for f in header.files) != header.total_size:
        raise ArtifactRejected(where, f"total_size {header.total_size} is not the sum of the file sizes")
    manifest = pb.ArtifactManifest(
        manifest_version=header.manifest_version,
        mx_source_type=header.mx_source_type,
        chunk_size=header.chunk_size,
        files=header.files,
        chunks=chunks,
    )
    computed = artifact_id(manifest)
    if computed != header.artifact_id:
        raise ArtifactRejected(where, f"the served tables hash to {computed}, not to artifact {header.artifact_id}")
    return manifest
