"""The `peerload` typer app and its entry point."""

from __future__ import annotations

import logging
import sys

import typer
from rich.console import Console

from peerload.cli import _interrupt, artifact, bench, chaos, demo, load, seed, serve, simulate, sources
from peerload.cli._errors import hint_for
from peerload.cli.bench import _legacy
from peerload.errors import ConfigError, PeerloadError
from peerload.settings import debug_enabled

app = typer.Typer(
    name="peerload",
    help="Load model weights peer-to-peer from running inference instances.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# One line per command; each module's function of the same name is the command.
app.command()(serve.serve)
app.command()(sources.sources)
app.command()(demo.demo)
app.command()(seed.seed)
app.command()(load.load)
app.command()(chaos.chaos)
app.command()(simulate.simulate)
app.add_typer(artifact.app, name="artifact")
app.add_typer(bench.app, name="bench")


EXIT_ERROR = 1  # a runtime failure: unreachable service, refused request, failed load
EXIT_USAGE = 2  # bad options, settings or input files (as click reports its own usage errors)
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; a known peerload error becomes one line and a hint on stderr, exit status 2 or 1."""
    debug = debug_enabled()
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    err = Console(stderr=True, highlight=False)
    _interrupt.install()
    args, notice = _legacy.rewrite(sys.argv[1:] if argv is None else argv)
    if notice:
        err.print(f"[yellow]warning:[/] {notice}", markup=True, soft_wrap=True)
    try:
        app(args=args, prog_name="peerload")
    except (_interrupt.Interrupted, KeyboardInterrupt) as exc:
        detail = str(exc) if isinstance(exc, _interrupt.Interrupted) else ""
        err.print(f"interrupted: {detail}" if detail else "interrupted", soft_wrap=True)
        sys.exit(EXIT_INTERRUPTED)
    except PeerloadError as exc:
        if debug:
            raise
        err.print(f"[bold red]Error:[/] {exc}", markup=True, soft_wrap=True)
        hint = hint_for(exc)
        if hint:
            err.print(f"[yellow]hint:[/] {hint}", markup=True, soft_wrap=True)
        err.print("[dim]set PEERLOAD_DEBUG=1 for the full traceback.[/]")
        sys.exit(EXIT_USAGE if isinstance(exc, ConfigError) else EXIT_ERROR)


if __name__ == "__main__":
    main()
