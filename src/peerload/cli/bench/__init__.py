"""`peerload bench SUBCOMMAND`: one module per benchmark, each module's function of the same name.

To add a benchmark: a module here with one typer command function (its options checked before
the first measurement; `_common.Run` for --out, --json and writing results), and one line in
`BENCHMARKS`. The measuring itself lives in `peerload.bench`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import typer

from peerload.cli.bench import control_plane, data, fanout, fleet, replica, reshard, scaling

# (subcommand, its function): in the order `peerload bench --help` lists them.
BENCHMARKS: tuple[tuple[str, Callable[..., Any]], ...] = (
    ("data", data.data),
    ("scaling", scaling.scaling),
    ("fleet", fleet.fleet),
    ("fanout", fanout.fanout),
    ("control-plane", control_plane.control_plane),
    ("replica", replica.replica),
    ("reshard", reshard.reshard),
)

app = typer.Typer(
    help="Benchmarks (docs/performance.md): JSON results and charts in --out.",
    no_args_is_help=True,
    add_completion=False,
)
for _name, _command in BENCHMARKS:
    app.command(_name)(_command)
