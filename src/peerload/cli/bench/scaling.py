"""`peerload bench scaling`: the cold-load curve (limit, cold safetensors, verified P2P) over sizes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from peerload.cli.bench._common import DEFAULT_OUT, JsonOut, Out, Plot, Repeats, Run, sizes, transports


def scaling(
    sizes_gib: Annotated[str, typer.Option("--sizes", help="Comma list of checkpoint sizes in GiB.")] = "0.25,1,2,4",
    tensors: Annotated[int, typer.Option(help="About this many tensors (Llama-like mix).", min=12)] = 500,
    transport: Annotated[str, typer.Option(help="The transport of the P2P curve: nixl or transfer_engine.")] = "nixl",
    repeats: Repeats = 3,
    out: Out = DEFAULT_OUT,
    plot: Plot = True,
    json_out: JsonOut = False,
) -> None:
    """Cold load time against checkpoint size: linear or not, and where not."""
    from peerload.bench.runner import BenchConfig
    from peerload.bench.scaling import plot_scaling, run_scaling, scaling_table

    points = sizes(sizes_gib, "--sizes")
    config = BenchConfig(tensors=tensors, repeats=repeats, out=out, transports=transports(transport)[:1])
    run = Run(out, json_out)
    run.start()
    results = run_scaling(config, points, progress=run.progress)
    paths: list[Path] = [run.write("scaling.json", results)]
    if plot:
        paths.append(plot_scaling(results, out / "scaling.png"))
    run.emit(results, [scaling_table(results)], paths)
