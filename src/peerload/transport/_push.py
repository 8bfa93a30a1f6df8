"""Reads as pushes between peerload NIXL agents: the messages, and the reader's staging slots (pure).

Over UCX's tcp transport a READ is emulated: the serving process answers the reader's GET
requests from its own progress, and UCX aborts that process when the reader has vanished by
then (docs/transport.md#peer-failures). A push avoids it: the reader asks in a notification,
the server WRITEs (a native put over tcp, whose failures complete the request with an error) and
NIXL's notification on that WRITE says it is done. The server writes into the reader's staging
slots, never into the destination: a server that stopped and wakes up later can only write into
a slot that is quarantined until it answers, never into memory the reader has moved on with.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import numpy as np

PREFIX = b"peerload:"
PUSH = PREFIX + b"push:"  # reader -> server: header, ops, then the reader's staging metadata
PUSHED = PREFIX + b"pushed:"  # server -> reader, on the WRITE itself: the slot holds the data
UNPUSHED = PREFIX + b"unpushed:"  # server -> reader: nothing was written; why
# Agents whose name ends with this take push requests (peerload agents; ModelExpress's do not).
MARK = ".push"
_ROW = 4  # uint64 per op: server address, size, server device, staging address


@dataclass(frozen=True)
class PushRequest:
    """What a reader asks a server to WRITE into its staging slot."""

    id: str
    src_cuda: bool  # the server's memory is GPU memory
    last: bool  # the reader's last request to this server for now
    rows: np.ndarray  # (n, 4) uint64: server address, size, server device, staging address
    metadata: bytes  # the reader's staging metadata (NIXL partial metadata), or b""


def encode(req: PushRequest) -> bytes:
    header = json.dumps({"id": req.id, "cuda": req.src_cuda, "last": req.last, "n": len(req.rows)}).encode()
    rows = np.ascontiguousarray(req.rows, dtype=np.uint64).tobytes()
    return PUSH + struct.pack("<I", len(header)) + header + rows + req.metadata


def decode(msg: bytes) -> PushRequest:
    """The request in a push message; ValueError if it is malformed."""
    if not msg.startswith(PUSH):
        raise ValueError("not a push request")
    body = msg[len(PUSH) :]
    if len(body) < 4:
        raise ValueError("truncated push request")
    (hlen,) = struct.unpack("<I", body[:4])
    try:
        header = json.loads(body[4 : 4 + hlen])
        n, rid = int(header["n"]), str(header["id"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"bad push request header: {e}") from e
    start, end = 4 + hlen, 4 + hlen + n * _ROW * 8
    if n <= 0 or len(body) < end:
        raise ValueError("push request without its ops")
    rows = np.frombuffer(body[start:end], dtype=np.uint64).reshape(n, _ROW)
    return PushRequest(rid, bool(header.get("cuda")), bool(header.get("last")), rows, body[end:])


def answer_id(msg: bytes) -> tuple[str, str | None] | None:
    """(request id, None) for a pushed answer, (id, reason) for an unpushed one, else None."""
    if msg.startswith(PUSHED):
        return msg[len(PUSHED) :].decode(errors="replace"), None
    if msg.startswith(UNPUSHED):
        rid, _, why = msg[len(UNPUSHED) :].decode(errors="replace").partition("\n")
        return rid, why or "the server wrote nothing"
    return None


def unpushed(rid: str, why: str) -> bytes:
    return UNPUSHED + f"{rid}\n{why}".encode()


class Slots:
    """Fixed-size staging slots: taken per request, freed on its answer, quarantined while a request
    that was given up is unanswered (its server may still write there)."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._free = list(range(count - 1, -1, -1))
        self._taken: dict[str, int] = {}  # request id -> slot
        self.quarantined: set[str] = set()  # ids given up but not answered

    def take(self, rid: str) -> int | None:
        """A free slot for request `rid`, or None when all are in use."""
        if not self._free:
            return None
        slot = self._free.pop()
        self._taken[rid] = slot
        return slot

    def answered(self, rid: str) -> None:
        """The server answered `rid` (or can no longer write): its slot is free again."""
        slot = self._taken.pop(rid, None)
        self.quarantined.discard(rid)
        if slot is not None:
            self._free.append(slot)

    def give_up(self, rid: str) -> None:
        """The reader stopped waiting for `rid`: keep its slot out of use until it is answered."""
        if rid in self._taken:
            self.quarantined.add(rid)

    @property
    def free(self) -> int:
        return len(self._free)
