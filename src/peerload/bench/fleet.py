"""`peerload bench fleet`: striping, resume and storage-over-the-NIC on emulated hosts.

Hosts: 0 runs the coordinator and a plain HTTP file server (the storage host), 1..4 run seeds,
5 runs the targets, one at a time, each a fresh `peerload load` process. Seed hosts and the
storage host have capped NICs (`nic_gbit`); the target's NIC is capped at `target_nic_gbit`
(default: 4 x nic_gbit, so four seeds can fill it: striping pays where sources are slower than
the target, e.g. seeds that keep most of their NIC for inference traffic).
Every P2P time is the target's own report, `total - publish` (the load, not becoming a seed).
"""

from __future__ import annotations

import json
import logging
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peerload.errors import PeerloadError
from peerload.fleet import Fleet, run_target, start_coordinator, start_file_server, start_seed
from peerload.synthetic import inventory, write_checkpoint

log = logging.getLogger(__name__)

GiB = 1 << 30
SEED_HOSTS = (1, 2, 3, 4)
STORAGE_HOST, TARGET_HOST = 0, 5
STRIPES = (1, 2, 4)
# Goals from the fleet's issue: higher is better except resume_overhead.
GOALS = {
    "striping_speedup_4": (3.2, "4 sources >= 3.2x one source"),
    "resume_overhead": (1.35, "4 sources, one SIGKILLed at 30%: <= 1.35x the time with none killed"),
    "single_source_vs_storage_over_nic": (1.0, "one seed >= storage over the same capped NIC"),
    "striped_vs_storage_over_nic": (3.0, "four seeds >= 3x storage over the same capped NIC"),
}


@dataclass
class FleetBenchConfig:
    """What one `peerload bench fleet` run measures."""

    size_gib: float = 1.0
    tensors: int = 200
    nic_gbit: float = 2.0
    target_nic_gbit: float | None = None  # default: len(SEED_HOSTS) * nic_gbit
    repeats: int = 3
    transports: Sequence[str] = ("nixl", "transfer_engine")
    kill_at: float = 0.3
    out: Path = Path("bench/results")
    timeout_s: float = 300.0

    @property
    def total_bytes(self) -> int:
        return int(self.size_gib * GiB)


@dataclass
class _Run:
    """The seeds of one transport, kept alive across its measurements (a killed one is restarted)."""

    fleet: Fleet
    workdir: Path
    model: Path
    name: str
    coordinator: str
    transport: str
    seeds: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start_seed(self, host: int) -> None:
        proc, _ = start_seed(
            self.fleet, host, self.model, self.name, self.coordinator, self.workdir, "--transport", self.transport
        )
        self.seeds[host] = proc

    def load(self, sources: int, timeout_s: float, kill: Callable[[], None] | None = None) -> dict[str, Any]:
        env = {"PEERLOAD_MAX_PARALLEL_SOURCES": str(sources)}
        args = ("--transport", self.transport, "--no-fallback")
        watcher = threading.Thread(target=kill, daemon=True) if kill else None
        if watcher is not None:
            watcher.start()
        report = run_target(
            self.fleet, TARGET_HOST, self.model, self.name, self.coordinator, self.workdir, *args, env=env,
            timeout_s=timeout_s,
        )  # fmt: skip
        if watcher is not None:
            watcher.join(timeout=5)
        return report


def load_seconds(report: dict[str, Any]) -> float:
    """The load itself: the target's total minus becoming a seed afterwards."""
    return report["seconds"]["total"] - report["seconds"].get("publish", 0.0)


def _kill_at(run: _Run, fraction: float, total: int, host: int, killed: list[int]) -> Callable[[], None]:
    """A watcher that SIGKILLs the seed on `host` once the target's NIC has received `fraction`."""

    def watch() -> None:
        start = run.fleet.nic_bytes(TARGET_HOST)[0]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if run.fleet.nic_bytes(TARGET_HOST)[0] - start >= fraction * total:
                run.seeds[host].kill()
                killed.append(host)
                return
            time.sleep(0.01)

    return watch


def _storage_seconds(fleet: Fleet, url: str, specs_path: Path, workdir: Path, timeout_s: float) -> float:
    """A fresh process on the target host reads the safetensors file over HTTP into fresh tensors."""
    out = workdir / f"storage-{time.monotonic_ns()}.json"
    args = workdir / "storage-args.json"
    args.write_text(json.dumps({"url": url}))
    cmd = [sys.executable, "-m", "peerload.bench.cases", "http_storage", str(args), str(out)]
    proc = fleet.popen(TARGET_HOST, cmd, log_path=out.with_suffix(".log"))
    if proc.wait(timeout=timeout_s) != 0 or not out.exists():
        raise PeerloadError(f"storage read failed: {out.with_suffix('.log').read_text(errors='replace')[-1500:]}")
    return json.loads(out.read_text())["seconds"]


