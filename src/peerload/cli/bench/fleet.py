"""`peerload bench fleet`: striping, resume and storage over capped NICs on emulated hosts (root)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from peerload.cli.bench._common import DEFAULT_OUT, JsonOut, Out, Plot, Repeats, Run, Transport, finite, transports


def fleet(
    size_gib: Annotated[float, typer.Option(help="Checkpoint size in GiB.", min=0.001)] = 1.0,
    nic_gbit: Annotated[float, typer.Option(help="NIC cap of the seed and storage hosts, Gbit/s.", min=0.01)] = 2.0,
    target_nic_gbit: Annotated[
        Optional[float], typer.Option(help="The target's NIC cap, Gbit/s.", min=0.01, show_default="4 x --nic-gbit")
    ] = None,
    transport: Transport = "all",
    repeats: Repeats = 3,
    out: Out = DEFAULT_OUT,
    plot: Plot = True,
    json_out: JsonOut = False,
) -> None:
    """Striping over 1/2/4 seeds, resume after a killed seed, storage over the same NIC (emulated hosts)."""
    from peerload.bench.fleet import FleetBenchConfig, fleet_table, plot_fleet, run_fleet

    finite(size_gib=size_gib, nic_gbit=nic_gbit, target_nic_gbit=target_nic_gbit)
    config = FleetBenchConfig(
        size_gib=size_gib, nic_gbit=nic_gbit, target_nic_gbit=target_nic_gbit, repeats=repeats,
        transports=transports(transport), out=out,
    )  # fmt: skip
    run = Run(out, json_out)
    run.start()
    results = run_fleet(config, progress=run.progress)
    paths: list[Path] = [run.write("fleet.json", results)]
    if plot and results["per_transport"]:
        paths.append(plot_fleet(results, out / "fleet.png"))
    run.emit(results, [fleet_table(results)], paths)
