"""What every `peerload bench` subcommand shares: the output options, checks of lists, writing results."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from peerload.errors import ConfigError

Out = Annotated[Path, typer.Option(help="Directory for the results JSON and the chart.")]
Plot = Annotated[bool, typer.Option("--plot/--no-plot", help="Write a PNG chart.")]
JsonOut = Annotated[bool, typer.Option("--json", help="Print the results JSON instead of tables.")]
Transport = Annotated[str, typer.Option(help="nixl, transfer_engine, a comma list, or all.")]
Repeats = Annotated[int, typer.Option(help="Fresh processes (or rounds) per case.", min=1)]
DEFAULT_OUT = Path("bench/results")


def split(value: str, allowed: tuple[str, ...], what: str) -> list[str]:
    """A comma list of names from `allowed` (or `all`); ConfigError naming the option otherwise."""
    items = list(allowed) if value == "all" else [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise ConfigError(f"{what} {value!r} is not valid; choose from {', '.join(allowed)} or all")
    return items


def transports(value: str) -> list[str]:
    from peerload.components import TRANSPORTS

    return split(value, tuple(TRANSPORTS), "--transport")


def sizes(value: str, option: str) -> list[float]:
    """A comma list of GiB sizes, each a finite number > 0."""
    try:
        out = [float(s) for s in value.split(",") if s.strip()]
    except ValueError:
        out = []
    if not out or not all(math.isfinite(s) and s > 0 for s in out):
        raise ConfigError(f"{option} {value!r} is not a comma list of sizes in GiB > 0, such as 0.25,1,2")
    return out


def counts(value: str, option: str) -> list[int]:
    """A comma list of target counts, each an integer >= 1; sorted, without repeats."""
    try:
        out = [int(s) for s in value.split(",") if s.strip()]
    except ValueError:
        out = []
    if not out or min(out) < 1:
        raise ConfigError(f"{option} {value!r} is not a comma list of target counts >= 1, such as 1,2,4,8")
    return sorted(set(out))


def finite(**values: float | None) -> None:
    """ConfigError for the first option (named by its keyword) that is inf or nan."""
    for name, value in values.items():
        if value is not None and not math.isfinite(value):
            raise ConfigError(f"--{name.replace('_', '-')} must be a finite number, got {value}")


class Run:
    """One subcommand's run: checks --out, then writes the JSON, prints tables or JSON, and the paths."""

    def __init__(self, out: Path, json_out: bool) -> None:
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {out} is a file; give a directory for the results")
        self.out = out
        self.json_out = json_out
        self.console = Console(stderr=json_out)
        self.started = time.perf_counter()

    def progress(self, line: str) -> None:
        self.console.log(line)

    def start(self) -> None:
        """Called once every option is checked, before the first measurement (which may take minutes)."""
        self.out.mkdir(parents=True, exist_ok=True)

    def write(self, name: str, results: dict[str, Any]) -> Path:
        path = self.out / name
        path.write_text(json.dumps(results, indent=2))
        return path

    def emit(self, results: dict[str, Any], tables: list[Any], paths: list[Path]) -> None:
        if self.json_out:
            typer.echo(json.dumps(results, indent=2))
        else:
            for t in tables:
                self.console.print(t)
        self.console.print(f"wrote {', '.join(map(str, paths))} in {time.perf_counter() - self.started:.0f} s")
