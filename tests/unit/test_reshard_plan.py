"""The resharding plan (pure): every (tp_seed, tp_target) pair in {1, 2, 4} moves bytes bit-exact,
runs are contiguous on both sides, and a gap, an overlap or a dtype mismatch fails before any
byte moves, naming the tensor. Bytes are moved here by executing the plan on byte arrays."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from peerload.adapters.sharding import take
from peerload.boxes import Box, Heads, full_box, padding_box, tp_boxes, unit_interval
from peerload.errors import ConfigError, LayoutMismatch
from peerload.loader.reshard_load import merge_ranges, scatter
from peerload.manifest import TensorEntry
from peerload.parts import Piece
from peerload.reshard import ReshardPlan, box_runs, coverage_problems, plan, reads_of

HEADS = Heads(q_heads=8, kv_heads=2, head_dim=4)
HIDDEN = HEADS.q_heads * HEADS.head_dim  # 32
KV = HEADS.kv_heads * HEADS.head_dim  # 8
FFN = 16


def llama() -> dict[str, torch.Tensor]:
    shapes = {
        "model.embed_tokens.weight": (16, HIDDEN),
        "model.layers.0.self_attn.q_proj.weight": (HIDDEN, HIDDEN),
        "model.layers.0.self_attn.k_proj.weight": (KV, HIDDEN),
        "model.layers.0.self_attn.v_proj.weight": (KV, HIDDEN),
        "model.layers.0.self_attn.o_proj.weight": (HIDDEN, HIDDEN),
        "model.layers.0.mlp.gate_proj.weight": (FFN, HIDDEN),
        "model.layers.0.mlp.up_proj.weight": (FFN, HIDDEN),
        "model.layers.0.mlp.down_proj.weight": (HIDDEN, FFN),
        "model.layers.0.input_layernorm.weight": (HIDDEN,),
        "lm_head.weight": (16, HIDDEN),
    }
    gen = torch.Generator().manual_seed(0)
    return {n: torch.randn(s, generator=gen).to(torch.bfloat16) for n, s in shapes.items()}


def phi3() -> dict[str, torch.Tensor]:
    shapes = {
        "model.layers.0.self_attn.qkv_proj.weight": (HIDDEN + 2 * KV, HIDDEN),
        "model.layers.0.self_attn.o_proj.weight": (HIDDEN, HIDDEN),
        "model.layers.0.mlp.gate_up_proj.weight": (2 * FFN, HIDDEN),
        "model.layers.0.mlp.down_proj.weight": (HIDDEN, FFN),
        "model.norm.weight": (HIDDEN,),
    }
    gen = torch.Generator().manual_seed(1)
    return {n: torch.randn(s, generator=gen).to(torch.float32) for n, s in shapes.items()}


def rank_of(full: dict[str, torch.Tensor], tp: int, rank: int) -> tuple[list[TensorEntry], dict[str, bytearray]]:
    """One rank's entries (each tensor its own region) and region bytes."""
    entries, regions = [], {}
    for name, t in full.items():
        boxes = tp_boxes(name, t.shape, tp, rank, HEADS, t.element_size())
        local = take(t, boxes)
        entries.append(
            TensorEntry(
                name=name,
                shape=tuple(local.shape),
                stride=tuple(local.stride()),
                dtype=str(local.dtype),
                nbytes=local.numel() * local.element_size(),
                storage_offset=0,
                region=name,
                boxes=boxes,
            )
        )
        regions[name] = bytearray(local.view(torch.uint8).reshape(-1).numpy().tobytes())
    return entries, regions


def execute(p: ReshardPlan, sources: dict[str, dict[str, bytearray]], target: dict[str, bytearray]) -> None:
    for part in p.parts(4096):
        source = sorted(p.part_copies[part.index])[0]
        for piece, (region, offset, size) in zip(part.pieces, p.part_copies[part.index][source], strict=True):
            assert piece.size == size
            target[piece.region][piece.offset : piece.offset + size] = sources[source][region][offset : offset + size]


@pytest.mark.parametrize("family", [llama, phi3])
@pytest.mark.parametrize("tp_seed", [1, 2, 4])
@pytest.mark.parametrize("tp_target", [1, 2, 4])
def test_every_pair_moves_bytes_bit_exact(family, tp_seed: int, tp_target: int) -> None:
    full = family()
    seeds = {f"seed-r{r}": rank_of(full, tp_seed, r) for r in range(tp_seed)}
    for rank in range(tp_target):
        entries, expected = rank_of(full, tp_target, rank)
        p = plan(entries, {k: e for k, (e, _) in seeds.items()})
        got = {n: bytearray(len(b)) for n, b in expected.items()}
        execute(p, {k: r for k, (_, r) in seeds.items()}, got)
        assert got == expected
        assert p.nbytes == sum(len(b) for b in expected.values())  # each destination byte planned once


