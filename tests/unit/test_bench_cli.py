"""`peerload bench`'s subcommands: one per benchmark, and the flag form before them rewritten to them."""

from __future__ import annotations

import pytest
from typer.main import get_command

from peerload.cli.bench import BENCHMARKS, _legacy, app


def test_every_benchmark_is_a_subcommand() -> None:
    group = get_command(app)
    assert list(group.commands) == [name for name, _ in BENCHMARKS]  # type: ignore[attr-defined]
    assert {"data", "scaling", "fleet", "fanout", "control-plane", "replica", "reshard"} <= set(group.commands)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "old, new",
    [
        ("bench --size-gib 2 --repeats 3", "bench data --size-gib 2 --repeats 3"),
        ("bench --scaling 0.25,1 --transport nixl", "bench scaling --sizes 0.25,1 --transport nixl"),
        ("bench --scaling=1", "bench scaling --sizes=1"),
        ("bench --fleet --nic-gbit 2", "bench fleet --nic-gbit 2"),
        ("bench --fleet --targets 1,2,4,8 --part-mib 8", "bench fanout --targets 1,2,4,8 --part-mib 8"),
        ("bench --size-gib 1 --fleet --targets=2", "bench fanout --size-gib 1 --targets=2"),
        ("bench --control-plane --scale", "bench control-plane --scale"),
        ("bench --replica --repeats 1", "bench replica --repeats 1"),
    ],
)
def test_the_flag_form_becomes_the_subcommand_with_a_notice(old: str, new: str) -> None:
    args, notice = _legacy.rewrite(old.split())
    assert args == new.split()
    assert notice == f"`peerload {old}` is deprecated; use `peerload {new}`"


@pytest.mark.parametrize("argv", ["bench", "bench --help", "bench data --size-gib 1", "load x --json", "serve"])
def test_the_subcommand_form_and_other_commands_are_left_alone(argv: str) -> None:
    assert _legacy.rewrite(argv.split()) == (argv.split(), None)
