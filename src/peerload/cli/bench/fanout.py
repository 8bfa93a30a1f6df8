"""`peerload bench fanout`: N targets at once from one seed, under NIC caps set below the machine's ceiling."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Optional

import typer

from peerload.cli.bench._common import DEFAULT_OUT, JsonOut, Out, Plot, Run, counts, finite, transports


def fanout(
    targets: Annotated[str, typer.Option(help="Comma list of target counts started at once.")] = "1,2,4,8",
    size_gib: Annotated[float, typer.Option(help="Checkpoint size in GiB.", min=0.001)] = 0.25,
    nic_gbit: Annotated[
        Optional[float],
        typer.Option(
            help="Every NIC's cap, Gbit/s.",
            min=0.001,
            show_default="--ceiling-share x the measured ceiling / the largest count",
        ),
    ] = None,
    ceiling_share: Annotated[
        float,
        typer.Option(help="Share of the uncapped ceiling that the largest count's NICs at full rate may ask for."),
    ] = 0.5,
    part_mib: Annotated[int, typer.Option(help="Part size in MiB.", min=1)] = 8,
    max_sources: Annotated[
        Optional[int],
        typer.Option(
            help="Sources one target reads at once (PEERLOAD_MAX_PARALLEL_SOURCES).",
            min=1,
            show_default="the targets' own: the environment's, else the loader's default",
        ),
    ] = None,
    transport: Annotated[str, typer.Option(help="nixl or transfer_engine.")] = "nixl",
    out: Out = DEFAULT_OUT,
    plot: Plot = True,
    json_out: JsonOut = False,
) -> None:
    """Fan-out on emulated hosts (root): the uncapped ceiling first, then 1..N targets under NIC caps below it."""
    from peerload.bench.fanout import FanoutConfig, fanout_table, plot_fanout, run_fanout
    from peerload.errors import ConfigError

    finite(size_gib=size_gib, nic_gbit=nic_gbit, ceiling_share=ceiling_share)
    if not 0 < ceiling_share <= 1:
        raise ConfigError(f"--ceiling-share must be in (0, 1], got {ceiling_share}")
    config = FanoutConfig(
        targets=counts(targets, "--targets"), size_gib=size_gib, nic_gbit=nic_gbit, ceiling_share=ceiling_share,
        part_mib=part_mib, max_sources=max_sources, transport=transports(transport)[0], out=out,
    )  # fmt: skip
    run = Run(out, json_out)
    run.start()
    with tempfile.TemporaryDirectory(prefix="peerload-fanout-") as tmp:
        results = run_fanout(config, Path(tmp), progress=run.progress)
    paths: list[Path] = [run.write("fanout.json", results)]
    if plot:
        paths.append(plot_fanout(results, out / "fanout.png"))
    run.emit(results, [fanout_table(results)], paths)
