"""`peerload seed PATH`: load a checkpoint from disk and serve it as a READY source until signalled."""

import contextlib
import logging
import os
import signal
from pathlib import Path
from typing import Annotated, Optional

import typer

from peerload._process import write_ready_file
from peerload.cli._interrupt import Interrupted
from peerload.cli._model_options import ModelOptions, model_command, output_file, start_metrics, wait_for_signal
from peerload.client import CoordinatorClient

log = logging.getLogger(__name__)


@model_command
def seed(
    model: ModelOptions,
    ready_file: Annotated[
        Optional[Path],
        typer.Option(
            "--ready-file", help="Write {worker_id, source_id, rank} as JSON here once READY.", show_default="none"
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
    artifact: Annotated[
        Optional[list[str]],
        typer.Option(
            "--artifact",
            help="KIND=DIR: also publish the cache directory DIR as an artifact source of this model (repeatable).",
            show_default="none",
        ),
    ] = None,
) -> None:
    """Load PATH from disk, post-process, publish it, and heartbeat READY until SIGINT/SIGTERM."""
    from peerload.adapters import hf  # torch-heavy: imported per command to keep the CLI fast
    from peerload.artifacts import ArtifactSource, artifact_identity
    from peerload.cli.artifact import parse_artifact_option
    from peerload.seed.publisher import publish

    output_file(ready_file, "--ready-file")
    artifacts = [parse_artifact_option(value) for value in artifact or ()]
    settings = model.settings()
    metrics = start_metrics(settings.host, metrics_port)
    # Fail before reading gigabytes from disk if nobody can be told about them (reachable, TLS, token).
    with CoordinatorClient.from_settings(settings) as client:
        client.health_check()
        client.list_sources(model_name=model.identity.model_name, limit=1)
    tensors, _model = hf.seed_tensors(model.checkpoint, **model.hf_options())
    with contextlib.ExitStack() as stack:
        pub = stack.enter_context(
            publish(
                tensors,
                model.identity,
                rank=model.rank,
                settings=settings,
                worker_id=model.worker_id,
                layout=hf.tensor_layout(model.checkpoint, **model.hf_options()),
            )
        )
        sources = [
            stack.enter_context(ArtifactSource(path, artifact_identity(model.identity, kind), settings=settings))
            for kind, path in artifacts
        ]
        for source in sources:
            typer.echo(
                f"also publishing {source.kind} {source.directory} ({source.total_bytes / 2**20:.2f} MiB): "
                f"source {source.source_id}, worker {source.worker_id}",
                err=True,
            )
        typer.echo(
            f"seeding {model.identity.model_name} rank {model.rank}: {len(pub.manifest.tensors)} tensors, "
            f"{pub.manifest.total_bytes / 2**20:.1f} MiB, source {pub.source_id}, "
            f"worker {pub.worker_id}, transport {pub.transport.kind}, "
            f"coordinator {settings.coordinator}",
            err=True,
        )
        if ready_file is not None:
            write_ready_file(
                ready_file,
                {
                    "worker_id": pub.worker_id,
                    "source_id": pub.source_id,
                    "rank": model.rank,
                    "pid": os.getpid(),
                    "artifacts": [
                        {
                            "kind": s.kind,
                            "source_id": s.source_id,
                            "worker_id": s.worker_id,
                            "artifact_id": s.artifact_id,
                        }
                        for s in sources
                    ],
                },
            )
        stopped_by = wait_for_signal(pub)
        typer.echo("stopping: marking the source STALE", err=True)
    if metrics is not None:
        metrics.close()
    if stopped_by is signal.SIGINT:  # stopped cleanly; 130 tells a shell it was Ctrl-C
        raise Interrupted("the seed stopped cleanly: its record is marked STALE and its memory released")
