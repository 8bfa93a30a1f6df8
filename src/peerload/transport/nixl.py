"""NIXL transport (UCX backend): one-sided READ from a seed's registered memory.

The UCX environment it needs is set (only where unset) before the first agent exists, by
`peerload.transport.ucx_env`; see docs/transport.md.
"""

from __future__ import annotations

import bisect
import ctypes
import importlib.util
import logging
import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch

from peerload._address import free_port, split_host_port
from peerload.errors import (
    MissingExtraError,
    PeerMetadataError,
    TransportError,
)
from peerload.transport import _push
from peerload.transport._plan import Batch, plan_batches
from peerload.transport._refcount import RangeUsers
from peerload.transport.base import EndpointInfo, ReadLimits, ReadOp, Region, Transport, tensor_region
from peerload.transport.ucx_env import UCX_BACKEND_PARAMS, apply_ucx_defaults

log = logging.getLogger(__name__)

_MD_MAGIC = b"nixlSerDes"  # every NIXL agent metadata blob starts with this tag
_NOTIF = b"peerload:"  # prefix of our notifications; b"peerload:done:" ends a read
_FETCHED = b"fetched:"  # what `_peers` holds for a peer whose metadata came from its listen thread
# Polls failing without a break for this long mean the agent is broken, not one bad poll.
_POLL_FAILING_BROKEN_S = 5.0
# A pushing reader that has heard nothing for this long checks its server is still connected.
_PING_AFTER_S = 0.5
_SLOT_BYTES = 8 << 20  # the most one push request carries (staging slot size)
# Staging memory of closed endpoints that a server which stopped answering may still write into.
_RETAINED: list[torch.Tensor] = []


# NIXL's Python packages, in the order tried: the `nixl` meta package picks the build that matches
# the machine's CUDA (peerload[nixl]); otherwise whichever single build is installed
# (peerload[cu13] or peerload[cu12]; cu12's imports without CUDA, as on our CPU machines).
_NIXL_MODULES = ("nixl", "nixl_cu13", "nixl_cu12")

# Fail at import (configuration time) when NIXL is absent, without importing it yet: UCX must
# see the env below before it loads.
if all(importlib.util.find_spec(name) is None for name in _NIXL_MODULES):
    raise ImportError("none of the NIXL packages (nixl, nixl-cu13, nixl-cu12) is installed")


def _import_nixl() -> tuple[Any, Any, Any]:
    """(nixl_agent, nixl_agent_config, bindings) from the first installed NIXL package."""
    name = next((n for n in _NIXL_MODULES if importlib.util.find_spec(n) is not None), _NIXL_MODULES[-1])
    try:
        bindings = importlib.import_module(f"{name}._bindings")
        api = importlib.import_module(f"{name}._api")
    except ImportError as e:
        raise MissingExtraError("the nixl transport", name.replace("_", "-"), "nixl") from e
    return api.nixl_agent, api.nixl_agent_config, bindings


def _kinds(batch: Batch) -> tuple[bool, str]:
    """(local memory is CUDA, remote memory kind): the key `_read` planned its batches by."""
    return cast("tuple[bool, str]", batch.key)


_RangeKey = tuple[int, int, int, bool]  # (addr, size, device_id, is_cuda): one registration


def _range_key(region: Region, cuda: bool) -> _RangeKey | None:
    """The registration a region needs; None for zero bytes (NIXL gains nothing from those)."""
    return (region.addr, region.size, region.device_id, cuda) if region.size else None


def _current_device(index: int) -> None:
    """Make GPU `index` current on this thread before NIXL/UCX touch its memory (as ModelExpress
    does): UCX's CUDA transports (cuda_ipc, cuda_copy) work in the calling thread's context."""
    torch.cuda.set_device(index)


@dataclass
class _ReadState:
    """One `read` in flight: its batches, the requests posted and not yet done, and its limits."""

    remote: str
    batches: list[Batch]
    limits: ReadLimits  # limits.last: the final request tells the seed this reader is done with it
    tag: bytes = field(default_factory=lambda: secrets.token_hex(4).encode())  # names this read's notifications
    next: int = 0  # index of the next batch to post
    inflight: list[tuple[Any, int]] = field(default_factory=list)  # (handle, bytes)

    def check_alive(self) -> None:
        """Raise if the caller cancelled or the deadline passed."""
        self.limits.check(self.remote)


