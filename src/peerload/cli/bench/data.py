"""`peerload bench data`: a cold P2P load against the copy limit, safetensors and ModelExpress."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from peerload.cli.bench._common import (
    DEFAULT_OUT,
    JsonOut,
    Out,
    Plot,
    Repeats,
    Run,
    Transport,
    finite,
    split,
    transports,
)


def data(
    size_gib: Annotated[float, typer.Option(help="Checkpoint size in GiB.", min=0.001)] = 2.0,
    tensors: Annotated[int, typer.Option(help="About this many tensors (Llama-like mix).", min=12)] = 500,
    transport: Transport = "all",
    repeats: Repeats = 3,
    cases: Annotated[str, typer.Option(help="limit,storage,peerload,setup,wire,modelexpress,digest or all.")] = "all",
    outlier_factor: Annotated[
        float,
        typer.Option(help="A limit run more than this many times the median of its other runs is an outlier.", min=1.0),
    ] = 2.0,
    remeasure: Annotated[
        int, typer.Option(help="Re-measure an outlier limit run up to this many times (0: only report it).", min=0)
    ] = 2,
    out: Out = DEFAULT_OUT,
    plot: Plot = True,
    json_out: JsonOut = False,
) -> None:
    """The data plane: a cold P2P load vs the copy limit, safetensors (warm/cold) and ModelExpress."""
    from peerload.bench import report
    from peerload.bench.runner import GROUPS, BenchConfig, measure

    finite(size_gib=size_gib, outlier_factor=outlier_factor)
    config = BenchConfig(
        size_gib=size_gib,
        tensors=tensors,
        repeats=repeats,
        out=out,
        transports=transports(transport),
        groups=split(cases, GROUPS, "--cases"),
        outlier_factor=outlier_factor,
        remeasure=remeasure,
    )
    run = Run(out, json_out)
    run.start()
    results = measure(config, progress=lambda s: run.progress(f"measuring {s}"))
    paths: list[Path] = [run.write("results.json", results)]
    if plot:
        paths.append(report.plot(results, out / "bench.png"))
    run.emit(results, [report.table(results), report.goals_table(results)], paths)
