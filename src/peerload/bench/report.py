"""Presenting bench results: a rich table, a PNG bar chart, a markdown table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

LABELS = {
    "limit": "limit: fresh alloc + copy (1 process)",
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
}


def label(name: str) -> str:
    return LABELS.get(name, name)


def _rows(results: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(name, c) for name, c in results["cases"].items()]


def table(results: dict[str, Any]) -> Table:
    cfg = results["config"]
    t = Table(title=f"peerload bench: {cfg['bytes'] / 2**30:.2f} GiB bf16 in {cfg['tensors']} tensors, "
                    f"{cfg['repeats']} fresh processes each")
    for col in ("case", "median s", "min s", "max s", "GB/s", "x limit"):
        t.add_column(col, justify="left" if col == "case" else "right")
    limit = results["cases"].get("limit", {}).get("median")
    for name, c in _rows(results):
        if "median" not in c:
            t.add_row(label(name), "[red]failed[/]", "", "", "", c.get("error", "")[:60])
            continue
        setup = name.startswith("setup_")
        t.add_row(label(name), f"{c['median']:.3f}", f"{c['min']:.3f}", f"{c['max']:.3f}",
                  "" if setup else f"{c['gbps']:.2f}",
                  "" if setup or not limit else f"{limit / c['median']:.2f}")
    return t


def targets_table(results: dict[str, Any]) -> Table:
    t = Table(title="issue 5 targets")
    for col in ("target", "measured", "goal", "met"):
        t.add_column(col)
    for name, tgt in results["ratios"]["targets"].items():
        value = "n/a" if tgt["value"] is None else f"{tgt['value']:.2f}"
        goal = f"<= {tgt['target']}" if name == "setup_s" else f">= {tgt['target']}"
        t.add_row(tgt["what"], value, goal, "[green]yes[/]" if tgt["met"] else "[red]no[/]")
    return t


def markdown(results: dict[str, Any]) -> str:
    """The results table as GitHub markdown (for docs/performance.md)."""
    limit = results["cases"].get("limit", {}).get("median")
    lines = ["| case | median s | min s | max s | GB/s | x limit |", "|---|---:|---:|---:|---:|---:|"]
    for name, c in _rows(results):
        if "median" not in c:
            lines.append(f"| {label(name)} | failed: {c.get('error', '')[:80]} | | | | |")
            continue
        setup = name.startswith("setup_")
        gbps = "" if setup else f"{c['gbps']:.2f}"
        xl = "" if setup or not limit else f"{limit / c['median']:.2f}"
        lines.append(f"| {label(name)} | {c['median']:.3f} | {c['min']:.3f} | {c['max']:.3f} | {gbps} | {xl} |")
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> Path:
    """Horizontal bars of median seconds with min-max whiskers; the limit as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(n, c) for n, c in _rows(results) if "median" in c and not n.startswith("setup_")]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.4), dpi=90)
    ys = range(len(rows))
    med = [c["median"] for _, c in rows]
    err = [[c["median"] - c["min"] for _, c in rows], [c["max"] - c["median"] for _, c in rows]]
    colors = ["#4c72b0" if n.startswith("peerload") else "#dd8452" if n.startswith("modelexpress")
              else "#55a868" if n.startswith("limit") else "#8c8c8c" for n, _ in rows]
    ax.barh(list(ys), med, xerr=err, color=colors, capsize=3)
    ax.set_yticks(list(ys), [label(n) for n, _ in rows], fontsize=8)
    ax.invert_yaxis()
    limit = results["cases"].get("limit", {}).get("median")
    if limit:
        ax.axvline(limit, color="#55a868", linestyle="--", linewidth=1)
    cfg = results["config"]
    ax.set_xlabel("seconds, fresh process, start to bytes in place (lower is better)")
    ax.set_title(f"{cfg['bytes'] / 2**30:.2f} GiB bf16, {cfg['tensors']} tensors, "
                 f"{results['machine']['cpus']} CPUs", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def targets_markdown(results: dict[str, Any]) -> str:
    lines = ["| target | measured | goal | met |", "|---|---:|---:|:---:|"]
    for name, tgt in results["ratios"]["targets"].items():
        value = "n/a" if tgt["value"] is None else f"{tgt['value']:.2f}"
        goal = f"<= {tgt['target']} s" if name == "setup_s" else f">= {tgt['target']}"
        lines.append(f"| {tgt['what']} | {value} | {goal} | {'yes' if tgt['met'] else 'no'} |")
    return "\n".join(lines)


def control_plane_markdown(results: dict[str, Any]) -> str:
    lines = ["| store | RPC | calls/s | p50 ms | p99 ms | errors | coordinator RSS MiB | Redis used MiB |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for store, e in results["stores"].items():
        if "error" in e:
            lines.append(f"| {store} | failed: {e['error']} | | | | | | |")
            continue
        for rpc in ("ListSources", "UpdateStatus"):
            r = e[rpc]
            redis_mib = e.get("redis_used_mib")
            lines.append(f"| {store} | {rpc} | {r.get('rps', 0):.0f} | {r.get('p50_ms', 0):.2f} | "
                         f"{r.get('p99_ms', 0):.2f} | {r['errors']} | {e.get('coordinator_rss_mib_after') or 0:.0f} | "
                         f"{'' if redis_mib is None else f'{redis_mib:.1f}'} |")
    return "\n".join(lines)


def scaling_markdown(results: dict[str, Any]) -> str:
    names = ("limit", "safetensors_cold", f"peerload_{results['transport']}")
    lines = ["| GiB | " + " | ".join(f"{label(n)}: median s (s/GiB)" for n in names) + " |",
             "|---:|" + "---:|" * len(names)]
    for p in results["points"]:
        cells = [f"{p[n]['median']:.2f} ({p[n]['median'] / p['size_gib']:.2f})" if "median" in p.get(n, {})
                 else "failed" for n in names]
        lines.append(f"| {p['size_gib']:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