def test_tp2_to_1_reads_each_seed_half_and_runs_are_contiguous() -> None:
    full = llama()
    seeds = {f"s{r}": rank_of(full, 2, r)[0] for r in range(2)}
    entries, _ = rank_of(full, 1, 0)
    p = plan(entries, seeds)
    sharded = sum(t.numel() * 2 for n, t in full.items() if "norm" not in n)
    got = p.bytes_from()
    assert abs(got["s0"] - got["s1"]) <= full["model.layers.0.input_layernorm.weight"].numel() * 2
    assert sum(got.values()) >= sharded
    # column-parallel q_proj: one run per seed (whole rows); row-parallel o_proj: one run per row per seed
    q = [r for r in p.runs if r.region.endswith("q_proj.weight")]
    o = [r for r in p.runs if r.region.endswith("o_proj.weight")]
    assert len(q) == 2
    assert len(o) == 2 * HIDDEN


def execute_reads(p: ReshardPlan, sources: dict[str, dict[str, bytearray]], target: dict[str, torch.Tensor]) -> int:
    """The plan as the loader runs it: `reads_of` per part (staged ones scattered); the READs made."""
    made = 0
    for part in p.parts(4096):
        source = sorted(p.part_copies[part.index])[0]
        copies = p.part_copies[part.index][source]
        reads = reads_of(part.pieces, copies)
        # The bytes read are the same, in the same order, as one READ per piece (what the digest covers).
        assert [(r.region, r.offset, r.size) for r in reads] == merge_ranges(copies)
        for r in reads:
            data = torch.frombuffer(
                bytearray(sources[source][r.region][r.offset : r.offset + r.size]), dtype=torch.uint8
            )
            if r.staged:
                scatter(target, part.pieces[r.first : r.last], data)
            else:
                piece = part.pieces[r.first]
                target[piece.region][piece.offset : piece.offset + r.size] = data
        made += len(reads)
    return made


@pytest.mark.parametrize("family", [llama, phi3])
@pytest.mark.parametrize("tp_seed", [1, 2, 4])
@pytest.mark.parametrize("tp_target", [1, 2, 4])
def test_every_pair_bit_exact_with_merged_and_staged_reads(family, tp_seed: int, tp_target: int) -> None:
    full = family()
    seeds = {f"seed-r{r}": rank_of(full, tp_seed, r) for r in range(tp_seed)}
    for rank in range(tp_target):
        entries, expected = rank_of(full, tp_target, rank)
        p = plan(entries, {k: e for k, (e, _) in seeds.items()})
        got = {n: torch.zeros(len(b), dtype=torch.uint8) for n, b in expected.items()}
        execute_reads(p, {k: r for k, (_, r) in seeds.items()}, got)
        assert {n: bytearray(t.numpy().tobytes()) for n, t in got.items()} == expected


def test_tp2_to_1_row_parallel_box_is_one_staged_read_per_seed() -> None:
    full = llama()
    seeds = {f"s{r}": rank_of(full, 2, r)[0] for r in range(2)}
    entries, _ = rank_of(full, 1, 0)
    p = plan(entries, seeds)
    o = "model.layers.0.self_attn.o_proj.weight"
    parts = p.parts(1 << 20)  # every tensor in one part per seed
    reads = [
        r
        for part in parts
        for source, copies in p.part_copies[part.index].items()
        for r in reads_of(part.pieces, copies)
        if part.pieces[r.first].region == o
    ]
    assert len(reads) == 2 and all(r.staged for r in reads)  # not one READ per row (2 * HIDDEN)
    assert sum(r.size for r in reads) == full[o].numel() * 2


def test_scatter_of_uneven_pieces_copies_piece_by_piece() -> None:
    regions = {"a": torch.zeros(16, dtype=torch.uint8), "b": torch.zeros(8, dtype=torch.uint8)}
    pieces = [Piece("a", 1, 2), Piece("a", 8, 3), Piece("b", 4, 4)]
    scatter(regions, pieces, torch.arange(1, 10, dtype=torch.uint8))
    assert regions["a"].tolist() == [0, 1, 2, 0, 0, 0, 0, 0, 3, 4, 5, 0, 0, 0, 0, 0]
    assert regions["b"].tolist() == [0, 0, 0, 0, 6, 7, 8, 9]


def test_gqa_kv_heads_below_tp_are_replicated_whole_heads() -> None:
    shape = (KV, HIDDEN)
    boxes = [tp_boxes("a.k_proj.weight", shape, 4, r, HEADS)[0] for r in range(4)]
    assert [(b.start[0], b.stop[0]) for b in boxes] == [(0, 4), (0, 4), (4, 8), (4, 8)]
    assert unit_interval(2, 4, 3, "kv") == (1, 2)
    with pytest.raises(ConfigError, match="cannot be replicated evenly"):
        unit_interval(2, 3, 0, "kv")


