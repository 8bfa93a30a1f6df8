"""The flag form of `peerload bench` (before subcommands): rewritten to the subcommand, with a notice."""

from __future__ import annotations

from collections.abc import Sequence

# flag -> the subcommand it selected; checked in this order (`--fleet --targets` was the fan-out).
_FLAGS = (("--control-plane", "control-plane"), ("--replica", "replica"), ("--fleet", "fleet"))


def rewrite(argv: Sequence[str]) -> tuple[list[str], str | None]:
    """`bench --fleet ...` -> `bench fleet ...` etc.; the new argv and a deprecation notice (None: unchanged)."""
    args = list(argv)
    if len(args) < 2 or args[0] != "bench" or not args[1].startswith("--") or args[1] == "--help":
        return args, None
    rest = args[1:]
    command = "data"
    for flag, name in _FLAGS:
        if flag in rest:
            rest.remove(flag)
            command = name
            break
    if command == "fleet" and any(a == "--targets" or a.startswith("--targets=") for a in rest):
        command = "fanout"
    elif command == "data" and any(a == "--scaling" or a.startswith("--scaling=") for a in rest):
        command = "scaling"
        rest = [("--sizes" + a[len("--scaling") :]) if a.startswith("--scaling") else a for a in rest]
    new = ["bench", command, *rest]
    notice = f"`peerload {' '.join(args)}` is deprecated; use `peerload {' '.join(new)}`"
    return new, notice
