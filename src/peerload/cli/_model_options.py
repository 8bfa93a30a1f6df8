"""Options shared by `peerload seed` and `peerload load`: one definition, one `ModelOptions` value.

`@model_command` adds the shared options to a command's signature (typer reads it) and hands
the command one validated `ModelOptions` instead of a dozen parameters.
"""

from __future__ import annotations

import copy
import functools
import inspect
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional, get_args

import typer

from peerload.coordinator.registry import MAX_ID_CHARS
from peerload.devices import parse_device
from peerload.errors import ConfigError, WorkerSuperseded
from peerload.identity import SourceIdentity
from peerload.settings import Settings
from peerload.telemetry import MetricsServer

if TYPE_CHECKING:
    from peerload.adapters.hf_config import Checkpoint
    from peerload.seed.publisher import Publisher


@dataclass(frozen=True)
class ModelOptions:
    """What `seed` and `load` agree on: the checkpoint, its identity and rank, and where to publish."""

    path: Path
    checkpoint: Checkpoint  # what the adapter read of `path` (config.json once), handed to it again
    identity: SourceIdentity
    rank: int
    tp_size: int
    tp_rank: int
    quantize: str | None
    coordinator: str | None
    transport: str | None
    worker_id: str | None
    advertise_host: str | None = None
    model_class: str | None = None
    allow_missing: bool = False
    allow_unused: bool = False
    device: str = "cpu"

    def hf_options(self) -> dict[str, Any]:
        """The keyword arguments of `adapters.hf.seed_tensors` / `target_tensors` these options give."""
        return {
            "quantize": self.quantize,
            "tp_size": self.tp_size,
            "tp_rank": self.tp_rank,
            "model_class": self.model_class,
            "allow_missing": self.allow_missing,
            "allow_unused": self.allow_unused,
            "device": self.device,
        }

    def settings(self, **more: Any) -> Settings:
        """Settings with this command's --coordinator / --transport / --advertise-host over env and config."""
        return Settings.load(
            coordinator=self.coordinator, transport=self.transport, advertise_host=self.advertise_host, **more
        )


# What --coordinator is when not given (every command that talks to a coordinator shows it).
COORDINATOR_DEFAULT = "PEERLOAD_COORDINATOR, else MODEL_EXPRESS_URL, else MX_SERVER_ADDRESS, else 127.0.0.1:8001"

# name -> (annotation, default); the order is the order of --help.
_SHARED: dict[str, tuple[Any, Any]] = {
    "path": (
        Annotated[Path, typer.Argument(help="A .safetensors file or a HF-style model directory.")],
        inspect.Parameter.empty,
    ),
    "model_name": (
        Annotated[str, typer.Option("--model-name", help="Model name of the source identity.")],
        inspect.Parameter.empty,
    ),
    "coordinator": (
        Annotated[
            Optional[str],
            typer.Option(
                "--coordinator",
                help="Coordinator HOST:PORT; replicas comma-separated.",
                show_default=COORDINATOR_DEFAULT,
            ),
        ],
        None,
    ),
    "transport": (
        Annotated[
            Optional[str],
            typer.Option("--transport", help="nixl or transfer_engine.", show_default="PEERLOAD_TRANSPORT, else nixl"),
        ],
        None,
    ),
    "revision": (
        Annotated[str, typer.Option("--revision", help="Model revision (part of the identity).", show_default="none")],
        "",
    ),
    "tp_size": (Annotated[int, typer.Option("--tp-size", min=1, help="Tensor-parallel size.")], 1),
    "tp_rank": (Annotated[int, typer.Option("--tp-rank", min=0, help="This process' tensor-parallel rank.")], 0),
    "pp_size": (Annotated[int, typer.Option("--pp-size", min=1, help="Pipeline-parallel size.")], 1),
    "pp_rank": (Annotated[int, typer.Option("--pp-rank", min=0, help="This process' pipeline-parallel rank.")], 0),
    "ep_size": (Annotated[int, typer.Option("--ep-size", min=1, help="Expert-parallel size.")], 1),
    "dtype": (
        Annotated[
            Optional[str],
            typer.Option(
                "--dtype",
                help="dtype the model is built in and published as (part of the identity; give seed and load the "
                "same); a bare .safetensors file keeps its stored dtypes.",
                show_default="config.json's torch_dtype, else float32",
            ),
        ],
        None,
    ),
    "quantize": (
        Annotated[
            Optional[str], typer.Option("--quantize", help="Post-processing: int8 (weight-only).", show_default="none")
        ],
        None,
    ),
    "worker_id": (
        Annotated[
            Optional[str],
            typer.Option(
                "--worker-id", help="Stable worker id, unique in the fleet.", show_default="generated, unique"
            ),
        ],
        None,
    ),
    "advertise_host": (
        Annotated[
            Optional[str],
            typer.Option(
                "--advertise-host",
                help="Address peers on other hosts reach this process at.",
                show_default="PEERLOAD_ADVERTISE_HOST, else the local address of the route to the coordinator",
            ),
        ],
        None,
    ),
    "model_class": (
        Annotated[
            Optional[str],
            typer.Option(
                "--model-class",
                help="transformers class to build, e.g. BertModel or AutoModelForMaskedLM.",
                show_default="the class config.json names",
            ),
        ],
        None,
    ),
    "allow_missing": (
        Annotated[
            bool,
            typer.Option("--allow-missing", help="Load even if the checkpoint lacks tensors of the model."),
        ],
        False,
    ),
    "allow_unused": (
        Annotated[
            bool,
            typer.Option("--allow-unused", help="Load even if the checkpoint has tensors the model does not use."),
        ],
        False,
    ),
    "device": (
        Annotated[
            str,
            typer.Option("--device", help="Where the model's tensors live: cpu, cuda or cuda:N (GPU memory)."),
        ],
        "cpu",
    ),
}