def test_fused_qkv_is_three_boxes_at_byte_offsets() -> None:
    boxes = tp_boxes("x.qkv_proj.weight", (HIDDEN + 2 * KV, HIDDEN), 2, 1, HEADS, item=4)
    assert [(b.start[0], b.stop[0]) for b in boxes] == [(16, 32), (36, 40), (44, 48)]
    assert [b.offset for b in boxes] == [0, 16 * HIDDEN * 4, 20 * HIDDEN * 4]


def _seed_layout(tp: int) -> dict[str, list[TensorEntry]]:
    full = llama()
    return {f"s{r}": rank_of(full, tp, r)[0] for r in range(tp)}


def _replace_box(entries: list[TensorEntry], name: str, **changes: object) -> list[TensorEntry]:
    out = []
    for e in entries:
        if e.name == name:
            e = dataclasses.replace(e, boxes=(dataclasses.replace(e.boxes[0], **changes),))
        out.append(e)
    return out


Q = "model.layers.0.self_attn.q_proj.weight"


def test_gap_fails_closed_naming_the_tensor() -> None:
    seeds = _seed_layout(2)
    seeds["s1"] = [e for e in seeds["s1"] if e.name != Q]  # rank 1 lost its half of q_proj
    with pytest.raises(LayoutMismatch, match=r"q_proj.weight: no source holds \[16:32\)"):
        plan(rank_of(llama(), 1, 0)[0], seeds)


def test_partial_overlap_fails_closed_naming_the_tensor() -> None:
    seeds = _seed_layout(2)
    seeds["s1"] = _replace_box(seeds["s1"], Q, start=(12, 0), stop=(28, HIDDEN))  # overlaps rank 0's rows
    with pytest.raises(LayoutMismatch, match="q_proj.weight: source boxes overlap partly"):
        plan(rank_of(llama(), 1, 0)[0], seeds)


def test_dtype_mismatch_fails_closed_naming_the_tensor() -> None:
    seeds = _seed_layout(2)
    seeds["s0"] = [dataclasses.replace(e, dtype="torch.float16") if e.name == Q else e for e in seeds["s0"]]
    with pytest.raises(LayoutMismatch, match="q_proj.weight: dtype torch.float16 at source s0"):
        plan(rank_of(llama(), 1, 0)[0], seeds)


def test_unpublished_layout_and_foreign_full_shape_fail_closed() -> None:
    seeds = _seed_layout(2)
    seeds["s0"] = [dataclasses.replace(e, boxes=()) if e.name == Q else e for e in seeds["s0"]]
    with pytest.raises(LayoutMismatch, match="q_proj.weight: source s0 publishes no layout"):
        plan(rank_of(llama(), 1, 0)[0], seeds)
    seeds = _seed_layout(1)
    seeds["s0"] = _replace_box(seeds["s0"], Q, full_shape=(HIDDEN, HIDDEN + 1), stop=(HIDDEN, HIDDEN + 1))
    with pytest.raises(LayoutMismatch, match="q_proj.weight"):
        plan(rank_of(llama(), 2, 0)[0], seeds)


def test_target_boxes_that_overlap_in_their_buffer_fail_closed() -> None:
    entries, _ = rank_of(phi3(), 2, 0)
    fused = next(e for e in entries if "qkv" in e.name)
    bad = dataclasses.replace(
        fused, boxes=(fused.boxes[0], dataclasses.replace(fused.boxes[1], offset=0), fused.boxes[2])
    )
    with pytest.raises(LayoutMismatch, match="qkv_proj.weight: its boxes overlap in its buffer"):
        plan([bad], _seed_layout(1))


def test_coverage_check_names_overlap_and_gap() -> None:
    entries, _ = rank_of(llama(), 1, 0)
    p = plan(entries, _seed_layout(2))
    doubled = [*p.runs, p.runs[0]]
    assert any("planned twice" in line for line in coverage_problems(entries, doubled))
    assert any("planned from no source" in line for line in coverage_problems(entries, p.runs[1:]))


def test_box_runs_merge_whole_inner_dimensions() -> None:
    src = full_box("t", (4, 6))
    dst = Box("t", (4, 6), (0, 0), (4, 3))
    assert box_runs((0, 0), (4, 3), src, dst, 2) == [(0, 0, 6), (12, 6, 6), (24, 12, 6), (36, 18, 6)]
    assert box_runs((1, 0), (3, 6), src, Box("t", (4, 6), (1, 0), (3, 6)), 2) == [(12, 0, 24)]


