"""The striping policy, driven by hand: dealing, stealing, bounds, dropping and re-queueing."""

from __future__ import annotations

import pytest

from peerload.loader.schedule import PartScheduler, PartState


def drain(s: PartScheduler, order: list[str]) -> dict[str, list[int]]:
    """Every source in `order` takes and finishes one part per round until none is left."""
    got: dict[str, list[int]] = {n: [] for n in order}
    while not s.finished:
        progressed = False
        for name in order:
            part = s.next_for(name)
            if part is not None:
                s.done(name, part)
                got[name].append(part)
                progressed = True
        assert progressed, "no source could take a part although some are left"
    return got


@pytest.mark.parametrize(
    ("sizes", "sources", "blocks"),
    [
        ([1] * 8, ["a", "b"], {"a": [0, 1, 2, 3], "b": [4, 5, 6, 7]}),
        ([1] * 9, ["a", "b", "c"], {"a": [0, 1, 2], "b": [3, 4, 5], "c": [6, 7, 8]}),
        # dealt by bytes, not by count: one big part is a share of its own
        ([6, 1, 1, 1, 1, 1, 1], ["a", "b"], {"a": [0], "b": [1, 2, 3, 4, 5, 6]}),
        ([1, 1], ["a", "b", "c", "d"], {"a": [0], "b": [1], "c": [], "d": []}),
    ],
)
def test_contiguous_blocks_by_bytes(sizes, sources, blocks):
    s = PartScheduler(sizes)
    s.add_sources(sources)
    assert {n: list(s.sources[n].queue) for n in sources} == blocks


def test_each_source_reads_its_block_front_to_back():
    s = PartScheduler([1] * 6)
    s.add_sources(["a", "b"])
    assert drain(s, ["a", "b"]) == {"a": [0, 1, 2], "b": [3, 4, 5]}
    assert s.restarted_bytes == 0 and s.missing() == []


def test_a_fast_source_steals_from_the_back_of_the_fullest_block():
    s = PartScheduler([1] * 9)
    s.add_sources(["fast", "slow1", "slow2"])  # 0-2, 3-5, 6-8
    taken = []
    while (part := s.next_for("fast")) is not None:
        s.done("fast", part)
        taken.append(part)
    # its own block, then from the back of whichever block holds most bytes at that moment
    assert taken[:3] == [0, 1, 2]
    assert set(taken[3:]) == {3, 4, 5, 6, 7, 8} and taken[3] == 5 and taken[4] == 8
    assert s.finished and s.sources["slow1"].delivered == []


def test_bound_on_parts_in_flight_per_source():
    s = PartScheduler([1] * 4, max_reading=2)
    s.add_sources(["a"])
    assert s.next_for("a") == 0 and s.next_for("a") == 1
    assert s.next_for("a") is None  # at its bound
    s.done("a", 0)
    assert s.next_for("a") == 2


def test_dropped_source_parts_are_served_first_by_the_others():
    s = PartScheduler([10] * 6)
    s.add_sources(["a", "b"])  # a: 0-2, b: 3-5
    assert s.next_for("a") == 0
    s.done("a", 0)
    assert s.next_for("b") == 3  # b dies while reading part 3
    assert s.drop("b") == [3, 4, 5]
    assert s.restarted_bytes == 10  # only the part it was reading counts as read twice
    assert s.alive == ["a"] and s.state[3] is PartState.TODO
    assert s.next_for("a") == 3
    s.done("a", 3)
    assert drain(s, ["a"])["a"] == [4, 5, 1, 2]
    assert s.sources["a"].delivered_bytes == 60


def test_failed_part_is_re_read_first_and_counted():
    s = PartScheduler([5, 5])
    s.add_sources(["a"])
    assert s.next_for("a") == 0
    s.failed("a", 0)
    assert s.restarted_bytes == 5 and s.next_for("a") == 0


def test_waiting_and_stranded():
    s = PartScheduler([1, 1])
    s.add_sources(["a", "b"])
    assert s.next_for("a") == 0
    s.done("a", 0)
    assert s.next_for("b") == 1
    # a has nothing to take, but b's read may fail: waiting is useful
    assert s.next_for("a") is None and s.waiting_is_useful()
    s.drop("a")
    s.drop("b")
    assert s.stranded() and s.missing() == [1] and not s.waiting_is_useful()


def test_a_source_added_later_steals():
    s = PartScheduler([1] * 4)
    s.add_sources(["a"])
    s.drop("a")  # everything back in the pool
    s.add_sources(["b", "c"])
    assert list(s.sources["b"].queue) == [0, 1] and list(s.sources["c"].queue) == [2, 3]
    s.add_sources(["d"])  # the pool is empty: d starts with nothing and steals
    assert s.next_for("d") == 1


def test_max_reading_must_be_positive():
    with pytest.raises(ValueError):
        PartScheduler([1], max_reading=0)


def test_parts_read_before_a_drop_are_kept_once_verified():
    s = PartScheduler([10] * 4, max_reading=2)
    s.add_sources(["a", "b"])  # a: 0-1, b: 2-3
    assert s.next_for("a") == 0
    s.read_done("a", 0)  # bytes in place, checksum pending
    assert s.next_for("a") == 1  # the next read overlaps the check
    assert s.next_for("a") is None  # at its bound: one read, one check
    assert s.drop("a") == [1]  # only the part being read goes back
    assert s.restarted_bytes == 10 and s.waiting_is_useful()
    s.done("a", 0)  # the check passed after the drop: kept
    assert s.state[0] is PartState.DONE and s.sources["a"].delivered == [0]
    assert s.next_for("b") == 1


def test_a_part_failing_its_check_is_read_again():
    s = PartScheduler([10, 10], max_reading=2)
    s.add_sources(["a"])
    assert s.next_for("a") == 0
    s.read_done("a", 0)
    s.failed("a", 0)
    assert s.restarted_bytes == 10 and s.pool[0] == 0
