"""The resharding plan: which bytes of which source land where in a target of another layout (pure).

Input: the target's tensors and every source's tensors, each with the boxes it holds
(`peerload.boxes`). For every box the target needs, the plan intersects it with the sources'
boxes of the same checkpoint tensor and turns each intersection into runs contiguous on both
sides. It is checked before any byte moves: every destination byte covered exactly once, dtypes
equal, full shapes equal, every tensor described by boxes (a seed of a quantized or unknown
layout publishes none, a vLLM seed none for what its post-processing repacked, saying why), and
the boxes of one layout either identical (replicas) or disjoint. Anything else raises
`LayoutMismatch` naming the tensors. Padding boxes (`boxes.PADDING`) are never read: a source's
are skipped, and the target's count as covered, since its engine fills them itself.

Runs are cut into parts (`Part`, in destination coordinates, so a storage fill can cover exactly
the parts no peer delivered); each part is read from one source, and a part of replicated boxes
may be read from any of the sources holding them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from math import prod
from typing import NamedTuple

import numpy as np

from peerload.boxes import Box, intersect, itemsize, tile_problem
from peerload.errors import ConfigError, LayoutMismatch
from peerload.manifest import TensorEntry
from peerload.parts import PART_ALIGN, Part, Piece

MAX_PROBLEMS = 20  # problems collected before the plan gives up


class Copy(NamedTuple):
    """Where one run's bytes are at a source: `offset` bytes into its region `region`."""

    source: str
    region: str
    offset: int


class Run(NamedTuple):
    """`size` bytes at `offset` of the target's region `region`, held by `copies` (the first is planned)."""

    region: str
    offset: int
    size: int
    copies: tuple[Copy, ...]

    @property
    def holders(self) -> tuple[str, ...]:
        return tuple(sorted(c.source for c in self.copies))


@dataclass
class ReshardPlan:
    """Every destination byte the sources deliver, as runs; `parts()` cuts them for reading."""

    runs: list[Run]
    sources: list[str]  # in preference order
    part_copies: dict[int, dict[str, list[tuple[str, int, int]]]] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(r.size for r in self.runs)

    def bytes_from(self) -> dict[str, int]:
        """Planned bytes per source (its first copy)."""
        out = {s: 0 for s in self.sources}
        for run in self.runs:
            out[run.copies[0].source] += run.size
        return out

    def parts(self, part_bytes: int, max_pieces: int = 8192) -> list[Part]:
        """Runs cut into parts of about `part_bytes` (and at most `max_pieces` pieces), each part's
        runs held by the same sources.

        `part_copies[i][source]` lists (region, offset, size) at `source` for part i's pieces, in order.
        """
        if part_bytes < PART_ALIGN:
            raise ConfigError(f"part_bytes must be >= {PART_ALIGN}, got {part_bytes}")
        groups: dict[tuple[str, ...], list[Run]] = {}
        for run in self.runs:
            groups.setdefault(run.holders, []).append(run)
        parts: list[Part] = []
        self.part_copies = {}
        for runs in groups.values():
            pieces: list[Piece] = []
            copies: dict[str, list[tuple[str, int, int]]] = {}
            filled = 0
            for run in runs:
                at = 0
                while at < run.size:
                    size = min(run.size - at, part_bytes - filled)
                    pieces.append(Piece(run.region, run.offset + at, size))
                    for c in run.copies:
                        copies.setdefault(c.source, []).append((c.region, c.offset + at, size))
                    at += size
                    filled += size
                    if filled >= part_bytes or len(pieces) >= max_pieces:
                        self._close(parts, pieces, copies)
                        pieces, copies, filled = [], {}, 0
            if pieces:
                self._close(parts, pieces, copies)
        return parts

    def _close(self, parts: list[Part], pieces: list[Piece], copies: dict[str, list[tuple[str, int, int]]]) -> None:
        self.part_copies[len(parts)] = copies
        parts.append(Part(len(parts), tuple(pieces)))

    def holds(self, source: str) -> set[int]:
        """The parts `source` can serve (after `parts()`)."""
        return {i for i, copies in self.part_copies.items() if source in copies}


