"""Presenting bench results: rich tables and a PNG bar chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

LABELS = {
    "limit": "limit: fresh process copies shared memory",
    "limit_prefault": "limit + parallel prefault",
    "safetensors_warm": "safetensors, warm page cache",
    "safetensors_cold": "safetensors, cold page cache",
    "peerload_nixl": "peerload P2P nixl, verified",
    "peerload_nixl_noverify": "peerload P2P nixl, no checksums",
    "peerload_transfer_engine": "peerload P2P mooncake, verified",
    "peerload_transfer_engine_noverify": "peerload P2P mooncake, no checksums",
    "modelexpress_nixl": "modelexpress 0.7.0 NIXL (no checksums)",
    "setup_nixl": "setup only: nixl agent+reg+connect",
    "setup_transfer_engine": "setup only: mooncake engine+reg+connect",
    "wire_nixl": "wire only: nixl READ into resident memory",
    "wire_transfer_engine": "wire only: mooncake READ into resident memory",
}


# Cases that time one part of a load (setup, or the read alone), not a whole load from a fresh start.
_PARTS = ("setup_", "wire_")


def label(name: str) -> str:
    return LABELS.get(name, name)


def _rows(results: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(name, c) for name, c in results["cases"].items()]


def table(results: dict[str, Any]) -> Table:
    cfg = results["config"]
    t = Table(
        title=f"peerload bench: {cfg['bytes'] / 2**30:.2f} GiB bf16 in {cfg['tensors']} tensors, "
        f"{cfg['repeats']} fresh processes each",
        caption=outliers_note(results) or None,
    )
    for col in ("case", "median s", "min s", "max s", "GB/s", "x limit"):
        t.add_column(col, justify="left" if col == "case" else "right")
    limit = results["cases"].get("limit", {}).get("median")
    for name, c in _rows(results):
        if "median" not in c:
            t.add_row(label(name), "[red]failed[/]", "", "", "", c.get("error", "")[:60])
            continue
        setup, part = name.startswith("setup_"), name.startswith(_PARTS)
        t.add_row(
            label(name),
            f"{c['median']:.3f}",
            f"{c['min']:.3f}",
            f"{c['max']:.3f}",
            "" if setup else f"{c['gbps']:.2f}",
            "" if part or not limit else f"{limit / c['median']:.2f}",
        )
    return t


def outliers_note(results: dict[str, Any]) -> str:
    """One line per outlier run of a case (limit, limit + prefault): what it took and what became of it."""
    lines = []
    for name, c in results["cases"].items():
        for o in c.get("outliers", []):
            again = ", ".join(f"{x:.3f}" for x in o["remeasured"]) or "not re-run"
            lines.append(f"{label(name)}, round {o['round']}: {o['seconds']:.3f} s against {o['others_median']:.3f} s "
                         f"in the other rounds; re-measured {again}: {o['action']}")  # fmt: skip
    return "\n".join(lines)


def goals_table(results: dict[str, Any]) -> Table:
    """Each performance goal, the measured value and whether this run met it."""
    t = Table(title="performance goals")
    for col in ("goal", "measured", "needed", "met"):
        t.add_column(col)
    for name, g in results["ratios"]["goals"].items():
        value = "n/a" if g["value"] is None else f"{g['value']:.2f}"
        needed = f"<= {g['goal']} s" if name == "setup_s" else f">= {g['goal']}"
        t.add_row(g["what"], value, needed, "[green]yes[/]" if g["met"] else "[red]no[/]")
    return t


def plot(results: dict[str, Any], path: Path) -> Path:
    """Horizontal bars of median seconds with min-max whiskers; the limit as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(n, c) for n, c in _rows(results) if "median" in c and not n.startswith(_PARTS)]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.4), dpi=90)
    ys = range(len(rows))
    med = [c["median"] for _, c in rows]
    err = [[c["median"] - c["min"] for _, c in rows], [c["max"] - c["median"] for _, c in rows]]
    colors = [
        "#4c72b0"
        if n.startswith("peerload")
        else "#dd8452"
        if n.startswith("modelexpress")
        else "#55a868"
        if n.startswith("limit")
        else "#8c8c8c"
        for n, _ in rows
    ]
    ax.barh(list(ys), med, xerr=err, color=colors, capsize=3)
    ax.set_yticks(list(ys), [label(n) for n, _ in rows], fontsize=8)
    ax.invert_yaxis()
    limit = results["cases"].get("limit", {}).get("median")
    if limit:
        ax.axvline(limit, color="#55a868", linestyle="--", linewidth=1)
    cfg = results["config"]
    ax.set_xlabel("seconds, fresh process, start to bytes in place (lower is better)")
    ax.set_title(
        f"{cfg['bytes'] / 2**30:.2f} GiB bf16, {cfg['tensors']} tensors, {results['machine']['cpus']} CPUs", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
