"""`peerload chaos`: the fault campaign (seeds killed and stopped, coordinator and Redis restarts,
flipped bytes, packet loss and partitions on emulated hosts, fuzzed messages), written to
chaos.json and a markdown table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from peerload.errors import ConfigError


def chaos(
    quick: Annotated[bool, typer.Option("--quick", help="A few trials of each fault (what `make test` runs).")] = False,
    only: Annotated[
        Optional[list[str]],
        typer.Option("--only", help="Run only this fault (repeatable); see --list.", show_default="every fault"),
    ] = None,
    list_faults: Annotated[bool, typer.Option("--list", help="List the faults and exit.")] = False,
    out: Annotated[Path, typer.Option(help="Where to write the JSON report.")] = Path("chaos.json"),
    markdown: Annotated[
        Optional[Path],
        typer.Option(help="Write the table here (between its markers if the file has them).", show_default="none"),
    ] = None,
    max_seconds_per_fault: Annotated[float, typer.Option(help="Stop a fault's trials after this.", min=1)] = 900.0,
    seed: Annotated[int, typer.Option(help="Random seed of fault points and fuzzed messages.")] = 0,
    workdir: Annotated[
        Optional[Path],
        typer.Option(help="Keep logs and the checkpoint here.", show_default="a temporary directory, removed"),
    ] = None,
) -> None:
    """Inject each fault a fixed number of times into real processes; exit 1 if any model came out
    corrupted or half-loaded, a server broke, or a reader died."""
    from peerload.chaos.campaign import FAULTS, CampaignOptions, run_campaign, write_json, write_markdown

    if list_faults:
        for fault in FAULTS:
            state = f"  (not run yet: needs {fault.needs})" if fault.needs else ""
            typer.echo(f"{fault.name:28} x{fault.trials:<6} {fault.what}{state}")
        return
    options = CampaignOptions(
        quick=quick,
        only=tuple(only or ()),
        max_seconds_per_fault=max_seconds_per_fault,
        seed=seed,
        workdir=workdir,
        progress=lambda line: typer.echo(line, err=True),
    )
    try:
        report = run_campaign(options)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    write_json(report, out)
    if markdown is not None:
        write_markdown(report, markdown)
    unsound = [
        f["name"]
        for f in report["faults"]
        if f["corrupted"] or f["half_loaded"] or f["server_errors"] or f.get("readers_died", 0)
    ]
    broken = [f["name"] for f in report["faults"] if f["status"] == "failed to run"]
    typer.echo(json.dumps({"out": str(out), "unsound": unsound, "failed_to_run": broken}), err=True)
    if unsound or broken:
        raise typer.Exit(1)