class Read(NamedTuple):
    """One READ of a part from one source: `size` bytes at `offset` of its region `region`, which land
    in the part's pieces `first` .. `last - 1` (one after another); `staged` when those pieces are
    not contiguous here (the bytes go to a staging buffer and are scattered locally)."""

    region: str
    offset: int
    size: int
    first: int
    last: int
    staged: bool


def reads_of(pieces: Sequence[Piece], copies: Sequence[tuple[str, int, int]]) -> list[Read]:
    """A part's pieces and their (region, offset, size) at one source, as few READs as possible.

    Consecutive pieces whose source ranges follow each other are one READ: read straight into
    place when the pieces follow each other here too, else into a staging buffer and scattered
    (a row-parallel box a source holds whole, read by a target that holds it strided: TP 2 -> 1).
    The bytes read, and their order, are the same as one READ per piece.
    """
    out: list[Read] = []
    first = 0
    n = len(pieces)
    while first < n:
        region, offset, size = copies[first]
        last = first + 1
        here = pieces[first].offset + pieces[first].size
        contiguous = True
        while last < n and copies[last][0] == region and copies[last][1] == offset + size:
            contiguous = contiguous and pieces[last].region == pieces[first].region and pieces[last].offset == here
            here = pieces[last].offset + pieces[last].size
            size += copies[last][2]
            last += 1
        out.append(Read(region, offset, size, first, last, staged=not contiguous))
        first = last
    return out


def _strides(shape: Sequence[int]) -> tuple[int, ...]:
    out = [1] * len(shape)
    for d in range(len(shape) - 2, -1, -1):
        out[d] = out[d + 1] * shape[d + 1]
    return tuple(out)


def box_runs(start: Sequence[int], stop: Sequence[int], src: Box, dst: Box, item: int) -> list[tuple[int, int, int]]:
    """(source byte, destination byte, bytes) runs of elements [start, stop), inside both boxes' buffers.

    Runs are as long as both sides allow: the innermost dimensions that `[start, stop)` covers
    whole in both boxes are merged into one run.
    """
    nd = len(start)
    if nd == 0:
        return [(src.offset, dst.offset, item)]
    ext = [b - a for a, b in zip(start, stop, strict=True)]
    k = nd - 1
    while k > 0 and ext[k] == src.shape[k] == dst.shape[k]:
        k -= 1
    run = prod(ext[k:]) * item
    s_strides, d_strides = _strides(src.shape), _strides(dst.shape)
    # The first run's offsets, then each outer dimension adds its stride (an arithmetic grid).
    s0 = src.offset + item * sum((a - b) * st for a, b, st in zip(start, src.start, s_strides, strict=True))
    t0 = dst.offset + item * sum((a - b) * st for a, b, st in zip(start, dst.start, d_strides, strict=True))
    s_off = np.array([s0], dtype=np.int64)
    t_off = np.array([t0], dtype=np.int64)
    for d in range(k):
        steps = np.arange(ext[d], dtype=np.int64)
        s_off = (s_off[:, None] + steps[None, :] * (s_strides[d] * item)).reshape(-1)
        t_off = (t_off[:, None] + steps[None, :] * (d_strides[d] * item)).reshape(-1)
    return [(int(a), int(b), run) for a, b in zip(s_off.tolist(), t_off.tolist(), strict=True)]


def _subtract(
    box: tuple[tuple[int, ...], tuple[int, ...]], cut: tuple[tuple[int, ...], tuple[int, ...]]
) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """`box` minus `cut` (which lies inside it), as disjoint boxes."""
    start, stop = list(box[0]), list(box[1])
    out = []
    for d in range(len(start)):
        if start[d] < cut[0][d]:
            out.append((tuple(start), (*stop[:d], cut[0][d], *stop[d + 1 :])))
            start[d] = cut[0][d]
        if cut[1][d] < stop[d]:
            out.append(((*start[:d], cut[1][d], *start[d + 1 :]), tuple(stop)))
            stop[d] = cut[1][d]
    return out


