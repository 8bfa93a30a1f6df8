"""Cold-load scaling curve: the limit, cold safetensors and verified P2P at several sizes."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from peerload.bench.runner import BenchConfig, measure

CURVE_CASES = ("limit", "safetensors_cold")
_SKIP = frozenset({"limit_prefault", "safetensors_warm"})


def run_scaling(
    config: BenchConfig, sizes_gib: Sequence[float], progress: Callable[[str], None] = lambda s: None
) -> dict[str, Any]:
    """One `measure` per size with the first transport only; per-size medians and s/GiB."""
    transport = config.transports[0]
    points = []
    for size in sizes_gib:
        progress(f"scaling: {size:g} GiB")
        cfg = dataclasses.replace(
            config,
            size_gib=size,
            transports=(transport,),
            groups=("limit", "storage", "peerload"),
            skip=_SKIP | {f"peerload_{transport}_noverify"},
        )
        r = measure(cfg, progress=progress)
        gib = r["config"]["bytes"] / 2**30
        row: dict[str, Any] = {"size_gib": gib, "machine": r["machine"]}
        for name in (*CURVE_CASES, f"peerload_{transport}"):
            c = r["cases"].get(name, {})
            row[name] = {k: c[k] for k in ("median", "min", "max", "gbps", "error", "breakdown_median_s") if k in c}
        points.append(row)
    return {
        "transport": transport,
        "repeats": config.repeats,
        "tensors": config.tensors,
        "points": points,
        "linearity": linearity(points, transport),
    }


def linearity(points: list[dict[str, Any]], transport: str) -> dict[str, list[float | None]]:
    """Seconds per GiB at each size per case: constant means linear; a rise or fall says where not."""
    out: dict[str, list[float | None]] = {}
    for name in (*CURVE_CASES, f"peerload_{transport}"):
        out[name] = [p[name]["median"] / p["size_gib"] if "median" in p.get(name, {}) else None for p in points]
    return out


def scaling_table(results: dict[str, Any]) -> Table:
    tr = results["transport"]
    names = (*CURVE_CASES, f"peerload_{tr}")
    t = Table(title=f"cold load time vs size ({results['repeats']} fresh processes each, median s; s/GiB)")
    t.add_column("GiB", justify="right")
    for n in names:
        t.add_column(n, justify="right")
    for p in results["points"]:
        cells = []
        for n in names:
            c = p.get(n, {})
            cells.append(f"{c['median']:.2f} ({c['median'] / p['size_gib']:.2f})" if "median" in c else "failed")
        t.add_row(f"{p['size_gib']:.2f}", *cells)
    return t


def plot_scaling(results: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from peerload.bench.report import label

    tr = results["transport"]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=90)
    for n in (*CURVE_CASES, f"peerload_{tr}"):
        pts = [(p["size_gib"], p[n]["median"]) for p in results["points"] if "median" in p.get(n, {})]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=label(n))
    ax.set_xlabel("checkpoint size, GiB")
    ax.set_ylabel("seconds, fresh process (median)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
