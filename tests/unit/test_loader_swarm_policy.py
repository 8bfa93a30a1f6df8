"""The fan-out side of the part policy: sources still loading, rarest first, origins left to spare."""

from __future__ import annotations

import pytest

from peerload.loader.schedule import PartScheduler
from peerload.parts import decode_held, encode_held
from peerload.seed.availability import PartAvailability


def test_each_load_has_its_own_part_order():
    a, b = PartScheduler([1] * 64, shuffle=1), PartScheduler([1] * 64, shuffle=2)
    a.add_sources(["seed"])
    b.add_sources(["seed"])
    assert sorted(a.sources["seed"].queue) == list(range(64))
    assert list(a.sources["seed"].queue) != list(b.sources["seed"].queue)
    assert PartScheduler([1] * 64, shuffle=1).order == a.order  # deterministic
    assert PartScheduler([1] * 4).order == [0, 1, 2, 3]


def test_a_loading_source_is_given_only_parts_it_holds_and_more_as_it_grows():
    s = PartScheduler([1] * 4, max_reading=4)
    s.add_sources(["peer"], partial={"peer": {2}})
    assert s.next_for("peer") == 2
    assert s.next_for("peer") is None and s.waiting_is_useful()  # it may grow
    s.set_holdings("peer", {0, 2, 3})
    assert {s.next_for("peer"), s.next_for("peer")} == {0, 3}
    s.set_holdings("peer", None)  # complete now
    assert s.next_for("peer") == 1


def test_rarest_first_among_the_parts_a_source_holds():
    s = PartScheduler([1] * 4, max_reading=4)
    s.add_sources(["a", "b", "c"], partial={"a": {0, 1, 2}, "b": {0, 1}, "c": {0}})
    # part 2 only a holds, 1 two sources, 0 all three
    assert [s.next_for("a"), s.next_for("a"), s.next_for("a")] == [2, 1, 0]


def test_an_origin_leaves_parts_that_loading_sources_hold_or_are_reading():
    s = PartScheduler([1] * 6, max_reading=6)
    s.add_sources(["seed"])
    s.add_sources(["peer"], partial={"peer": {0, 1}})
    s.set_holdings("peer", {0, 1}, pending={2})
    assert [s.next_for("seed") for _ in range(4)] == [3, 4, 5, None]
    assert s.next_for("peer") in (0, 1)


def test_a_dropped_loading_source_hands_its_parts_back_to_the_origin():
    s = PartScheduler([1] * 3, max_reading=3)
    s.add_sources(["seed"])
    s.add_sources(["peer"], partial={"peer": {0, 1, 2}})
    assert s.next_for("seed") is None  # everything is the peer's to serve
    assert s.next_for("peer") == 0
    s.drop("peer")  # died mid-part
    assert s.partial_holders == [0, 0, 0] and s.restarted_bytes == 1
    assert [s.next_for("seed") for _ in range(3)] == [0, 1, 2]


def test_without_loading_sources_nothing_changes():
    plain, swarm = PartScheduler([1] * 6), PartScheduler([1] * 6)
    plain.add_sources(["a", "b"])
    swarm.add_sources(["a", "b"], partial={})
    assert [plain.next_for("a"), plain.next_for("b")] == [swarm.next_for("a"), swarm.next_for("b")] == [0, 3]


def test_only_loading_sources_that_hold_nothing_new_strand_nothing_while_they_live():
    s = PartScheduler([1] * 2)
    s.add_sources(["peer"], partial={"peer": set()})
    assert s.next_for("peer") is None and s.waiting_is_useful() and not s.complete_alive()
    s.drop("peer")
    assert s.stranded() and not s.waiting_is_useful()


@pytest.mark.parametrize("held", [set(), {0}, {7, 8}, set(range(17))])
def test_bitmap_round_trip(held):
    assert decode_held(encode_held(held, 17), 17) == held
    assert len(encode_held(held, 17)) == 3


def test_bitmap_refuses_parts_outside_the_plan():
    with pytest.raises(ValueError, match="outside"):
        encode_held([17], 17)


def test_availability_versions_and_pending():
    a = PartAvailability(4)
    a.pending_from(lambda: {1, 2})
    a.mark(2)
    a.mark(2)
    snap = a.snapshot()
    assert snap.version == 1 and not snap.complete
    assert decode_held(snap.bitmap, 4) == {2} and decode_held(snap.pending, 4) == {1}
    for i in range(4):
        a.mark(i)
    assert a.snapshot().complete
    a.clear()
    assert a.held() == 0 and a.snapshot().version == 5
    with pytest.raises(ValueError):
        a.mark(4)