def run_fleet(config: FleetBenchConfig, progress: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Every measurement, medians over `config.repeats`; the fleet.json document."""
    specs = inventory(config.total_bytes, config.tensors)
    cache = config.out / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    model = write_checkpoint(cache / f"fleet-{sum(s.nbytes for s in specs)}-{len(specs)}.safetensors", specs)
    target_cap = config.target_nic_gbit or len(SEED_HOSTS) * config.nic_gbit
    caps: list[float | None] = [config.nic_gbit] * (TARGET_HOST + 1)
    caps[TARGET_HOST] = target_cap
    raw: dict[str, dict[str, list[float]]] = {}
    restarted: dict[str, list[int]] = {}
    errors: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="peerload-fleet-") as tmp, Fleet(
        TARGET_HOST + 1, nic_gbit=caps, max_seconds=3600
    ) as fleet:  # fmt: skip
        workdir = Path(tmp)
        coordinator = start_coordinator(fleet, STORAGE_HOST, workdir)
        url = start_file_server(fleet, STORAGE_HOST, model.parent, workdir) + f"/{model.name}"
        times = raw.setdefault("storage_over_nic", {}).setdefault("seconds", [])
        for rep in range(config.repeats):
            times.append(_storage_seconds(fleet, url, model, workdir, config.timeout_s))
            progress(f"storage over the NIC {rep + 1}/{config.repeats}: {times[-1]:.2f} s")
        for kind in config.transports:
            try:
                _measure_transport(fleet, workdir, model, coordinator, kind, config, raw, restarted, progress)
            except PeerloadError as exc:
                errors[kind] = str(exc)
                log.warning("fleet benchmark over %s failed: %s", kind, exc)
                progress(f"{kind}: failed: {exc}")
    return summarise_fleet(raw, restarted, errors, config, target_cap, sum(s.nbytes for s in specs))


def _measure_transport(
    fleet: Fleet,
    workdir: Path,
    model: Path,
    coordinator: str,
    kind: str,
    config: FleetBenchConfig,
    raw: dict[str, dict[str, list[float]]],
    restarted: dict[str, list[int]],
    progress: Callable[[str], None],
) -> None:
    run = _Run(fleet, workdir / kind, model, f"peerload-bench/fleet-{kind}", coordinator, kind)
    run.workdir.mkdir()
    for host in SEED_HOSTS:
        run.start_seed(host)
    progress(f"{kind}: {len(SEED_HOSTS)} seeds READY")
    try:
        for rep in range(config.repeats):
            for k in STRIPES:
                report = run.load(k, config.timeout_s)
                _check(report, k)
                entry = raw.setdefault(f"{kind}_k{k}", {})
                entry.setdefault("seconds", []).append(load_seconds(report))
                entry.setdefault("transfer", []).append(report["seconds"]["transfer"])
                progress(f"{kind} k={k} {rep + 1}/{config.repeats}: {load_seconds(report):.2f} s")
            killed: list[int] = []
            victim = SEED_HOSTS[rep % len(SEED_HOSTS)]
            report = run.load(4, config.timeout_s, _kill_at(run, config.kill_at, config.total_bytes, victim, killed))
            _check(report, 4 if not killed else 3)
            if killed:
                entry = raw.setdefault(f"{kind}_k4_killed", {})
                entry.setdefault("seconds", []).append(load_seconds(report))
                entry.setdefault("transfer", []).append(report["seconds"]["transfer"])
                restarted.setdefault(kind, []).append(report["restarted_bytes"])
                progress(f"{kind} k=4, one killed, {rep + 1}/{config.repeats}: {load_seconds(report):.2f} s")
                run.seeds[victim].wait()
                run.start_seed(victim)
    finally:
        for proc in run.seeds.values():
            proc.terminate()
        for proc in run.seeds.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _check(report: dict[str, Any], at_least: int) -> None:
    if report["source"] == "storage" or report["storage_bytes"]:
        raise PeerloadError(f"a target fell back to storage: {report['attempts']}")
    used = sum(1 for s in report["sources"] if s["bytes"])
    if used < min(at_least, 1):
        raise PeerloadError(f"expected bytes from {at_least} sources, got {used}: {report['sources']}")


def _stats(xs: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "runs": xs}


def summarise_fleet(
    raw: dict[str, dict[str, list[float]]],
    restarted: dict[str, list[int]],
    errors: dict[str, str],
    config: FleetBenchConfig,
    target_cap: float,
    nbytes: int,
) -> dict[str, Any]:
    """Medians and the issue's ratios, per transport (the first transport that ran is the headline)."""
    cases = {
        name: {
            **_stats(r["seconds"]),
            "gbps": nbytes / statistics.median(r["seconds"]) / 1e9,
            **({"transfer_median": statistics.median(r["transfer"])} if r.get("transfer") else {}),
        }
        for name, r in raw.items()
        if r.get("seconds")
    }
    storage = cases.get("storage_over_nic", {}).get("median")
    per_transport: dict[str, Any] = {}
    for kind in config.transports:
        one = cases.get(f"{kind}_k1", {}).get("median")
        if not one:
            continue
        speedup = {str(k): one / cases[f"{kind}_k{k}"]["median"] for k in STRIPES if f"{kind}_k{k}" in cases}
        killed = cases.get(f"{kind}_k4_killed", {}).get("median")
        four = cases.get(f"{kind}_k4", {}).get("median")
        transfer = {k: cases[f"{kind}_k{k}"].get("transfer_median") for k in STRIPES if f"{kind}_k{k}" in cases}
        per_transport[kind] = {
            "striping_speedup": speedup,
            # the same ratio over the transfer phase alone (no process-local setup)
            "striping_speedup_transfer": {
                str(k): transfer[1] / v for k, v in transfer.items() if v and transfer.get(1)
            },
            "resume_overhead": killed / four if killed and four else None,
            "restarted_bytes": statistics.median(restarted[kind]) if restarted.get(kind) else None,
            "restarted_bytes_runs": restarted.get(kind, []),
            "single_source_vs_storage_over_nic": storage / one if storage else None,
            "striped_vs_storage_over_nic": storage / four if storage and four else None,
        }
    headline: dict[str, Any] = next(iter(per_transport.values()), {})
    goals = {}
    for key, (bound, text) in GOALS.items():
        value = (headline.get("striping_speedup") or {}).get("4") if key == "striping_speedup_4" else headline.get(key)
        met = None if value is None else (value <= bound if key == "resume_overhead" else value >= bound)
        goals[key] = {"value": value, "goal": bound, "met": met, "means": text}
    return {
        "config": {
            "size_gib": config.size_gib,
            "bytes": nbytes,
            "tensors": config.tensors,
            "seed_nic_gbit": config.nic_gbit,
            "storage_nic_gbit": config.nic_gbit,
            "target_nic_gbit": target_cap,
            "repeats": config.repeats,
            "kill_at": config.kill_at,
            "transports": list(config.transports),
            "headline_transport": next(iter(per_transport), None),
        },
        "cases": cases,
        **{k: headline.get(k) for k in ("striping_speedup", "resume_overhead", "restarted_bytes")},
        "single_source_vs_storage_over_nic": headline.get("single_source_vs_storage_over_nic"),
        "striped_vs_storage_over_nic": headline.get("striped_vs_storage_over_nic"),
        "per_transport": per_transport,
        "goals": goals,
        "errors": errors,
    }


def fleet_table(results: dict[str, Any]) -> Any:
    """A rich table of the fleet figures per transport."""
    from rich.table import Table

    t = Table(title=f"fleet: {results['config']['size_gib']} GiB, seeds capped at {results['config']['seed_nic_gbit']} "
              f"Gbit/s, target at {results['config']['target_nic_gbit']} Gbit/s")  # fmt: skip
    for col in ("transport", "k=1 s", "k=2 s", "k=4 s", "x k=2", "x k=4", "k=4 killed s", "resume", "vs storage"):
        t.add_column(col)
    cases = results["cases"]
    for kind, r in results["per_transport"].items():

        def med(name: str) -> str:
            return f"{cases[name]['median']:.2f}" if name in cases else "-"

        def num(x: float | None) -> str:
            return "-" if x is None else f"{x:.2f}"

        sp = r["striping_speedup"]
        times = [med(f"{kind}_{s}") for s in ("k1", "k2", "k4")]
        ratios = [num(sp.get("2")), num(sp.get("4")), med(f"{kind}_k4_killed"), num(r["resume_overhead"])]
        t.add_row(kind, *times, *ratios, num(r["single_source_vs_storage_over_nic"]))
    return t


def plot_fleet(results: dict[str, Any], path: Path) -> Path:
    """Median load seconds per case and transport, storage over the NIC as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = results["cases"]
    fig, ax = plt.subplots(figsize=(8, 4))
    labels = ["1 seed", "2 seeds", "4 seeds", "4 seeds, 1 killed"]
    suffixes = ["k1", "k2", "k4", "k4_killed"]
    kinds = list(results["per_transport"])
    width = 0.8 / max(1, len(kinds))
    for j, kind in enumerate(kinds):
        ys = [cases.get(f"{kind}_{s}", {}).get("median", 0) for s in suffixes]
        ax.bar([i + j * width for i in range(len(labels))], ys, width, label=kind)
    storage = cases.get("storage_over_nic", {}).get("median")
    if storage:
        ax.axhline(storage, color="#c44e52", linestyle="--", linewidth=1, label="storage over the same NIC")
    ax.set_xticks([i + width * (len(kinds) - 1) / 2 for i in range(len(labels))], labels)
    ax.set_ylim(0, ax.get_ylim()[1] * 1.3)  # room for the legend above the bars
    ax.set_ylabel("seconds (median, fresh target process)")
    ax.set_title(f"{results['config']['size_gib']} GiB, seed NICs {results['config']['seed_nic_gbit']} Gbit/s")
    ax.legend(loc="upper right", fontsize=8, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
