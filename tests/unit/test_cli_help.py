"""`--help` of every command shows a default for every option that is not required."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import typer
from typer.core import TyperArgument, TyperOption
from typer.testing import CliRunner

from peerload.cli.main import app


def _commands(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    subcommands = getattr(command, "commands", None)
    if subcommands is None:
        yield path, command
        return
    for name, sub in subcommands.items():
        yield from _commands(sub, (*path, name))


COMMANDS = dict(_commands(typer.main.get_command(app)))


def _shown_options(command: Any) -> list[TyperOption]:
    """Options that are not required, bar --help and plain flags (`--json`: off unless given)."""
    return [
        p
        for p in command.params
        if isinstance(p, TyperOption)
        and p.name != "help"
        and not p.required
        and not (p.is_flag and not p.secondary_opts and p.default is False)
    ]


def test_every_command_is_covered() -> None:
    assert {"serve", "sources", "seed", "load", "bench", "chaos", "demo", "simulate"} <= {p[0] for p in COMMANDS}
    assert ("artifact", "fetch") in COMMANDS and ("artifact", "publish") in COMMANDS


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=" ".join)
def test_every_option_has_a_default_to_show(path: tuple[str, ...]) -> None:
    """An option whose value comes from settings (default None) says in show_default where it comes from."""
    for option in _shown_options(COMMANDS[path]):
        assert option.default not in (None, "") or isinstance(option.show_default, str), (
            f"peerload {' '.join(path)} {option.opts[0]}: give it show_default='...' (what applies when not given)"
        )
        # rich reads "[...]" in help text as markup and drops it: defaults go in show_default.
        assert "[default" not in (option.help or ""), f"{option.opts[0]}: move the default into show_default"


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=" ".join)
def test_help_prints_one_default_per_option(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "400", "TERMINAL_WIDTH": "400"})
    assert result.exit_code == 0, result.output
    optional_arguments = [p for p in COMMANDS[path].params if isinstance(p, TyperArgument) and not p.required]
    expected = len(_shown_options(COMMANDS[path])) + len(optional_arguments)
    assert result.output.count("[default:") == expected, result.output
