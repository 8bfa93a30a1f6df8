"""The source pool of a load: hands sources out once, replaces dropped ones, never handshakes under its lock.

A fake coordinator client lists sources and a fake handshake stands in for the RPCs to them (no
seed runs here); the pool's own books and threading are what is tested.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from peerload.client import SourceRef, SourceStatus
from peerload.errors import CoordinatorUnavailable, LayoutMismatch, LeaseRefused
from peerload.identity import SourceIdentity
from peerload.loader.handshake import MxPlan
from peerload.loader.sources import SourcePool
from peerload.loader.striping import PeerPlan, SourceStats

IDENTITY = SourceIdentity(model_name="pool-test")
ME = "me"
HANG_S = 60  # only a hang detector: every wait below returns as soon as its state is reached


def ref(worker_id: str, load: float = 0.0) -> SourceRef:
    return SourceRef("id", worker_id, IDENTITY.model_name, 0, "cpu", 0, {}, source_load=load)


class FakeClient:
    """Lists READY and INITIALIZING sources as the coordinator would; can be made to fail."""

    def __init__(self) -> None:
        self.listed: dict[SourceStatus, list[SourceRef]] = {SourceStatus.READY: [], SourceStatus.INITIALIZING: []}
        self.down = False

    def list_sources(self, identity: SourceIdentity, *, status: SourceStatus, worker_rank: int) -> list[SourceRef]:
        assert identity == IDENTITY and worker_rank == 0
        if self.down:
            raise CoordinatorUnavailable("ListSources", "UNAVAILABLE", "connection refused")
        return list(self.listed[status])


class FakeSeed:
    def __init__(self) -> None:
        self.released: list[str] = []
        self.closed = 0

    def release_lease(self, lease: str, bytes_read: int = 0, parts_read: int = 0) -> bool:
        self.released.append(lease)
        return True

    def close(self) -> None:
        self.closed += 1


def plan(worker_id: str) -> PeerPlan:
    return PeerPlan(worker_id, None, None, FakeSeed(), f"lease-{worker_id}", SourceStats(worker_id, "nixl"))  # type: ignore[arg-type]


class FakeHandshake:
    """Answers per worker id: a plan, or an exception to raise; counts and records every call."""

    def __init__(self, answers: dict[str, object] | None = None) -> None:
        self.answers = answers or {}
        self.calls: list[tuple[str, PeerPlan | None]] = []
        self.hooks: dict[str, Callable[[], None]] = {}  # run inside the handshake of that source
        self._lock = threading.Lock()

    def __call__(self, source: SourceRef, parts_of: PeerPlan | None) -> PeerPlan | MxPlan:
        with self._lock:
            self.calls.append((source.worker_id, parts_of))
        if source.worker_id in self.hooks:
            self.hooks[source.worker_id]()
        answer = self.answers.get(source.worker_id) or plan(source.worker_id)
        if isinstance(answer, BaseException):
            raise answer
        assert isinstance(answer, (PeerPlan, MxPlan))
        return answer

    def asked(self) -> list[str]:
        return [name for name, _ in self.calls]


def make_pool(handshake: FakeHandshake, client: FakeClient | None = None) -> tuple[SourcePool, list[str]]:
    attempts: list[str] = []
    pool = SourcePool(client or FakeClient(), IDENTITY, 0, ME, handshake, attempts.append)  # type: ignore[arg-type]
    return pool, attempts


def test_offered_sources_are_handed_out_in_order_each_once_refusals_recorded():
    handshake = FakeHandshake({"b": LayoutMismatch(["shape differs"], "b")})
    pool, attempts = make_pool(handshake)
    pool.offer([ref("a"), ref("b"), ref(ME), ref("c"), ref("a")])
    first, second = pool.next(), pool.next()
    assert isinstance(first, PeerPlan) and first.worker_id == "a"
    assert isinstance(second, PeerPlan) and second.worker_id == "c"
    assert pool.next() is None  # spent: "a" again and this load itself are never asked
    assert handshake.asked() == ["a", "b", "c"]
    assert attempts == ["source b: LayoutMismatch: layout mismatch of source b: shape differs"]
    assert [p.worker_id for p in pool.used()] == ["a", "c"]
    assert pool.tried() == {ME, "a", "b", "c"}
    assert not pool.busy


def test_a_handshake_runs_outside_the_lock_so_a_replacement_never_waits_behind_it():
    handshake = FakeHandshake()
    entered, let_go = threading.Event(), threading.Event()

    def slow() -> None:
        entered.set()
        assert let_go.wait(HANG_S)

    handshake.hooks["slow"] = slow
    pool, _ = make_pool(handshake)
    pool.offer([ref("slow"), ref("spare")])
    got: dict[str, object] = {}
    stuck = threading.Thread(target=lambda: got.update(slow=pool.next()))
    stuck.start()
    assert entered.wait(HANG_S)  # the slow handshake is under way on the other thread
    replacing = threading.Thread(target=lambda: got.update(spare=pool.next()))
    replacing.start()
    replacing.join(HANG_S)
    try:
        assert not replacing.is_alive(), "the replacement waited behind another thread's handshake"
        assert isinstance(got["spare"], PeerPlan) and got["spare"].worker_id == "spare"
        assert "slow" in pool.tried() and pool.dropped_sources() == {}  # the pool answered while it ran
    finally:
        let_go.set()
        stuck.join(HANG_S)
    assert isinstance(got["slow"], PeerPlan) and got["slow"].worker_id == "slow"
    assert sorted(handshake.asked()) == ["slow", "spare"]


def test_threads_asking_at_once_never_handshake_a_source_twice():
    handshake = FakeHandshake()
    names = [f"s{i}" for i in range(40)]
    pool, _ = make_pool(handshake)
    pool.offer([ref(n) for n in names])
    start = threading.Barrier(8)
    got: list[str] = []
    lock = threading.Lock()

    def reader() -> None:
        start.wait(HANG_S)
        while (found := pool.next()) is not None:
            with lock:
                got.append(found.worker_id)

    threads = [threading.Thread(target=reader) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(HANG_S)
    assert sorted(got) == sorted(names) and sorted(handshake.asked()) == sorted(names)


def test_a_source_at_its_reader_cap_may_be_asked_again_a_closing_one_not():
    full, closing = LeaseRefused("at its cap of 2 readers", closing=False), LeaseRefused("closing", closing=True)
    handshake = FakeHandshake({"full": full, "closing": closing})
    pool, attempts = make_pool(handshake)
    pool.offer([ref("full"), ref("closing")])
    assert pool.next() is None and pool.busy
    assert pool.tried() == {ME, "closing"}
    del handshake.answers["full"]  # a reader left: the next look finds a slot
    del handshake.answers["closing"]
    found = pool.first_of([ref("closing"), ref("full")])
    assert isinstance(found, PeerPlan) and found.worker_id == "full"
    assert handshake.asked() == ["full", "closing", "full"]
    assert len(attempts) == 2


def test_sources_that_appear_join_up_to_the_room_left_ready_first():
    client = FakeClient()
    handshake = FakeHandshake({"mx": MxPlan("mx", None, SourceStats("mx", "nixl"))})  # type: ignore[arg-type]
    pool, _ = make_pool(handshake, client)
    pool.offer([ref("first")])
    first = pool.next()
    assert isinstance(first, PeerPlan)
    client.listed[SourceStatus.READY] = [ref("first"), ref(ME), ref("mx"), ref("ready", load=1.0)]
    client.listed[SourceStatus.INITIALIZING] = [ref("loading-2", load=2.0), ref("loading-1")]
    assert [r.worker_id for r in pool.untried()][-2:] == ["loading-1", "loading-2"]
    joined = pool.join(2, first)
    assert [p.worker_id for p in joined] == ["ready", "loading-1"]  # the official seed is passed over
    assert all(parts_of is first for name, parts_of in handshake.calls if name != "first")
    assert [r.worker_id for r in pool.untried()] == ["loading-2"]
    client.down = True
    assert pool.untried() == [] and pool.join(1, first) == []


def test_a_dropped_source_is_recorded_never_handed_out_again_and_a_spare_takes_its_place():
    handshake = FakeHandshake()
    pool, attempts = make_pool(handshake)
    pool.offer([ref("a"), ref("spare")])
    a = pool.next_peer(plan("x"))
    assert a is not None
    pool.dropped("a", TimeoutError("part 3 took longer than 10 s"))
    assert attempts == ["source a: TimeoutError: part 3 took longer than 10 s"]
    assert pool.dropped_sources() == {"a": "TimeoutError: part 3 took longer than 10 s"}
    spare = pool.next_peer(a)
    assert spare is not None and spare.worker_id == "spare"
    assert pool.first_of([ref("a")]) is None
    assert handshake.asked() == ["a", "spare"]


def test_release_gives_back_every_lease_once():
    pool, _ = make_pool(FakeHandshake())
    pool.offer([ref("a"), ref("b")])
    plans = [pool.next(), pool.next()]
    assert all(isinstance(p, PeerPlan) for p in plans)
    plans[0].release()  # type: ignore[union-attr]  # its reader gave it back already
    pool.release()
    pool.release()
    for p in plans:
        assert p.seed.released == [f"lease-{p.worker_id}"]  # type: ignore[union-attr]


def test_an_official_seed_is_handed_out_but_holds_no_lease_of_the_pool():
    official = MxPlan("mx", None, SourceStats("mx", "nixl"))  # type: ignore[arg-type]
    pool, _ = make_pool(FakeHandshake({"mx": official}))
    pool.offer([ref("mx")])
    assert pool.next() is official
    assert pool.used() == []
