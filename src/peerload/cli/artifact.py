"""`peerload artifact publish|fetch`: a cache directory as a ModelExpress artifact source, or a peer's installed."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from peerload._process import write_ready_file
from peerload.cli._model_options import COORDINATOR_DEFAULT

if TYPE_CHECKING:
    from peerload.identity import SourceIdentity

app = typer.Typer(
    help="Compile caches as artifact sources: publish a directory, install a peer's.", no_args_is_help=True
)

_KIND = typer.Option("--kind", help="torch_compile_cache, triton_cache, deep_gemm_cache, ... (the MxSourceType).")
_NAME = typer.Option("--model-name", help="Model name of the artifact's identity.")
_COORD = typer.Option("--coordinator", help="Coordinator HOST:PORT.", show_default=COORDINATOR_DEFAULT)
_REVISION = typer.Option("--revision", help="Model revision (part of the identity).", show_default="none")
_FRAMEWORK = typer.Option("--framework-version", help="Engine version stamp, e.g. vllm 0.32.0.", show_default="none")
_DIGEST = typer.Option(
    "--compile-config-digest", help="Digest of the compile configuration (stamp).", show_default="none"
)
_DTYPE = typer.Option(
    "--dtype", help="The model's dtype, as its weights' identity says (e.g. float32).", show_default="none"
)


def parse_artifact_option(value: str) -> tuple[str, Path]:
    """KIND=DIR of `peerload seed --artifact`."""
    from peerload.artifacts import kind_value
    from peerload.errors import ConfigError

    kind, sep, directory = value.partition("=")
    if not sep or not directory:
        raise ConfigError(
            f"--artifact {value!r}: expected KIND=DIR, e.g. torch_compile_cache=~/.cache/vllm/torch_compile_cache"
        )
    kind_value(kind)
    path = Path(directory).expanduser()
    if not path.is_dir():
        raise ConfigError(f"--artifact {value!r}: {path} is not a directory")
    return kind, path


def _identity(
    model_name: str, kind: str, revision: str, dtype: str, framework_version: str, digest: str
) -> "SourceIdentity":
    from peerload.artifacts import artifact_identity, environment_stamp
    from peerload.identity import SourceIdentity

    stamp = environment_stamp(framework_version, digest)
    return artifact_identity(SourceIdentity(model_name=model_name, revision=revision, dtype=dtype), kind, stamp)


@app.command()
def publish(
    directory: Annotated[Path, typer.Argument(help="The cache directory to publish.")],
    kind: Annotated[str, _KIND],
    model_name: Annotated[str, _NAME],
    coordinator: Annotated[Optional[str], _COORD] = None,
    revision: Annotated[str, _REVISION] = "",
    dtype: Annotated[str, _DTYPE] = "",
    framework_version: Annotated[str, _FRAMEWORK] = "",
    compile_config_digest: Annotated[str, _DIGEST] = "",
    ready_file: Annotated[
        Optional[Path],
        typer.Option(
            "--ready-file", help="Write {worker_id, source_id, artifact_id} here once READY.", show_default="none"
        ),
    ] = None,
) -> None:
    """Publish DIRECTORY as an artifact source and heartbeat READY until SIGINT/SIGTERM."""
    from peerload.artifacts import ArtifactSource, kind_value
    from peerload.cli._model_options import wait_for_signal
    from peerload.errors import ConfigError
    from peerload.settings import Settings

    kind_value(kind)
    if not directory.is_dir():
        raise ConfigError(f"{directory} is not a directory; pass the cache directory to publish")
    settings = Settings.load(coordinator=coordinator)
    identity = _identity(model_name, kind, revision, dtype, framework_version, compile_config_digest)
    with ArtifactSource(directory, identity, settings=settings) as source:
        typer.echo(
            f"publishing {kind} {directory} ({source.total_bytes / 2**20:.2f} MiB, {len(source.manifest.chunks)} "
            f"chunks): artifact {source.artifact_id[:12]}, source {source.source_id}, worker {source.worker_id}",
            err=True,
        )
        if ready_file is not None:
            write_ready_file(
                ready_file,
                {
                    "worker_id": source.worker_id,
                    "source_id": source.source_id,
                    "artifact_id": source.artifact_id,
                    "pid": os.getpid(),
                },
            )
        wait_for_signal()
        typer.echo("stopping: marking the artifact source STALE", err=True)


@app.command()
def fetch(
    destination: Annotated[Path, typer.Argument(help="The cache directory to create (absent or empty).")],
    kind: Annotated[str, _KIND],
    model_name: Annotated[str, _NAME],
    coordinator: Annotated[Optional[str], _COORD] = None,
    revision: Annotated[str, _REVISION] = "",
    dtype: Annotated[str, _DTYPE] = "",
    framework_version: Annotated[str, _FRAMEWORK] = "",
    compile_config_digest: Annotated[str, _DIGEST] = "",
    report: Annotated[
        Optional[Path], typer.Option("--report", help="Write the outcome as JSON here.", show_default="no report")
    ] = None,
) -> None:
    """Install a READY peer's artifact into DESTINATION; exit 1 if it failed (skipped is not a failure)."""
    from peerload.artifacts import FAILED, fetch_artifact, kind_value
    from peerload.settings import Settings

    kind_value(kind)
    settings = Settings.load(coordinator=coordinator)
    identity = _identity(model_name, kind, revision, dtype, framework_version, compile_config_digest)
    outcome = fetch_artifact(identity, destination, settings=settings)
    if report is not None:
        report.write_text(json.dumps(outcome.to_dict(), indent=2))
    typer.echo(f"{kind}: {outcome.status}: {outcome.reason}", err=True)
    if outcome.status == FAILED:
        raise typer.Exit(1)
