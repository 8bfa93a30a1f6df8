"""`peerload sources`: the registry as a table or JSON."""

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
    """Every listed worker with its status and transport (one GetMetadata per worker)."""
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
    for column in ("model", "source id", "worker", "rank", "status", "age", "transport"):
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
    """List the source workers the coordinator knows: model, id, worker, rank, status, age, transport."""
    settings = Settings.load(coordinator=coordinator)
    with CoordinatorClient.from_settings(settings) as client:
        rows = collect(client)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
    else:
        render(rows)
