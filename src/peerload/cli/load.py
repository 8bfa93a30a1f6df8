"""`peerload load PATH`: load a model peer-to-peer (or from storage), verify, report, publish."""

import contextlib
import json
import logging
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from peerload.cli._interrupt import Interrupted
from peerload.cli._model_options import ModelOptions, model_command, output_file, start_metrics, wait_for_signal

if TYPE_CHECKING:
    from collections.abc import Callable

    from rich.progress import TaskID

    from peerload.loader import LoadResult
    from peerload.loader import Progress as LoadProgress

log = logging.getLogger(__name__)


@model_command
def load(
    model: ModelOptions,
    report: Annotated[
        Optional[Path], typer.Option("--report", help="Write a JSON report here.", show_default="no report")
    ] = None,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Verify content checksums.")] = True,
    fallback: Annotated[
        bool, typer.Option("--fallback/--no-fallback", help="Load from PATH when no peer works.")
    ] = True,
    max_sources: Annotated[
        Optional[int],
        typer.Option(
            "--max-sources",
            min=1,
            help="Peers to try before storage.",
            show_default="PEERLOAD_MAX_SOURCE_ATTEMPTS, else 3",
        ),
    ] = None,
    serve: Annotated[
        bool,
        typer.Option(
            "--serve/--no-serve",
            help="Serve the weights as a source while loading and afterwards, until SIGINT/SIGTERM. Without it "
            "the load publishes nothing (a one-shot load would only leave a STALE record behind).",
        ),
    ] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
    wait: Annotated[
        Optional[float],
        typer.Option(
            "--wait",
            min=0,
            help="Wait up to SECONDS for a matching source to become READY (a target started before its seed) "
            "before storage; 0 = no wait.",
            show_default="PEERLOAD_WAIT_FOR_SOURCE_S, else 0",
        ),
    ] = None,
    metrics_port: Annotated[
        Optional[int],
        typer.Option(
            "--metrics-port",
            min=0,
            max=65535,
            help="Serve this process's Prometheus /metrics here (0: a free port).",
            show_default="off",
        ),
    ] = None,
) -> None:
    """Build the model of PATH with empty weights, pull them from a READY peer, verify, publish."""
    from peerload.adapters import hf  # torch-heavy: imported per command to keep the CLI fast
    from peerload.loader import load_into

    output_file(report, "--report")
    settings = model.settings(
        verify_checksums=verify, storage_fallback=fallback, max_source_attempts=max_sources, wait_for_source_s=wait
    )
    metrics = start_metrics(settings.host, metrics_port)
    destination, from_storage = hf.target_tensors(model.checkpoint, **model.hf_options())
    console = Console(stderr=True)
    if from_storage is None and fallback:
        console.print(
            f"note: {model.path} holds no weights; only a peer can provide them (no storage fallback)", soft_wrap=True
        )
    with _progress_bar(console, enabled=progress) as hook, _rolled_back_on_interrupt(serve):
        result = load_into(
            destination,
            model.identity,
            rank=model.rank,
            settings=settings,
            fallback=from_storage,
            publish=serve,
            progress=hook,
            worker_id=model.worker_id,
            layout=hf.tensor_layout(model.checkpoint, **model.hf_options()),
        )
    stopped_by = None
    try:
        _print_summary(console, result)
        if report is not None:
            report.write_text(
                json.dumps(build_report(result, settings.transport, model.identity.source_id()), indent=2)
            )
        if serve and result.publisher is not None:
            later = "" if result.publisher.published else " (published once the coordinator answers)"
            console.print(f"serving as source {result.publisher.worker_id}{later}; SIGTERM or Ctrl-C to stop")
            stopped_by = wait_for_signal(result.publisher)
    finally:
        result.close()
        if metrics is not None:
            metrics.close()
    if stopped_by is signal.SIGINT:  # stopped cleanly; 130 tells a shell it was Ctrl-C
        raise Interrupted("the source stopped cleanly: its record is marked STALE")


@contextlib.contextmanager
def _rolled_back_on_interrupt(serve: bool) -> Iterator[None]:
    """Name what an interrupted load left behind (the loader rolled its memory back on the way out)."""
    try:
        yield
    except Interrupted:
        left = "its record is marked STALE" if serve else "nothing was published"
        raise Interrupted(f"the load stopped and was rolled back; {left}") from None


def build_report(result: "LoadResult", transport: str, source_id: str) -> dict:
    """The --report JSON: source(s), bytes, per-phase seconds, GB/s, verification and per-tensor sha256."""
    from peerload.loader import PHASES
    from peerload.tensors import sha256_of

    assert result.tensor_set is not None
    phases = {p: round(result.seconds.get(p, 0.0), 6) for p in (*PHASES, "total")}
    return {
        "source": result.source,
        "worker_id": result.worker_id,
        "source_id": source_id,
        "transport": transport,
        "bytes": result.bytes,
        "seconds": phases,
        "gbps": round(result.gbps, 4),
        # Were the peer's bytes checked against its checksums (null: loaded from storage)?
        "verified": result.verified,
        "unverified_reason": result.unverified_reason,
        "attempts": result.attempts,
        # per peer: bytes, seconds, GB/s, transport and the network path it took
        "sources": [s.as_dict() for s in result.sources],
        "restarted_bytes": result.restarted_bytes,
        "storage_bytes": result.storage_bytes,
        # the other tensor-parallel layout the peers' bytes were resharded from ("" for none)
        "resharded_from": result.resharded_from,
        "published": result.publisher is not None,
        "sha256": {name: sha256_of(t) for name, t in sorted(result.tensor_set.tensors.items())},
    }


def _print_summary(console: Console, result: "LoadResult") -> None:
    where = "storage" if result.source == "storage" else f"peer {result.source}"
    console.print(
        f"loaded {result.bytes / 2**20:.1f} MiB from {where} in {result.seconds['total']:.2f}s ({result.gbps:.2f} GB/s)"
    )
    if result.verified is False:
        console.print(f"  not content-verified: {result.unverified_reason}")
    if len(result.sources) > 1 or result.restarted_bytes:
        for s in result.sources:
            status = f" (dropped: {s.error})" if s.error else ""
            console.print(f"  from {s.worker_id}: {s.bytes / 2**20:.1f} MiB at {s.gbps:.2f} GB/s{status}")
        if result.restarted_bytes:
            console.print(f"  re-read after a failure: {result.restarted_bytes / 2**20:.1f} MiB")
    for attempt in result.attempts:
        console.print(f"  note: {attempt}")


class _progress_bar:
    """A rich progress bar fed by the loader's Progress events (a no-op when disabled)."""

    def __init__(self, console: Console, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> "Callable[[LoadProgress], None] | None":
        if not self.enabled:
            return None
        self.bar.__enter__()
        return self.update

    def update(self, event: "LoadProgress") -> None:
        if event.source not in self.tasks:
            self.tasks[event.source] = self.bar.add_task(f"from {event.source[:24]}", total=event.total)
        self.bar.update(self.tasks[event.source], completed=event.done)

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            self.bar.__exit__(*exc)
