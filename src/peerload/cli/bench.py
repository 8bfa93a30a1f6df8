"""`peerload bench`: cold P2P load vs the copy limit, safetensors and ModelExpress; or the control plane."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from peerload.errors import ConfigError


def _split(value: str, allowed: tuple[str, ...], what: str) -> list[str]:
    items = list(allowed) if value == "all" else [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise ConfigError(f"{what} {value!r} is not valid; choose from {', '.join(allowed)} or all")
    return items


def _sizes(value: str) -> list[float]:
    """--scaling's comma list of GiB sizes, each a number > 0."""
    try:
        sizes = [float(s) for s in value.split(",") if s.strip()]
    except ValueError:
        sizes = []
    if not sizes or not all(math.isfinite(s) and s > 0 for s in sizes):
        raise ConfigError(f"--scaling {value!r} is not a comma list of sizes in GiB > 0, such as 0.25,1,2")
    return sizes


def bench(
    size_gib: Annotated[float, typer.Option(help="Checkpoint size in GiB.", min=0.001)] = 2.0,
    tensors: Annotated[int, typer.Option(help="About this many tensors (Llama-like mix).", min=12)] = 500,
    transport: Annotated[str, typer.Option(help="nixl, transfer_engine, a comma list, or all.")] = "all",
    repeats: Annotated[int, typer.Option(help="Fresh processes per case.", min=1)] = 3,
    cases: Annotated[str, typer.Option(help="limit,storage,peerload,setup,wire,modelexpress or all.")] = "all",
    scaling: Annotated[
        str,
        typer.Option(help="Comma list of GiB sizes: cold-load scaling curve (limit, cold safetensors, P2P verified)."),
    ] = "",
    control_plane: Annotated[
        bool, typer.Option("--control-plane", help="Benchmark the coordinator (memory and Redis stores) instead.")
    ] = False,
    clients: Annotated[int, typer.Option(help="--control-plane: concurrent client threads.", min=1)] = 16,
    duration: Annotated[float, typer.Option(help="--control-plane: seconds per RPC and store.", min=0.5)] = 5.0,
    workers: Annotated[int, typer.Option(help="--control-plane: registered workers.", min=1)] = 1000,
    out: Annotated[Path, typer.Option(help="Directory for results.json and the chart.")] = Path("bench/results"),
    plot: Annotated[bool, typer.Option("--plot/--no-plot", help="Write a PNG bar chart.")] = True,
    json_out: Annotated[bool, typer.Option("--json", help="Print the results JSON instead of tables.")] = False,
) -> None:
    """Measure a cold P2P load against the copy limit, safetensors (warm/cold) and ModelExpress."""
    from peerload.bench import report
    from peerload.bench.runner import GROUPS, BenchConfig
    from peerload.components import TRANSPORTS

    # Every option is checked before the first measurement, which may take minutes.
    for option, value in (("--size-gib", size_gib), ("--duration", duration)):
        if not math.isfinite(value):
            raise ConfigError(f"{option} must be a finite number, got {value}")
    transports = _split(transport, tuple(TRANSPORTS), "--transport")
    groups = _split(cases, GROUPS, "--cases")
    sizes = _sizes(scaling) if scaling else []
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a directory for the results")
    console = Console(stderr=json_out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if control_plane:
        from peerload.bench.control_plane import ControlPlaneConfig, run_control_plane, table

        results = run_control_plane(
            ControlPlaneConfig(clients=clients, duration_s=duration, workers=workers), progress=lambda s: console.log(s)
        )
        path = out / "control_plane.json"
        path.write_text(json.dumps(results, indent=2))
        _emit(console, json_out, results, [table(results)], [path], started)
        return
    config = BenchConfig(
        size_gib=size_gib,
        tensors=tensors,
        repeats=repeats,
        out=out,
        transports=transports,
        groups=groups,
    )
    if scaling:
        from peerload.bench.scaling import run_scaling, scaling_table

        results = run_scaling(config, sizes, progress=lambda s: console.log(s))
        path = out / "scaling.json"
        path.write_text(json.dumps(results, indent=2))
        paths = [path]
        if plot:
            from peerload.bench.scaling import plot_scaling

            paths.append(plot_scaling(results, out / "scaling.png"))
        _emit(console, json_out, results, [scaling_table(results)], paths, started)
        return
    from peerload.bench.runner import measure

    results = measure(config, progress=lambda s: console.log(f"measuring {s}"))
    path = out / "results.json"
    path.write_text(json.dumps(results, indent=2))
    paths = [path]
    if plot:
        paths.append(report.plot(results, out / "bench.png"))
    _emit(console, json_out, results, [report.table(results), report.goals_table(results)], paths, started)


def _emit(console: Console, json_out: bool, results: dict, tables: list, paths: list[Path], started: float) -> None:
    if json_out:
        typer.echo(json.dumps(results, indent=2))
    else:
        for t in tables:
            console.print(t)
    console.print(f"wrote {', '.join(map(str, paths))} in {time.perf_counter() - started:.0f} s")
