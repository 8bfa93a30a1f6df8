"""`peerload demo --hosts N`: a fleet growing on emulated hosts, each new replica striping its load
over every replica before it (needs root: network namespaces)."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from peerload._process import log_tail, peerload_cmd, wait_until
from peerload.errors import PeerloadError
from peerload.fleet import Fleet, start_coordinator, start_seed

PART_BYTES = 16 << 20  # small parts, so even the demo model stripes over several replicas


def fleet_demo(console: Console, model_name: str, model_dir: Path, hosts: int, nic_gbit: float, transport: str) -> None:
    """Coordinator on host 0, a seed on host 1, then one replica per remaining host, in turn."""
    from peerload.adapters import hf
    from peerload.loader import copy_into
    from peerload.tensors import collect, sha256_of

    disk, from_disk = hf.target_tensors(model_dir, quantize=None, tp_size=1, tp_rank=0)
    loaded = collect(disk)
    assert from_disk is not None, f"{model_dir} has weights: the demo wrote them"
    copy_into(loaded, from_disk())
    expected = {n: sha256_of(t) for n, t in loaded.tensors.items()}
    workdir = Path(tempfile.mkdtemp(prefix="peerload-fleet-demo-"))
    env = {"PEERLOAD_CHUNK_BYTES": str(PART_BYTES)}
    try:
        with Fleet(hosts, nic_gbit=nic_gbit, max_seconds=900) as fleet:
            console.print(f"[bold]1.[/] {hosts} emulated hosts ({fleet.prefix}*), NICs capped at {nic_gbit} Gbit/s")
            coordinator = start_coordinator(fleet, 0, workdir)
            console.print(f"[bold]2.[/] coordinator on host 0 at {coordinator}")
            _, seed = start_seed(
                fleet, 1, model_dir, model_name, coordinator, workdir, "--transport", transport, env=env
            )
            console.print(f"[bold]3.[/] seed on host 1 ({fleet.hosts[1].address}) READY as {seed['worker_id']}")
            table = Table(title="each new replica loads from every replica before it")
            for col in ("host", "sources", "MiB per source", "load s", "GB/s", "bit-exact"):
                table.add_column(col)
            for host in range(2, hosts):
                report = _replica(fleet, host, model_dir, model_name, coordinator, workdir, transport, env)
                shares = ", ".join(f"{s['bytes'] / 2**20:.0f}" for s in report["sources"])
                seconds = report["seconds"]["total"] - report["seconds"].get("publish", 0.0)
                table.add_row(
                    f"{host} ({fleet.hosts[host].address})",
                    str(len(report["sources"])),
                    shares,
                    f"{seconds:.2f}",
                    f"{report['bytes'] / seconds / 1e9:.2f}",
                    str(report["sha256"] == expected),
                )
                if report["sha256"] != expected or report["source"] == "storage":
                    raise PeerloadError(f"replica on host {host} is not bit-exact from peers: {report['attempts']}")
            console.print(table)
        console.print(f"[bold green]fleet demo OK[/]: every namespace removed ({fleet.leftovers() or 'none left'})")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _replica(
    fleet: Fleet, host: int, model_dir: Path, name: str, coordinator: str, workdir: Path, transport: str, env: dict
) -> dict:
    """`peerload load --serve` on `host`: its report once loaded; it keeps serving the next ones."""
    report = workdir / f"replica-h{host}.json"
    log = report.with_suffix(".log")
    cmd = peerload_cmd(
        "load", str(model_dir), "--model-name", name, "--coordinator", coordinator, "--transport", transport,
        "--report", str(report), "--no-progress", "--no-fallback", "--serve",
    )  # fmt: skip
    proc: subprocess.Popen[bytes] = fleet.popen(host, cmd, log_path=log, env=env)
    try:
        wait_until(proc, report.exists, f"the replica on host {host}", 300)
    except PeerloadError as exc:
        raise PeerloadError(f"{exc}:\n{log_tail(log)}") from None
    time.sleep(0.05)  # the report is written in one call; let it land
    return json.loads(report.read_text())
