"""Ctrl-C for the CLI: one exception of our own, so typer cannot turn it into a silent exit 130.

typer catches KeyboardInterrupt and exits 130 without a word; SIGINT raises `Interrupted`
instead, which unwinds like KeyboardInterrupt (every `except BaseException` rollback runs) and
reaches `main`, which prints one line. SIGTERM is left to the commands that serve.
"""

from __future__ import annotations

import signal
from types import FrameType


class Interrupted(BaseException):
    """SIGINT arrived; the message says what was left behind (empty: nothing to say)."""


def raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise Interrupted()


def install() -> None:
    """Make SIGINT raise `Interrupted` in the main thread (unless SIGINT is ignored, as in `nohup`)."""
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, raise_interrupted)
