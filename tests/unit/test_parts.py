"""The part plan: table tests of how regions are cut and grouped."""

from __future__ import annotations

import pytest

from peerload.errors import ConfigError
from peerload.parts import PART_ALIGN, Piece, count_parts, plan_parts

K = PART_ALIGN


@pytest.mark.parametrize(
    ("regions", "part_bytes", "expected"),
    [
        # small regions are grouped until the next would overflow the part
        ([("a", K), ("b", K), ("c", K)], 2 * K, [[("a", 0, K), ("b", 0, K)], [("c", 0, K)]]),
        # a large region is cut into near-equal page-aligned parts
        ([("a", 4 * K)], 2 * K, [[("a", 0, 2 * K)], [("a", 2 * K, 2 * K)]]),
        ([("a", 5 * K)], 2 * K, [[("a", 0, 2 * K)], [("a", 2 * K, 2 * K)], [("a", 4 * K, K)]]),
        # a large region ends the group before it; zero-byte regions belong to no part
        (
            [("s", 10), ("z", 0), ("big", 3 * K), ("t", 7)],
            2 * K,
            [[("s", 0, 10)], [("big", 0, 2 * K)], [("big", 2 * K, K)], [("t", 0, 7)]],
        ),
        # a region of exactly part_bytes is one part
        ([("a", 2 * K), ("b", 1)], 2 * K, [[("a", 0, 2 * K)], [("b", 0, 1)]]),
        ([], K, []),
    ],
)
def test_plan_parts(regions, part_bytes, expected):
    plan = plan_parts(regions, part_bytes)
    assert [[(p.region, p.offset, p.size) for p in part.pieces] for part in plan] == expected
    assert [part.index for part in plan] == list(range(len(expected)))
    assert sum(part.nbytes for part in plan) == sum(size for _, size in regions)
    assert count_parts(regions, part_bytes) == len(expected)


def test_cuts_are_page_aligned_and_cover_the_region_exactly():
    size = 10 * K + 123
    plan = plan_parts([("a", size)], 3 * K)
    pieces = [p for part in plan for p in part.pieces]
    assert all(p.offset % K == 0 for p in pieces)
    assert [(p.offset, p.offset + p.size) for p in pieces][-1][1] == size
    assert all(a.offset + a.size == b.offset for a, b in zip(pieces, pieces[1:], strict=False))
    assert plan[0].regions == ["a"]


def test_same_input_same_plan():
    regions = [(f"r{i}", (i * 7919) % (5 * K) + 1) for i in range(50)]
    assert plan_parts(regions, 4 * K) == plan_parts(list(regions), 4 * K)
    assert Piece("a", 0, 1) == Piece("a", 0, 1)


def test_part_bytes_below_a_page_is_refused():
    with pytest.raises(ConfigError, match="part_bytes"):
        plan_parts([("a", 10)], 100)


def test_count_parts_matches_the_plan_and_needs_no_memory_for_huge_regions():
    for part_bytes in (K, 3 * K, 4 * K + 1, 64 * K):
        regions = [(f"r{i}", (i * 7919) % (9 * K) + (i % 3) * 17) for i in range(60)]
        assert count_parts(regions, part_bytes) == len(plan_parts(regions, part_bytes))
    # what a hostile manifest could claim: counted in arithmetic, not by making 2**48 parts
    assert count_parts([("a", 2**60)], K) == 2**60 // K
    with pytest.raises(ConfigError, match="part_bytes"):
        count_parts([("a", 10)], 100)
