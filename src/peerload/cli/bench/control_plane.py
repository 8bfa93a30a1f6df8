"""`peerload bench control-plane`: the coordinator's throughput and latency, or the fleet-scale run."""

from __future__ import annotations

from typing import Annotated

import typer

from peerload.cli.bench._common import DEFAULT_OUT, JsonOut, Out, Run, finite


def control_plane(
    clients: Annotated[int, typer.Option(help="Concurrent client threads.", min=1)] = 16,
    duration: Annotated[float, typer.Option(help="Seconds per RPC and store.", min=0.5)] = 5.0,
    workers: Annotated[int, typer.Option(help="Registered workers.", min=1)] = 1000,
    scale: Annotated[
        bool,
        typer.Option(
            "--scale",
            help="Instead: 5,000 workers of 100 models beating every 30 s plus 200 lists/s, against one and two "
            "replicas over one Redis (about 4 minutes; --clients, --duration and --workers do not apply); "
            "writes control_plane_scale.json.",
        ),
    ] = False,
    out: Out = DEFAULT_OUT,
    json_out: JsonOut = False,
) -> None:
    """The coordinator: ListSources and UpdateStatus over the memory and Redis stores."""
    finite(duration=duration)
    run = Run(out, json_out)
    run.start()
    if scale:
        from peerload.bench.control_plane_scale import ScaleConfig, run_scale, scale_table

        results = run_scale(ScaleConfig(), progress=run.progress)
        run.emit(results, [scale_table(results)], [run.write("control_plane_scale.json", results)])
        return
    from peerload.bench.control_plane import ControlPlaneConfig, run_control_plane, table

    config = ControlPlaneConfig(clients=clients, duration_s=duration, workers=workers)
    results = run_control_plane(config, progress=run.progress)
    run.emit(results, [table(results)], [run.write("control_plane.json", results)])