# The options that make up a load's identity and rank (`peerload sources --explain` takes them too).
IDENTITY_OPTIONS = ("path", "model_name", "revision", "tp_size", "tp_rank", "pp_size", "pp_rank", "ep_size", "dtype")


def model_command(command: Callable[..., None]) -> Callable[..., None]:
    """Give `command(model: ModelOptions, **own)` the shared options as CLI parameters."""
    return _with_options(command, "model", tuple(_SHARED), model_options)


def identity_command(command: Callable[..., None]) -> Callable[..., None]:
    """Give `command(identity_values: dict, **own)` load's identity options, all optional (None if not given)."""
    return _with_options(command, "identity_values", IDENTITY_OPTIONS, dict, optional=True)


def _with_options(
    command: Callable[..., None], param: str, names: tuple[str, ...], make: Callable[..., Any], optional: bool = False
) -> Callable[..., None]:
    """`command` with the `_SHARED` options `names` as CLI parameters, handed over as `param=make(**values)`."""
    own = [p for p in inspect.signature(command).parameters.values() if p.name != param]
    shared = []
    for name in names:
        annotation, default = _optional(name) if optional else _SHARED[name]
        shared.append(
            inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default, annotation=annotation)
        )

    @functools.wraps(command)
    def run(**values: Any) -> None:
        command(**{param: make(**{name: values.pop(name) for name in names})}, **values)

    # typer builds the command from the signature: the shared options first, then the command's own.
    run.__signature__ = inspect.Signature([*shared, *own])  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in (*shared, *own)}
    del run.__wrapped__  # or inspect.signature would follow it back to `command`
    return run


def _optional(name: str) -> tuple[Any, Any]:
    """`_SHARED[name]` with default None where it has no default (a required option made optional)."""
    annotation, default = _SHARED[name]
    if default is not inspect.Parameter.empty:
        return annotation, default
    base, info, *metadata = get_args(annotation)
    info = copy.copy(info)
    info.show_default = "none"  # e.g. --model-name, which only some uses of the command need
    params = (Optional[base], info, *metadata)  # Annotated[params] is Annotated[base, *metadata] (py3.10 syntax)
    return Annotated[params], None