class NixlTransport(Transport):
    """A NIXL agent with the UCX backend, no progress thread, and a polling seed-side server.

    Options:
        loopback: also set UCX_NET_DEVICES=lo (single-host tests).
        chunk_bytes: bytes per transfer request; larger tensors are split (0 = one request).
        max_inflight: transfer requests posted at once.
        idle_poll_s / active_poll_s: seed poll interval when idle / while peers are reading.
        active_linger_s: how long the seed keeps polling fast after a peer's last notification.
        unique_name: append a random suffix to `name`, so restarted or same-named peers never clash;
            the suffix also marks the agent as one that takes push requests (see `push`).
        push: read host memory from peerload agents as pushes (they WRITE into staging slots; see
            peerload.transport._push): no serving process can then be aborted by UCX for a reader
            that vanished. On by default; False: always READ (what ModelExpress readers do).
        listen_port: run NIXL's listen thread on this port (0 = a free one): it hands this agent's
            metadata to peers that fetch it (ModelExpress P2P metadata mode), and fetching a
            peer's metadata from its listen thread needs one here too. None: no listen thread.
        connect_timeout_s: how long fetching a peer's metadata from its listen thread may take.
    """

    kind = "nixl"

    def __init__(
        self,
        name: str,
        *,
        loopback: bool = False,
        chunk_bytes: int = 64 << 20,
        max_inflight: int = 4,
        idle_poll_s: float = 0.02,
        active_poll_s: float = 0.001,
        active_linger_s: float = 10.0,
        unique_name: bool = True,
        listen_port: int | None = None,
        connect_timeout_s: float = 30.0,
        push: bool = True,
    ) -> None:
        apply_ucx_defaults(loopback=loopback)
        nixl_agent, nixl_agent_config, self._nb = _import_nixl()
        self.name = f"{name}-{secrets.token_hex(4)}{_push.MARK}" if unique_name else name
        self._push = push
        self._chunk_bytes = chunk_bytes
        self._max_inflight = max(1, max_inflight)
        self._idle_poll_s = idle_poll_s
        self._active_poll_s = active_poll_s
        self._active_linger_s = active_linger_s
        self._connect_timeout_s = connect_timeout_s
        # One lock around every agent call: the serving thread and the reading thread share the
        # agent, and NIXL's default sync mode is not safe for concurrent posting.
        self._lock = threading.RLock()
        self.metadata_port: int | None = None
        self._agent = self._create_agent(nixl_agent, nixl_agent_config, listen_port)
        if "UCX" not in self._agent.backends:
            raise TransportError(f"NIXL agent {self.name!r} has no UCX backend (plugin missing?)")
        self._users: RangeUsers[_RangeKey] = RangeUsers(self._deregister_range)
        self._ranges: list[tuple[int, int, bool]] = []  # sorted (start, end, is_cuda)
        self._peers: dict[str, bytes] = {}  # remote agent name -> metadata loaded
        self._serve_thread: threading.Thread | None = None
        self._serve_error: str | None = None  # why the serving thread stopped, if it did by itself
        self._polls_failing: tuple[float, str] | None = None  # (since, last error) of failing polls
        self._poll_delay_s = active_poll_s  # the serving thread's current poll interval
        self._stop = threading.Event()
        self._closed = False
        # Pushes (see _push): the reader's staging slots, and what each side has in flight.
        self._slot_bytes = min(chunk_bytes, _SLOT_BYTES) if chunk_bytes > 0 else _SLOT_BYTES
        self._staging: torch.Tensor | None = None
        self._staging_md = b""  # NIXL partial metadata of the staging memory, for servers
        self._slots = _push.Slots(4 * self._max_inflight)
        self._slot_peer: dict[str, str] = {}  # request id -> the server asked
        self._answers: dict[str, str | None] = {}  # request id -> None (pushed) or why not
        self._staging_registrations = 0  # how often staging memory was registered (once, unless a race)
        self._writes: list[tuple[Any, str, str]] = []  # server side: (handle, reader, request id)
        self._push_md: dict[str, bytes] = {}  # server side: readers' staging metadata loaded

    def _create_agent(self, nixl_agent: Any, nixl_agent_config: Any, listen_port: int | None) -> Any:
        """The agent, with its listen thread on `listen_port` (0: a free port) unless that is None."""
        # No progress thread: the wrapper's spins a core (pthrDelay=0); we poll instead. With a
        # listen thread NIXL defaults to its strict (internally locked) sync mode.
        tries = 3 if listen_port == 0 else 1
        for attempt in range(tries):
            # A port 0 is picked here, not by NIXL: its listen thread cannot report a port it chose;
            # another process may take ours before NIXL binds it, so a free one is tried again.
            port = None if listen_port is None else listen_port or free_port()
            listen = {} if port is None else {"enable_listen_thread": True, "listen_port": port}
            try:
                # The UCX backend is made here, not by the wrapper, which would give it no parameters.
                agent = nixl_agent(self.name, nixl_agent_config(enable_prog_thread=False, backends=[], **listen))
                agent.create_backend("UCX", dict(UCX_BACKEND_PARAMS))
            except Exception as e:
                if "bind" in str(e).lower() and attempt + 1 < tries:
                    continue
                where = f" (listen port {port})" if port is not None else ""
                raise TransportError(f"cannot create NIXL agent {self.name!r}{where}: {e}") from e
            self.metadata_port = port
            return agent
        raise AssertionError("unreachable")

    # --- registration ---------------------------------------------------------------------

    def register(self, tensors: Mapping[str, torch.Tensor]) -> list[Region]:
        self._check_open()
        regions = [(tensor_region(n, t), t.is_cuda) for n, t in tensors.items()]
        keys = [_range_key(region, cuda) for region, cuda in regions]
        new: dict[bool, list[tuple[int, int, int]]] = {False: [], True: []}
        for key in dict.fromkeys(k for k in keys if k is not None and not self._users.in_use(k)):
            new[key[3]].append(key[:3])
        with self._lock:
            for cuda, rows in new.items():
                if not rows:
                    continue
                if cuda:
                    _current_device(int(rows[0][2]))
                descs = self._nb.nixlRegDList(self._mem(cuda), np.array(rows, dtype=np.uint64))
                try:
                    self._agent.register_memory(descs)
                except Exception as e:
                    raise TransportError(f"NIXL register_memory of {len(rows)} regions failed: {e}") from e
        for (region, _), region_key in zip(regions, keys, strict=True):
            self._users.use(region.name, region_key)
        self._rebuild_ranges()
        return [r for r, _ in regions]

    def deregister(self, names: Sequence[str]) -> None:
        self._check_open()
        for name in names:
            self._users.forget(name)
        self._rebuild_ranges()

    def _deregister_range(self, key: _RangeKey) -> None:
        descs = self._nb.nixlRegDList(self._mem(key[3]), np.array([key[:3]], dtype=np.uint64))
        with self._lock:
            try:
                self._agent.deregister_memory(descs)
            except Exception as e:
                log.warning("NIXL deregister of 0x%x+%d failed: %s", key[0], key[1], e)

    def _rebuild_ranges(self) -> None:
        self._ranges = sorted((a, a + n, c) for (a, n, _, c) in self._users.keys())

    def _local_is_cuda(self, addr: int, size: int) -> bool:
        # Walk back from the last range starting at or before `addr`: ranges may overlap.
        for i in range(bisect.bisect_right(self._ranges, (addr, float("inf"), True)) - 1, -1, -1):
            if addr + size <= self._ranges[i][1]:
                return self._ranges[i][2]
        raise TransportError(
            f"local range 0x{addr:x}+{size} is not inside memory registered on {self.name!r}: "
            "register the destination tensors first"
        )

    def _mem(self, cuda: bool) -> Any:
        return self._nb.VRAM_SEG if cuda else self._nb.DRAM_SEG

    # --- seed side --------------------------------------------------------------------------

    def endpoint_info(self) -> EndpointInfo:
        self._check_open()
        with self._lock:
            md = self._agent.get_agent_metadata()
        if self._serve_thread is None:
            self._serve_thread = threading.Thread(
                target=self._serve, name=f"peerload-nixl-serve-{self.name}", daemon=True
            )
            self._serve_thread.start()
        return EndpointInfo(agent_name=self.name, nixl_metadata=md)

    def health(self) -> str | None:
        if self._closed:
            return f"NIXL endpoint {self.name!r} is closed"
        thread = self._serve_thread
        if thread is not None and not thread.is_alive():
            return f"the NIXL serving thread of {self.name!r} died: {self._serve_error or 'no reason recorded'}"
        failing = self._polls_failing
        if failing is not None and time.monotonic() - failing[0] > _POLL_FAILING_BROKEN_S:
            seconds = time.monotonic() - failing[0]
            return f"NIXL notification polls of {self.name!r} failing for {seconds:.0f}s: {failing[1]}"
        return None

    @property
    def polling_idle(self) -> bool:
        """True once the serving thread has backed off to its idle poll interval (no peer reading)."""
        return self._poll_delay_s >= self._idle_poll_s

    def _serve(self) -> None:
        try:
            gpus = sorted({key[2] for key in self._users.keys() if key[3]})
            if gpus:  # this thread drives UCX progress for peers reading our GPU memory
                _current_device(gpus[0])
            self._serve_loop()
        except BaseException as e:  # recorded for health(): a seed must not advertise READY without it
            self._serve_error = f"{type(e).__name__}: {e}"
            log.error("NIXL serving thread of %r stopped: %s", self.name, self._serve_error)

    def _serve_loop(self) -> None:
        """Drive UCX progress so peers can connect and read; fast while reads are active."""
        active: dict[str, float] = {}  # peer -> poll fast until this time
        delay = self._active_poll_s
        while not self._stop.wait(delay):
            try:
                notifs = self._poll()
                self._polls_failing = None
            except Exception as e:  # keep serving: one bad poll must not stop the seed
                if self._polls_failing is None:
                    log.warning("NIXL notification poll failed on %r: %s", self.name, e)
                    self._polls_failing = (time.monotonic(), str(e))
                else:
                    self._polls_failing = (self._polls_failing[0], str(e))
                notifs = {}
            now = time.monotonic()
            for peer, msgs in notifs.items():
                for msg in msgs:
                    if msg.startswith(_NOTIF + b"done:"):
                        active.pop(peer, None)
                    elif msg.startswith(_NOTIF):
                        active[peer] = now + self._active_linger_s
            for peer in [p for p, t in active.items() if t < now]:
                del active[peer]
            if active or notifs or self._writes:
                delay = self._active_poll_s
            else:  # back off towards the idle interval: an idle seed costs ~0% CPU
                delay = min(self._idle_poll_s, max(delay * 2, self._active_poll_s))
            self._poll_delay_s = delay

    # --- pushes, both sides (see peerload.transport._push) -------------------------------------

    def _poll(self) -> dict[str, list[bytes]]:
        """Drive UCX progress once: take push requests and answers, progress our WRITEs; the other
        notifications, by peer. Both the serving thread and a pushing reader call it."""
        with self._lock:
            notifs = self._agent.get_new_notifs()
            rest: dict[str, list[bytes]] = {}
            for peer, msgs in notifs.items():
                for msg in msgs:
                    answer = _push.answer_id(msg)
                    if answer is not None:
                        self._answered(*answer)
                    elif msg.startswith(_push.PUSH):  # counts as a READ's notification for fast polling
                        last = self._accept_push(peer, msg)
                        rest.setdefault(peer, []).append(_NOTIF + (b"done:" if last else b"xfer:"))
                    else:
                        rest.setdefault(peer, []).append(msg)
            if self._writes:
                self._progress_writes()
        return rest

    def _answered(self, rid: str, why: str | None) -> None:
        if rid in self._slots.quarantined:  # given up: the slot may be used again, nobody waits
            self._slots.answered(rid)
            self._slot_peer.pop(rid, None)
        elif rid in self._slot_peer:
            self._answers[rid] = why

    def _accept_push(self, reader: str, msg: bytes) -> bool:
        """Post the WRITE a reader asked for (NIXL's notification on it tells the reader it is done);
        whether it was the reader's last request for now."""
        try:
            req = _push.decode(msg)
        except ValueError as e:
            log.warning("bad push request from %s: %s", reader, e)
            return False
        try:
            if req.metadata and self._push_md.get(reader) != req.metadata:
                self._agent.add_remote_agent(req.metadata)
                self._push_md[reader] = req.metadata
            rows = req.rows
            local = self._nb.nixlXferDList(self._mem(req.src_cuda), np.ascontiguousarray(rows[:, :3]))
            far = np.ascontiguousarray(np.stack([rows[:, 3], rows[:, 1], np.zeros_like(rows[:, 1])], axis=1))
            h = self._agent.initialize_xfer(
                "WRITE", local, self._nb.nixlXferDList(self._nb.DRAM_SEG, far), reader, _push.PUSHED + req.id.encode()
            )
        except Exception as e:  # unknown ranges, no metadata, the reader is gone: it gets told why
            self._tell(reader, _push.unpushed(req.id, f"{type(e).__name__}: {e}"))
            return req.last
        try:
            state = self._agent.transfer(h)
        except Exception as e:
            state = f"ERR ({e})"
        if state.startswith("ERR"):
            self._release(h)
            self._tell(reader, _push.unpushed(req.id, f"the WRITE failed to post: {state}"))
        else:
            self._writes.append((h, reader, req.id))
        return req.last

    def _progress_writes(self) -> None:
        pending = []
        for h, reader, rid in self._writes:
            try:
                state = self._agent.check_xfer_state(h)
            except Exception as e:  # e.g. nixlRemoteDisconnectError: the reader is gone
                state = f"ERR ({type(e).__name__}: {e})"
            if state == "PROC":
                pending.append((h, reader, rid))
                continue
            self._release(h)
            if state != "DONE":
                log.debug("push %s to %s failed: %s", rid, reader, state)
                self._tell(reader, _push.unpushed(rid, f"the WRITE failed: {state}"))
        self._writes = pending

    def _tell(self, peer: str, msg: bytes) -> None:
        try:
            self._agent.send_notif(peer, msg)
        except Exception as e:  # the peer is gone; it asks nothing more
            log.debug("notification to %s failed: %s", peer, e)

    def _pushes_from(self, remote: str, batches: list[Batch]) -> bool:
        """Read these batches as pushes: a peerload peer, host memory on both sides."""
        return self._push and remote.endswith(_push.MARK) and all(_kinds(b) == (False, "cpu") for b in batches)

    def _staging_slots(self) -> int:
        """The staging memory's address (allocated and registered on first use)."""
        # Under the lock as a whole: reads from several peers at once start together, and each
        # registering its own staging memory left servers writing into memory that was freed.
        with self._lock:
            if self._staging is None:
                staging = torch.empty(self._slot_bytes * (4 * self._max_inflight), dtype=torch.uint8)
                row = np.array([(staging.data_ptr(), staging.nbytes, 0)], dtype=np.uint64)
                reg = self._nb.nixlRegDList(self._nb.DRAM_SEG, row)
                try:
                    self._agent.register_memory(reg)
                    self._staging_md = self._agent.get_partial_agent_metadata(reg, True)
                except Exception as e:
                    raise TransportError(f"NIXL could not register {staging.nbytes} B of staging memory: {e}") from e
                self._staging = staging
                self._staging_registrations += 1
            return self._staging.data_ptr()

    def _run_pushed(self, read: _ReadState, asked: dict[str, tuple[Batch, int]]) -> None:
        """`_run_batches` for a server that pushes: request each batch, copy it out of its slot when done."""
        base, last = self._staging_slots(), len(read.batches) - 1
        heard = time.monotonic()
        while read.next <= last or asked:
            read.check_alive()
            while read.next <= last and len(asked) < self._max_inflight and (read.next < last or not asked):
                rid = f"{read.tag.decode()}:{read.next}"
                with self._lock:
                    slot = self._slots.take(rid)
                    if slot is not None:
                        self._slot_peer[rid] = read.remote
                if slot is None:  # other reads hold them all: wait for one (bounded by the deadline)
                    break
                asked[rid] = (read.batches[read.next], base + slot * self._slot_bytes)
                self._ask(read, rid, *asked[rid], final=read.next == last)
                read.next += 1
            if not asked and len(self._slots.quarantined) == self._slots.count:
                raise TransportError(
                    f"no free staging slot: all {self._slots.count} hold pushes that peers gave no answer to",
                    read.remote,
                )
            self._poll()
            done = []
            with self._lock:
                for rid in [r for r in asked if r in self._answers]:
                    why = self._answers.pop(rid)
                    self._slot_peer.pop(rid, None)
                    batch, addr = asked.pop(rid)
                    if why is not None:
                        self._slots.answered(rid)
                        raise TransportError(f"the peer pushed nothing: {why}", read.remote)
                    self._copy_out(batch, addr)
                    self._slots.answered(rid)
                    done.append(batch.nbytes)
            if done:
                heard = time.monotonic()
                if read.limits.progress is not None:
                    for nbytes in done:
                        read.limits.progress(nbytes)
            elif time.monotonic() - heard > _PING_AFTER_S:
                heard = time.monotonic()  # a peer whose connection failed cannot take this
                self._send(read.remote, _NOTIF + b"ping", "the peer is gone")
            else:
                time.sleep(0.0005)

    def _ask(self, read: _ReadState, rid: str, batch: Batch, addr: int, *, final: bool) -> None:
        """Ask the server to WRITE `batch` into the slot at `addr`, its pieces back to back."""
        offsets = np.cumsum([0] + [op.size for op in batch.ops[:-1]], dtype=np.uint64)
        rows = np.array([(op.remote_addr, op.size, op.remote_device, 0) for op in batch.ops], dtype=np.uint64)
        rows[:, 3] = offsets + np.uint64(addr)
        # Every request carries the staging metadata: a server that dropped and reloaded us (a peer
        # gone and back, a reshard reading a second layout) would otherwise not know where to WRITE.
        req = _push.PushRequest(rid, False, final and read.limits.last, rows, self._staging_md)
        self._send(read.remote, _push.encode(req), "cannot ask the peer to push")

    def _send(self, remote: str, msg: bytes, what: str) -> None:
        with self._lock:
            try:
                self._agent.send_notif(remote, msg)
            except Exception as e:  # the connection failed: the peer can no longer write into our slots
                self._forget_slots(remote)
                raise TransportError(f"{what}: {type(e).__name__}: {e}", remote) from e

    @staticmethod
    def _copy_out(batch: Batch, addr: int) -> None:
        for op in batch.ops:
            ctypes.memmove(op.local_addr, addr, op.size)
            addr += op.size

    def _give_up(self, asked: dict[str, tuple[Batch, int]]) -> None:
        """A push read failed or timed out: its unanswered slots stay out of use until answered."""
        with self._lock:
            for rid in asked:
                if rid in self._answers:  # answered already: the server is done with the slot
                    del self._answers[rid]
                    self._slots.answered(rid)
                    self._slot_peer.pop(rid, None)
                else:
                    self._slots.give_up(rid)
        asked.clear()

    def _forget_slots(self, remote: str) -> None:
        """`remote` can no longer write (its connection failed): free the slots it held."""
        for rid, peer in list(self._slot_peer.items()):
            if peer == remote and rid in self._slots.quarantined:
                self._slots.answered(rid)
                del self._slot_peer[rid]

    # --- target side ------------------------------------------------------------------------

    def connect(self, peer: EndpointInfo) -> None:
        self._connect(peer)

    @staticmethod
    def _check_metadata(peer: EndpointInfo) -> bytes | None:
        """The peer's metadata blob; None when it is to be fetched from its listen thread."""
        md, who = peer.nixl_metadata, peer.agent_name or None
        if md is None and peer.metadata_endpoint:
            if not who:
                raise PeerMetadataError(f"a NIXL listen thread ({peer.metadata_endpoint}) needs the agent's name")
            return None
        if md is None:
            raise PeerMetadataError(f"peer publishes {peer.transport or 'no transport'} metadata, not nixl", who)
        if not md.startswith(_MD_MAGIC):
            raise PeerMetadataError("not a NIXL agent metadata blob", who)
        return md

    def _connect(self, peer: EndpointInfo) -> str:
        self._check_open()
        md = self._check_metadata(peer)
        if md is None:
            return self._fetch(peer.agent_name, peer.metadata_endpoint or "")
        who = peer.agent_name or None
        for name, loaded in self._peers.items():
            if loaded == md and who in (None, name):
                return name
        if who in self._peers:  # same name, new metadata (re-registered or restarted)
            self._drop_peer(who)
        with self._lock:
            try:
                remote = self._agent.add_remote_agent(md)
            except self._nb.nixlBackendError as e:  # parsed, but UCX could not reach the peer
                raise TransportError(f"cannot connect over NIXL: {e}", who) from e
            except Exception as e:
                raise PeerMetadataError(f"NIXL rejected the peer's metadata: {e}", who) from e
            if isinstance(remote, bytes):
                remote = remote.decode()
            if who and remote != who:
                self._agent.remove_remote_agent(remote)
                raise PeerMetadataError(f"metadata belongs to agent {remote!r}", who)
            self._peers[remote] = md
        return self._open(remote)

    def _fetch(self, remote: str, endpoint: str) -> str:
        """Load `remote`'s metadata from its listen thread at `endpoint` (HOST:PORT)."""
        key = _FETCHED + endpoint.encode()
        if self._peers.get(remote) == key:
            return remote
        self._drop_peer(remote)  # a stale copy: the peer restarted or moved
        if self.metadata_port is None:
            raise TransportError(
                f"cannot fetch NIXL metadata from {endpoint}: this endpoint runs no listen thread "
                "(create it with listen_port)",
                remote,
            )
        host, port = split_host_port(endpoint, "metadata_endpoint")
        deadline = time.monotonic() + self._connect_timeout_s
        with self._lock:
            self._agent.fetch_remote_metadata(remote, host, port)
        self._peers[remote] = key  # from here on, a failure must remove what may still arrive
        while True:
            with self._lock:
                if self._agent.check_remote_metadata(remote):
                    break
            if time.monotonic() > deadline:
                self._drop_peer(remote)
                raise TransportError(
                    f"no NIXL metadata from the listen thread at {endpoint} within {self._connect_timeout_s:g} s",
                    remote,
                )
            time.sleep(0.01)
        return self._open(remote)

    def _open(self, remote: str) -> str:
        """Connect to a peer whose metadata is loaded."""
        with self._lock:
            try:
                self._agent.make_connection(remote)
                self._agent.send_notif(remote, _NOTIF + b"hello")  # wakes the seed's fast polling
            except Exception as e:
                self._drop_peer(remote)
                raise TransportError(f"cannot connect over NIXL: {e}", remote) from e
        return remote

    def _drop_peer(self, remote: str) -> None:
        self._push_md.pop(remote, None)
        if self._peers.pop(remote, None) is None:
            return
        with self._lock:
            try:
                self._agent.remove_remote_agent(remote)
            except Exception as e:
                log.debug("NIXL remove_remote_agent(%s) failed: %s", remote, e)

    def _read(self, peer: EndpointInfo, ops: Sequence[ReadOp], limits: ReadLimits) -> None:
        self._check_open()
        self._check_metadata(peer)

        def memory_kinds(op: ReadOp) -> tuple[bool, str]:
            return self._local_is_cuda(op.local_addr, op.size), op.remote_memory

        batches = plan_batches(ops, self._chunk_bytes, key=memory_kinds)
        if not batches:
            return
        cuda_op = next((op for b in batches if _kinds(b)[0] for op in b.ops), None)
        if cuda_op is not None:
            _current_device(cuda_op.local_device)
        remote = self._connect(peer)
        if self._pushes_from(remote, batches):
            slotted = plan_batches(ops, self._slot_bytes, key=memory_kinds)
            state = _ReadState(remote=remote, batches=slotted, limits=limits)
            asked: dict[str, tuple[Batch, int]] = {}
            try:
                self._run_pushed(state, asked)
            except BaseException:
                self._give_up(asked)
                self._drop_peer(remote)
                raise
            return
        state = _ReadState(remote=remote, batches=batches, limits=limits)
        try:
            self._run_batches(state)
        except BaseException:
            self._abort(state.inflight, state.remote)
            raise

    def _run_batches(self, read: _ReadState) -> None:
        last = len(read.batches) - 1
        while read.next <= last or read.inflight:
            read.check_alive()
            # The last request carries the "done" notification, so post it only after the rest:
            # a seed may treat that notification as "this reader no longer needs me".
            while (
                read.next <= last
                and len(read.inflight) < self._max_inflight
                and (read.next < last or not read.inflight)
            ):
                # Only the last request of a reader's last read lets the seed stop polling fast.
                notif = _NOTIF + (b"done:" if read.next == last and read.limits.last else b"xfer:") + read.tag
                batch = read.batches[read.next]
                read.inflight.append((self._post(read.remote, batch, notif), batch.nbytes))
                read.next += 1
            done: list[int] = []
            with self._lock:
                pending = []
                for h, nbytes in read.inflight:
                    if self._check(read.remote, h) == "DONE":
                        h.release()
                        done.append(nbytes)
                    else:
                        pending.append((h, nbytes))
                read.inflight[:] = pending
            if read.limits.progress is not None:
                for nbytes in done:  # one call per request, outside the lock
                    read.limits.progress(nbytes)
            if not done:
                time.sleep(0)  # let the serving thread take the lock between polls

    def _post(self, remote: str, batch: Batch, notif: bytes) -> Any:
        local_cuda, remote_mem = _kinds(batch)
        local = np.array([(op.local_addr, op.size, op.local_device) for op in batch.ops], dtype=np.uint64)
        far = np.array([(op.remote_addr, op.size, op.remote_device) for op in batch.ops], dtype=np.uint64)
        with self._lock:
            try:
                h = self._agent.initialize_xfer(
                    "READ",
                    self._nb.nixlXferDList(self._mem(local_cuda), local),
                    self._nb.nixlXferDList(self._mem(remote_mem == "cuda"), far),
                    remote,
                    notif,
                )
            except Exception as e:
                raise TransportError(f"NIXL could not prepare a READ of {batch.nbytes} bytes: {e}", remote) from e
            try:
                state = self._agent.transfer(h)
            except Exception as e:
                self._release(h)
                raise TransportError(f"NIXL READ failed: {e}", remote) from e
        if state == "ERR":
            self._release(h)
            raise TransportError("NIXL READ failed to post", remote)
        return h

    def _check(self, remote: str, h: Any) -> str:
        try:
            state = self._agent.check_xfer_state(h)
        except Exception as e:  # e.g. nixlRemoteDisconnectError when the seed died
            raise TransportError(f"NIXL READ failed: {type(e).__name__}: {e}", remote) from e
        if state == "ERR":
            raise TransportError("NIXL READ failed", remote)
        return state

    def _release(self, h: Any) -> None:
        with self._lock:
            try:
                h.release()
            except Exception as e:  # an active request that cannot be cancelled; NIXL keeps it
                log.debug("NIXL release of a transfer handle failed: %s", e)

    def _abort(self, inflight: list[tuple[Any, int]], remote: str) -> None:
        for h, _ in inflight:
            self._release(h)
        inflight.clear()
        self._drop_peer(remote)

    # --- lifecycle --------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise TransportError(f"NIXL endpoint {self.name!r} is closed")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._serve_thread is not None:
            self._serve_thread.join(timeout=5)
        for remote in list(self._peers):
            self._drop_peer(remote)
        for name in self._users.names():
            self._users.forget(name)
        self._ranges = []
        if self._staging is not None and self._slots.quarantined:
            _RETAINED.append(self._staging)  # a server that stopped answering may still write there
        with self._lock:
            self._agent = None  # the agent's destructor releases UCX; must run before exit
