"""The `peerload` typer app and its entry point."""

from __future__ import annotations

import logging
import os
import sys

import typer
from rich.console import Console

from peerload.errors import PeerloadError

app = typer.Typer(
    name="peerload",
    help="Load model weights peer-to-peer from running inference instances.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# One line per command; each module's function of the same name is the command.
from peerload.cli import serve  # noqa: E402
from peerload.cli import sources  # noqa: E402
from peerload.cli import demo  # noqa: E402
from peerload.cli import seed  # noqa: E402
from peerload.cli import load  # noqa: E402
from peerload.cli import bench  # noqa: E402

app.command()(serve.serve)
app.command()(sources.sources)
app.command()(demo.demo)
app.command()(seed.seed)
app.command()(load.load)
app.command()(bench.bench)


def _debug() -> bool:
    return os.environ.get("PEERLOAD_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; a known peerload error becomes one line on stderr and exit status 1."""
    logging.basicConfig(level=logging.DEBUG if _debug() else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        app(args=argv, prog_name="peerload")
    except PeerloadError as exc:
        if _debug():
            raise
        err = Console(stderr=True, highlight=False)
        err.print(f"[bold red]Error:[/] {exc}", markup=True, soft_wrap=True)
        err.print("[dim]hint: set PEERLOAD_DEBUG=1 for the full traceback.[/]")
        sys.exit(1)


if __name__ == "__main__":
    main()