@dataclass(frozen=True)
class _Held:
    """One box a source holds, with what it takes to address it there."""

    source: str
    entry: TensorEntry
    box: Box
    base: int  # the entry's first byte in its region


def _base(entry: TensorEntry) -> int:
    return entry.storage_offset * itemsize(entry.dtype)


def _contiguous(entry: TensorEntry) -> bool:
    return tuple(entry.stride) == _strides(entry.shape) or entry.nbytes == 0


def _check_entries(who: str, entries: Sequence[TensorEntry], problems: list[str]) -> None:
    for e in entries:
        if not e.boxes:
            why = e.no_layout or "quantized, or an engine of unknown layout"
            problems.append(f"{e.name}: {who} publishes no layout for it ({why})")
        elif not _contiguous(e):
            problems.append(
                f"{e.name}: {who} holds it non-contiguous (stride {list(e.stride)}); it cannot be resharded"
            )
        else:
            problem = tile_problem(e.name, e.boxes, e.nbytes, itemsize(e.dtype))
            if problem:
                problems.append(f"{problem} ({who})")


def _check_consistent(held: Mapping[str, list[_Held]], problems: list[str]) -> None:
    """The sources' boxes of one tensor are identical (replicas) or disjoint, never partly overlapping."""
    for tensor, boxes in held.items():
        distinct = list({(h.box.start, h.box.stop): h for h in boxes}.values())
        for i, a in enumerate(distinct):
            for b in distinct[i + 1 :]:
                if intersect(a.box, b.box) is not None:
                    spans = f"{a.source}: {_span(a.box)}, {b.source}: {_span(b.box)}"
                    problems.append(f"{tensor}: source boxes overlap partly ({spans})")
                    return


def _span(box: Box) -> str:
    return " x ".join(f"[{a}:{b})" for a, b in zip(box.start, box.stop, strict=True)) or "scalar"


def plan(target: Sequence[TensorEntry], sources: Mapping[str, Sequence[TensorEntry]]) -> ReshardPlan:
    """The runs that fill every box of `target` from `sources` (worker -> its tensors, best first).

    Raises:
        LayoutMismatch: naming the tensors that cannot be planned (gap, overlap, dtype, shape,
            no layout published); nothing has moved yet.
    """
    problems: list[str] = []
    _check_entries("the target", target, problems)
    held: dict[str, list[_Held]] = {}
    for source, entries in sources.items():
        _check_entries(f"source {source}", entries, problems)
        for e in entries:
            for box in e.boxes:
                if box.is_padding or not box.numel:
                    continue  # bytes the source's engine filled itself, or none: nothing to read there
                held.setdefault(box.tensor, []).append(_Held(source, e, box, _base(e)))
    if problems:
        raise LayoutMismatch(problems[:MAX_PROBLEMS], source="resharding plan")
    _check_consistent(held, problems)
    order = list(sources)
    runs: list[Run] = []
    for t_index, entry in enumerate(target):
        for box in entry.boxes:
            if len(problems) >= MAX_PROBLEMS:
                break
            if box.is_padding or not box.numel:
                continue  # the target's engine fills its own padding (the vLLM loader zeroes it); empty: nothing
            runs.extend(_plan_box(entry, box, held.get(box.tensor, []), order, t_index, problems))
    if problems:
        raise LayoutMismatch(problems[:MAX_PROBLEMS], source="resharding plan")
    runs = _coalesce(runs)
    coverage = coverage_problems(target, runs)
    if coverage:
        raise LayoutMismatch(coverage[:MAX_PROBLEMS], source="resharding plan")
    return ReshardPlan(runs, order)


