"""`peerload bench reshard`: TP=2 -> 1 and 1 -> 2 resharding loads against same-layout loads, on emulated hosts."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Optional

import typer

from peerload.cli.bench._common import DEFAULT_OUT, JsonOut, Out, Repeats, Run, finite, transports


def reshard(
    size_gib: Annotated[float, typer.Option(help="Checkpoint size in GiB (Llama-shaped, bf16).", min=0.001)] = 0.25,
    tensors: Annotated[int, typer.Option(help="About this many tensors.", min=8)] = 100,
    nic_gbit: Annotated[
        Optional[float], typer.Option(help="Every emulated NIC's cap, Gbit/s.", min=0.001, show_default="2.0")
    ] = 2.0,
    part_mib: Annotated[int, typer.Option(help="Part size in MiB.", min=1)] = 8,
    transport: Annotated[str, typer.Option(help="nixl or transfer_engine.")] = "nixl",
    repeats: Repeats = 3,
    out: Out = DEFAULT_OUT,
    json_out: JsonOut = False,
) -> None:
    """Resharding (TP=2 -> 1, 1 -> 2) vs same-layout loads on two emulated hosts (root): speed and wire bytes."""
    from peerload.bench.reshard import ReshardBenchConfig, reshard_table, run_reshard

    finite(size_gib=size_gib, nic_gbit=nic_gbit)
    config = ReshardBenchConfig(
        size_gib=size_gib, tensors=tensors, repeats=repeats, nic_gbit=nic_gbit, part_mib=part_mib,
        transport=transports(transport)[0], out=out,
    )  # fmt: skip
    run = Run(out, json_out)
    run.start()
    with tempfile.TemporaryDirectory(prefix="peerload-reshard-") as tmp:
        results = run_reshard(config, Path(tmp), progress=run.progress)
    run.emit(results, [reshard_table(results)], [run.write("reshard.json", results)])
