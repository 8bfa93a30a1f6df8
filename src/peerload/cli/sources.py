"""`peerload sources`: the registry as a table or JSON, peerload and ModelExpress workers alike;
`--explain`: what a load would find there."""

import json
import sys
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from peerload._grpc import PLAINTEXT, ChannelSecurity
from peerload.cli._model_options import COORDINATOR_DEFAULT, identity_command, identity_options
from peerload.client import CoordinatorClient, SourceStatus, WorkerRecord
from peerload.errors import ConfigError, SeedServiceError
from peerload.identity import BackendFramework
from peerload.settings import Settings

if TYPE_CHECKING:
    from peerload.loader.near_miss import Explanation


# A loading worker is asked for its parts with this deadline: a row must not hang the listing.
HOLDINGS_TIMEOUT_S = 2.0


def holdings(record: WorkerRecord, security: ChannelSecurity = PLAINTEXT) -> str:
    """ "held/total" verified parts of a peerload worker still loading ("?" when it does not answer)."""
    from peerload.seed_client import SeedClient

    try:
        with SeedClient(record.manifest_endpoint, record.worker_id, HOLDINGS_TIMEOUT_S, security) as seed:
            count = len(seed.manifest().parts())
            held = seed.availability(count)
    except SeedServiceError:
        return "?"
    return f"{count}/{count}" if held.parts is None else f"{len(held.parts)}/{count}"


def collect(
    client: CoordinatorClient, model: str | None = None, security: ChannelSecurity = PLAINTEXT
) -> list[dict[str, Any]]:
    """Every listed worker (of `model`, if given) with its status, kind, mode and transport (one
    GetMetadata each; a peerload worker still loading is also asked how many parts it holds)."""
    rows = []
    for ref in client.list_sources(model_name=model):
        record = client.get_metadata(ref.mx_source_id, ref.worker_id)
        if record is None:  # deleted between the two calls
            continue
        loading = record.status == SourceStatus.INITIALIZING and record.kind == "peerload"
        rows.append(
            {
                "model": ref.model_name,
                "mx_source_id": ref.mx_source_id,
                "worker_id": ref.worker_id,
                "worker_rank": ref.worker_rank,
                "status": record.status.name,
                # peerload | modelexpress; how ModelExpress readers reach it: p2p | centralized
                "kind": record.kind,
                "mode": record.mode,
                "updated_at_ms": ref.updated_at_ms,
                "age_s": round(ref.age_s, 3),
                "transport": record.transport,
                "accelerator": ref.accelerator,
                "source_load": ref.source_load,
                "tensors": len(record.tensors),
                # verified parts / all parts, for a peerload worker still loading (serving as it loads)
                "parts": holdings(record, security) if loading and record.manifest_endpoint else None,
            }
        )
    return rows


def render(rows: list[dict[str, Any]], console: Console | None = None) -> None:
    """Print rows from `collect` as a rich table."""
    table = Table(title=f"{len(rows)} source worker(s)", title_justify="left")
    for column in ("model", "source id", "worker", "rank", "status", "parts", "age", "kind", "transport"):
        table.add_column(column, justify="right" if column in ("rank", "age") else "left")
    colors = {"READY": "green", "INITIALIZING": "yellow", "STALE": "red"}
    for row in rows:
        status = row["status"]
        table.add_row(
            row["model"],
            row["mx_source_id"],
            row["worker_id"],
            str(row["worker_rank"]),
            f"[{colors.get(status, 'white')}]{status}[/]",
            row["parts"] or "-",
            f"{row['age_s']:.1f}s",
            f"{row['kind']} ({row['mode']})",
            row["transport"] or "-",
        )
    # Piped output has no terminal width; do not truncate ids to 80 columns.
    (console or Console(width=None if sys.stdout.isatty() else 160)).print(table)


@identity_command
def sources(
    identity_values: dict[str, Any],
    coordinator: Optional[str] = typer.Option(
        None,
        help="Coordinator HOST:PORT, replicas comma-separated.",
        show_default=COORDINATOR_DEFAULT,
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    model: Annotated[
        Optional[str], typer.Option("--model", help="Only the sources of this model name.", show_default="every model")
    ] = None,
    explain: Annotated[
        bool,
        typer.Option(
            "--explain",
            help="Say what `peerload load PATH --model-name NAME` with the same options would find: READY matches, "
            "else the near misses and what to change. Takes PATH and load's identity options.",
        ),
    ] = False,
    framework: Annotated[
        str, typer.Option("--framework", help="With --explain: the engine of the load: unknown, vllm, sglang, trt_llm.")
    ] = "unknown",
) -> None:
    """List the source workers the coordinator knows: model, id, worker, rank, status, parts, age, kind, transport.

    A worker still loading (INITIALIZING) already serves the parts it has verified; `parts` shows
    how many it holds of all.

    Kind is peerload or modelexpress (the official client), with how ModelExpress readers reach
    the worker: p2p (its WorkerService) or centralized (the coordinator record).
    """
    settings = Settings.load(coordinator=coordinator)
    if explain:
        explanation = _explain(settings, identity_values, framework)
        if as_json:
            typer.echo(json.dumps(explanation_dict(explanation), indent=2))
        else:
            typer.echo("\n".join(explanation_lines(explanation)))
        return
    with CoordinatorClient.from_settings(settings) as client:
        rows = collect(client, model=model, security=ChannelSecurity.from_settings(settings))
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
    else:
        render(rows)


def _explain(settings: Settings, values: dict[str, Any], framework: str) -> "Explanation":
    from peerload.loader.survey import explain_sources

    if values["path"] is None or values["model_name"] is None:
        raise ConfigError("--explain needs PATH and --model-name, as `peerload load` takes them")
    try:
        engine = BackendFramework[framework.upper()]
    except KeyError:
        names = ", ".join(f.name.lower() for f in BackendFramework)
        raise ConfigError(f"--framework {framework!r} is not one of {names}") from None
    identity, rank = identity_options(**values, backend_framework=engine)
    with CoordinatorClient.from_settings(settings) as client:
        return explain_sources(client, identity, rank)


def explanation_lines(explanation: "Explanation") -> list[str]:
    """`--explain` as text: what is looked for, then the matches or the near misses with their fixes."""
    ident = explanation.identity
    lines = [
        f"a load of {ident.model_name!r} at rank {explanation.rank} looks for source id {ident.source_id()} "
        f"(dtype {ident.dtype or '-'}, quantization {ident.quantization or '-'}, tp {ident.tensor_parallel_size}, "
        f"pp {ident.pipeline_parallel_size}, ep {ident.expert_parallel_size}, "
        f"framework {BackendFramework(ident.backend_framework).name}, revision {ident.revision or '-'})"
    ]
    if explanation.matches:
        workers = ", ".join(w.worker_id for w in explanation.matches)
        lines.append(f"{len(explanation.matches)} READY source worker(s) match: {workers}")
    elif not explanation.near_misses:
        lines.append("no READY source matches, and no source differs in only one or two fields")
    else:
        lines.append("no READY source matches; near misses:")
    for miss in explanation.near_misses:
        lines += [f"  - {miss.describe()}", f"    to use it: {miss.fix}"]
    return lines


def explanation_dict(explanation: "Explanation") -> dict[str, Any]:
    """`--explain --json`."""
    return {
        "identity": explanation.identity.as_dict(),
        "source_id": explanation.identity.source_id(),
        "rank": explanation.rank,
        "matches": [w.worker_id for w in explanation.matches],
        "near_misses": [m.as_dict() for m in explanation.near_misses],
    }