def _plan_box(
    entry: TensorEntry, box: Box, candidates: list[_Held], order: list[str], rotate: int, problems: list[str]
) -> list[Run]:
    """Runs that fill one target box; problems get a line naming the tensor when it cannot be filled."""
    item = itemsize(entry.dtype)
    base = _base(entry)
    for h in candidates:
        if h.entry.dtype != entry.dtype:
            problems.append(f"{box.tensor}: dtype {h.entry.dtype} at source {h.source}, {entry.dtype} here")
            return []
        if h.box.full_shape != box.full_shape:
            problems.append(
                f"{box.tensor}: full shape {list(h.box.full_shape)} at source {h.source}, {list(box.full_shape)} here"
            )
            return []
    # Spread replicated boxes over their holders: the preferred source turns with the tensor.
    rank = {s: (i - rotate) % max(1, len(order)) for i, s in enumerate(order)}
    candidates = sorted(candidates, key=lambda h: (rank[h.source], h.box.start))
    uncovered = [(box.start, box.stop)]
    runs: list[Run] = []
    used: set[tuple[tuple[int, ...], tuple[int, ...]]] = set()
    for h in candidates:
        key = (h.box.start, h.box.stop)
        if key in used:
            continue  # a replica of a box already planned: it is an alternative copy, below
        rest = []
        for u in uncovered:
            hit = intersect(Box(box.tensor, box.full_shape, u[0], u[1]), h.box)
            if hit is None:
                rest.append(u)
                continue
            used.add(key)
            replicas = [(r.source, r.entry.region, r.base) for r in candidates if (r.box.start, r.box.stop) == key]
            runs.extend(
                Run(entry.region, base + d_off, size, tuple(Copy(w, reg, b + s_off) for w, reg, b in replicas))
                for s_off, d_off, size in box_runs(hit[0], hit[1], h.box, box, item)
            )
            rest.extend(_subtract(u, hit))
        uncovered = rest
    if uncovered:
        spans = ", ".join(_span(Box(box.tensor, box.full_shape, a, b)) for a, b in uncovered[:3])
        problems.append(f"{box.tensor}: no source holds {spans} (a gap in the sources' layout)")
    return runs


def _coalesce(runs: list[Run]) -> list[Run]:
    """Merge runs adjacent on both sides (and at every copy)."""
    out: list[Run] = []
    for run in sorted(runs, key=lambda r: (r.region, r.offset)):
        if out:
            last = out[-1]
            if (
                last.region == run.region
                and last.offset + last.size == run.offset
                and len(last.copies) == len(run.copies)
                and all(
                    a.source == b.source and a.region == b.region and a.offset + last.size == b.offset
                    for a, b in zip(last.copies, run.copies, strict=True)
                )
            ):
                out[-1] = Run(last.region, last.offset, last.size + run.size, last.copies)
                continue
        out.append(run)
    return out


def coverage_problems(target: Sequence[TensorEntry], runs: Sequence[Run]) -> list[str]:
    """Every destination byte of `target` covered exactly once by `runs` or by the target's own
    padding boxes (one line per tensor that is not)."""
    spans: dict[str, list[tuple[int, int]]] = {}
    for run in runs:
        spans.setdefault(run.region, []).append((run.offset, run.offset + run.size))
    for entry in target:
        for box in entry.boxes:
            if box.is_padding and box.numel:
                at = _base(entry) + box.offset
                spans.setdefault(entry.region, []).append((at, at + box.numel * itemsize(entry.dtype)))
    for s in spans.values():
        s.sort()
    problems = []
    for entry in target:
        lo = _base(entry)
        hi = lo + entry.nbytes
        inside = [(max(a, lo), min(b, hi)) for a, b in spans.get(entry.region, []) if a < hi and b > lo]
        at = lo
        for a, b in inside:
            if a < at:
                problems.append(f"{entry.name}: destination bytes [{a}, {min(at, b)}) are planned twice (overlap)")
                break
            if a > at:
                problems.append(f"{entry.name}: destination bytes [{at}, {a}) are planned from no source (gap)")
                break
            at = b
        else:
            if at < hi and entry.nbytes:
                problems.append(f"{entry.name}: destination bytes [{at}, {hi}) are planned from no source (gap)")
    return problems
