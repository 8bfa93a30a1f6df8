"""`peerload sources`: the registry as a table or JSON, peerload and ModelExpress workers alike."""

from __future__ import annotations

import json
import sys
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from peerload.client import CoordinatorClient
from peerload.settings import Settings


def collect(client: CoordinatorClient) -> list[dict[str, Any]]:
    """Every listed worker with its status, kind, mode and transport (one GetMetadata per worker)."""
    rows = []
    for ref in client.list_sources():
        record = client.get_metadata(ref.mx_source_id, ref.worker_id)
        if record is None:  # deleted between the two calls
            continue
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
            }
        )
    return rows


def render(rows: list[dict[str, Any]], console: Console | None = None) -> None:
    """Print rows from `collect` as a rich table."""
    table = Table(title=f"{len(rows)} source worker(s)", title_justify="left")
    for column in ("model", "source id", "worker", "rank", "status", "age", "kind", "transport"):
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
            f"{row['age_s']:.1f}s",
            f"{row['kind']} ({row['mode']})",
            row["transport"] or "-",
        )
    # Piped output has no terminal width; do not truncate ids to 80 columns.
    (console or Console(width=None if sys.stdout.isatty() else 160)).print(table)


def sources(
    coordinator: Optional[str] = typer.Option(
        None, help="Coordinator HOST:PORT [default: PEERLOAD_COORDINATOR, MX_SERVER_ADDRESS or 127.0.0.1:8001]."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List the source workers the coordinator knows: model, id, worker, rank, status, age, kind, transport.

    Kind is peerload or modelexpress (the official client), with how ModelExpress readers reach
    the worker: p2p (its WorkerService) or centralized (the coordinator record).
    """
    settings = Settings.load(coordinator=coordinator)
    with CoordinatorClient.from_settings(settings) as client:
        rows = collect(client)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
    else:
        render(rows)
