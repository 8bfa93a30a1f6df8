"""Splitting ReadOps into chunks and grouping them into batches (pure; shared by transports)."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field

from peerload.errors import ConfigError
from peerload.transport.base import ReadOp


@dataclass
class Batch:
    """Consecutive ops posted as one transfer request."""

    ops: list[ReadOp] = field(default_factory=list)
    nbytes: int = 0
    key: Hashable = None


def split_op(op: ReadOp, chunk_bytes: int) -> Iterator[ReadOp]:
    """Yield `op` cut into pieces of at most `chunk_bytes` (all of it when chunk_bytes <= 0)."""
    if chunk_bytes <= 0 or op.size <= chunk_bytes:
        yield op
        return
    for off in range(0, op.size, chunk_bytes):
        n = min(chunk_bytes, op.size - off)
        yield ReadOp(
            op.remote_addr + off,
            op.local_addr + off,
            n,
            op.remote_device,
            op.local_device,
            op.remote_memory,
        )


def plan_batches(
    ops: Sequence[ReadOp],
    chunk_bytes: int,
    key: Callable[[ReadOp], Hashable] = lambda op: None,
) -> list[Batch]:
    """Chunk large ops and group small ones so each batch carries about `chunk_bytes`.

    A new batch also starts whenever `key` changes (e.g. memory kind), since one request
    holds one memory type per side. Zero-byte ops are dropped.
    """
    batches: list[Batch] = []
    cur = Batch()
    for op in ops:
        if op.size < 0:
            raise ConfigError(f"ReadOp size must be >= 0, got {op.size}")
        if op.size == 0:
            continue
        k = key(op)
        for piece in split_op(op, chunk_bytes):
            full = chunk_bytes > 0 and cur.nbytes + piece.size > chunk_bytes
            if cur.ops and (full or k != cur.key):
                batches.append(cur)
                cur = Batch()
            cur.key = k
            cur.ops.append(piece)
            cur.nbytes += piece.size
    if cur.ops:
        batches.append(cur)
    return batches
