"""`peerload simulate`: the fan-out policy on fleets this machine cannot hold (discrete-time model)."""

from __future__ import annotations

import json
import math
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from peerload.errors import ConfigError


def _ints(value: str, option: str) -> list[int]:
    try:
        items = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        items = []
    if not items or min(items) < 1:
        raise ConfigError(f"{option} {value!r} is not a comma list of integers >= 1, such as 64,256,1024")
    return items


def simulate(
    targets: Annotated[str, typer.Option(help="Comma list of target counts started at once.")] = "64,256,1024",
    modes: Annotated[str, typer.Option(help="Comma list of: single, striping, swarm.")] = "single,striping,swarm",
    size_gib: Annotated[float, typer.Option(help="Model size in GiB.", min=0.001)] = 1.0,
    part_mib: Annotated[int, typer.Option(help="Part size in MiB.", min=1)] = 16,
    nic_gbit: Annotated[float, typer.Option(help="Every host's NIC, Gbit/s each way.", min=0.001)] = 2.0,
    fabric_gbit: Annotated[
        float, typer.Option(help="Cap on all reads together, Gbit/s (0: none; calibration for shared CPUs).", min=0)
    ] = 0.0,
    seeds: Annotated[int, typer.Option(help="Original seeds (complete from the start).", min=1)] = 1,
    striping_seeds: Annotated[int, typer.Option(help="Seeds in the striping-only mode.", min=1)] = 4,
    setup_ms: Annotated[float, typer.Option(help="Cost of one part read before bytes flow, ms.", min=0)] = 5.0,
    start_ms: Annotated[float, typer.Option(help="Cost of a load before its first read, ms.", min=0)] = 500.0,
    seed_failure_s: Annotated[float, typer.Option(help="Seed 0 dies at this time, s (0: never).", min=0)] = 0.0,
    dt_ms: Annotated[float, typer.Option(help="Time step, ms.", min=0.1)] = 10.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Simulate N targets loading at once with the loader's own part policy; prints times and seed copies.

    `fanout` is the last target's time over one target's time alone (same mode); the swarm's goal
    is at most 1 + 0.25 log2 N.
    """
    from peerload.sim import MODES, SimConfig
    from peerload.sim import simulate as run

    counts = _ints(targets, "--targets")
    chosen = [m.strip() for m in modes.split(",") if m.strip()]
    if not chosen or any(m not in MODES for m in chosen):
        raise ConfigError(f"--modes {modes!r}: choose from {', '.join(MODES)}")
    rows = []
    for mode in chosen:
        base = dict(
            mode=mode,
            seeds=striping_seeds if mode == "striping" else seeds,
            model_bytes=int(size_gib * (1 << 30)),
            part_bytes=part_mib << 20,
            nic_bps=nic_gbit * 1e9 / 8,
            fabric_bps=fabric_gbit * 1e9 / 8,
            setup_s=setup_ms / 1000,
            start_s=start_ms / 1000,
            dt=dt_ms / 1000,
            seed_failures=((0, seed_failure_s),) if seed_failure_s else (),
        )
        one = run(SimConfig(targets=1, **{**base, "seed_failures": ()})).last_s  # type: ignore[arg-type]
        for n in counts:
            result = run(SimConfig(targets=n, **base))  # type: ignore[arg-type]
            rows.append(
                {
                    "mode": mode,
                    "targets": n,
                    "seeds": base["seeds"],
                    "last_s": round(result.last_s, 3),
                    "one_target_s": round(one, 3),
                    "fanout": round(result.last_s / one, 3),
                    "goal": round(1 + 0.25 * math.log2(n), 3),
                    "origin_copies": round(result.origin_copies, 3),
                }
            )
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"simulated: {size_gib} GiB in {part_mib} MiB parts, NICs {nic_gbit} Gbit/s")
    for col in ("mode", "seeds", "targets", "last s", "one target s", "fanout", "goal (swarm)", "origin copies"):
        table.add_column(col)
    for r in rows:
        table.add_row(*(str(r[k]) for k in ("mode", "seeds", "targets", "last_s", "one_target_s", "fanout", "goal")),
                      str(r["origin_copies"]))  # fmt: skip
    Console().print(table)