def test_boxes_travel_in_the_seed_manifest_and_bad_ones_are_named():
    from peerload.manifest import Manifest, RegionEntry, manifest_problem
    from peerload.wire import manifest_from_proto, manifest_to_proto

    entries, _ = rank_of(phi3(), 2, 1)
    regions = [RegionEntry(e.region, e.nbytes, addr=4096) for e in entries]
    m = Manifest(tensors=entries, regions=regions)
    back = manifest_from_proto(manifest_to_proto(m))
    assert [e.boxes for e in back.tensors] == [e.boxes for e in entries]
    old = manifest_to_proto(m)
    old.tensors[0].ClearField("boxes")  # what a seed from before the field sends: no layout, no resharding
    assert manifest_from_proto(old).tensors[0].boxes == ()
    bad = dataclasses.replace(entries[0], boxes=(dataclasses.replace(entries[0].boxes[0], stop=(99, HIDDEN)),))
    field, problem = manifest_problem(Manifest(tensors=[bad, *entries[1:]], regions=regions))
    assert field == "tensors[0].boxes[0]" and "spans [16, 99)" in problem


def _padded(entries: list[TensorEntry], regions: dict[str, bytearray], rows: int) -> None:
    """Pad every embedding of `entries` with `rows` zero rows past its boxes, as vLLM pads vocabularies."""
    for i, e in enumerate(entries):
        if "embed_tokens" not in e.name:
            continue
        item = torch.tensor([], dtype=torch.bfloat16).element_size()
        pad = padding_box((rows, HIDDEN), e.nbytes)
        entries[i] = dataclasses.replace(
            e, shape=(e.shape[0] + rows, HIDDEN), nbytes=e.nbytes + rows * HIDDEN * item, boxes=(*e.boxes, pad)
        )
        regions[e.region] += bytes(rows * HIDDEN * item)


def test_padding_is_never_read_and_the_targets_counts_as_covered() -> None:
    """vLLM's padded vocabulary rows: a source's padding is skipped, the target's is its own to fill."""
    full = llama()
    sources, seeds = {}, {}
    for rank in range(2):
        entries, regions = rank_of(full, 2, rank)
        _padded(entries, regions, 3 if rank == 1 else 0)  # vLLM pads the last rank only
        seeds[f"s{rank}"], sources[f"s{rank}"] = entries, regions
    target, want = rank_of(full, 1, 0)
    _padded(target, want, 5)
    p = plan(target, seeds)
    got = {n: bytearray(b"\xee" * len(b)) for n, b in want.items()}
    execute(p, sources, got)
    embed = "model.embed_tokens.weight"
    real = 16 * HIDDEN * 2
    assert got[embed][:real] == want[embed][:real]
    assert got[embed][real:] == b"\xee" * (5 * HIDDEN * 2), "a plan wrote the target's padding"
    assert all(got[n] == want[n] for n in want if n != embed)


def test_a_tensor_without_boxes_fails_closed_with_the_reason_its_seed_gave() -> None:
    """A vLLM seed publishes why a tensor has no boxes (repacked by post-processing): the plan says it."""
    from peerload.wire import manifest_from_proto, manifest_to_proto

    why = "repacked by vLLM's post-processing (now (8, 4) torch.float32, was (32, 32) torch.bfloat16)"
    seeds = _seed_layout(2)
    seeds["s1"] = [dataclasses.replace(e, boxes=(), no_layout=why) if e.name == Q else e for e in seeds["s1"]]
    with pytest.raises(LayoutMismatch, match=r"q_proj.weight: source s1 publishes no layout for it \(repacked by vLLM"):
        plan(rank_of(llama(), 1, 0)[0], seeds)
    from peerload.manifest import Manifest, RegionEntry

    m = Manifest(tensors=seeds["s1"], regions=[RegionEntry(e.region, e.nbytes, addr=4096) for e in seeds["s1"]])
    back = manifest_from_proto(manifest_to_proto(m)).tensors
    assert [e.no_layout for e in back] == [e.no_layout for e in seeds["s1"]]
    assert next(e for e in back if e.name == Q).no_layout == why


def test_a_load_that_cannot_describe_some_of_its_tensors_names_them() -> None:
    """A layout may give a reason instead of boxes (`collect` publishes it as no_layout); a load that
    then cannot plan says which tensors and why."""
    from peerload.loader.load import _no_layout_line
    from peerload.tensors import collect

    why = "repacked by vLLM's post-processing"
    tensors = {"a": torch.zeros(2), "b": torch.zeros(3)}
    partial = collect(tensors, {"a": (full_box("a", (2,)),), "b": why})
    assert [(e.name, e.boxes, e.no_layout) for e in partial.entries] == [
        ("a", (full_box("a", (2,)),), ""),
        ("b", (), why),
    ]
    line = _no_layout_line(partial)
    assert "cannot describe 1 of its tensors" in line and f"b ({why})" in line, line
    assert "this load has no layout" in _no_layout_line(collect(tensors)), _no_layout_line(collect(tensors))