def model_options(
    path: Path,
    model_name: str,
    coordinator: str | None,
    transport: str | None,
    revision: str,
    tp_size: int,
    tp_rank: int,
    pp_size: int,
    pp_rank: int,
    ep_size: int,
    quantize: str | None,
    worker_id: str | None,
    advertise_host: str | None = None,
    model_class: str | None = None,
    allow_missing: bool = False,
    allow_unused: bool = False,
    device: str = "cpu",
    dtype: str | None = None,
) -> ModelOptions:
    """Validate the shared options and the checkpoint's files, and derive the identity and rank."""
    if quantize is not None and quantize != "int8":
        raise ConfigError(f"--quantize {quantize!r} is not supported; the only choice is int8")
    if worker_id is not None and (not worker_id.strip() or len(worker_id) > MAX_ID_CHARS):
        raise ConfigError(f"--worker-id must be 1 to {MAX_ID_CHARS} characters and not blank, got {worker_id!r}")
    device = str(parse_device(device))
    identity, rank, checkpoint = _identity_and_checkpoint(
        path, model_name, revision, tp_size, tp_rank, pp_size, pp_rank, ep_size, dtype=dtype
    )
    return ModelOptions(
        path=path,
        checkpoint=checkpoint,
        identity=identity,
        rank=rank,
        tp_size=tp_size,
        tp_rank=tp_rank,
        quantize=quantize,
        coordinator=coordinator,
        transport=transport,
        worker_id=worker_id,
        advertise_host=advertise_host,
        model_class=model_class,
        allow_missing=allow_missing,
        allow_unused=allow_unused,
        device=device,
    )


def identity_options(
    path: Path,
    model_name: str,
    revision: str,
    tp_size: int,
    tp_rank: int,
    pp_size: int,
    pp_rank: int,
    ep_size: int,
    backend_framework: int = 0,
    dtype: str | None = None,
) -> tuple[SourceIdentity, int]:
    """The identity and worker rank of a seed or load of PATH with these options (its files checked)."""
    identity, rank, _ = _identity_and_checkpoint(
        path, model_name, revision, tp_size, tp_rank, pp_size, pp_rank, ep_size, backend_framework, dtype
    )
    return identity, rank


def _identity_and_checkpoint(
    path: Path,
    model_name: str,
    revision: str,
    tp_size: int,
    tp_rank: int,
    pp_size: int,
    pp_rank: int,
    ep_size: int,
    backend_framework: int = 0,
    dtype: str | None = None,
) -> tuple[SourceIdentity, int, Checkpoint]:
    """`identity_options` and the checkpoint the adapter opened for it (read once, handed on)."""
    from peerload.adapters import hf  # torch-heavy: imported only by the commands that read a model

    source = hf.checkpoint_source(
        path,
        model_name,
        revision=revision,
        tp_size=tp_size,
        tp_rank=tp_rank,
        pp_size=pp_size,
        pp_rank=pp_rank,
        ep_size=ep_size,
        backend_framework=backend_framework,
        dtype=dtype,
    )
    return source.identity, source.rank, source.checkpoint


def output_file(path: Path | None, option: str) -> None:
    """Refuse an output file option (--report, --ready-file) that cannot be written, before any work."""
    if path is None:
        return
    if path.is_dir():
        raise ConfigError(f"{option} {path} is a directory; give a file name")
    if not path.parent.is_dir():
        raise ConfigError(f"{option} {path}: directory {path.parent} does not exist")


def start_metrics(host: str, port: int | None) -> MetricsServer | None:
    """This process's /metrics on HOST:PORT when a port was given (printed on stderr).

    Raises:
        ConfigError: the port cannot be bound.
    """
    if port is None:
        return None
    try:
        server = MetricsServer(host, port)
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on {host}:{port}: {exc}; choose another --metrics-port") from None
    typer.echo(f"metrics on http://{host}:{server.port}/metrics", err=True)
    return server


def wait_for_signal(publisher: Publisher | None = None) -> signal.Signals:
    """Block until SIGINT or SIGTERM; which one came (the caller stops cleanly either way).

    Raises:
        WorkerSuperseded: another process published `publisher`'s worker id meanwhile (newest
            wins), so this one serves nobody new; the caller stops as for SIGTERM.
    """
    stop = publisher.superseded_event if publisher is not None else threading.Event()
    received: list[signal.Signals] = []

    def on_signal(signum: int, frame: object) -> None:
        received.append(signal.Signals(signum))
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    while not stop.wait(1.0):
        pass
    if not received:
        assert publisher is not None
        raise WorkerSuperseded(publisher.superseded)
    return received[0]
