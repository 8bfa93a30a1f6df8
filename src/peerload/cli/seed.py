"""`peerload seed PATH`: load a checkpoint from disk and serve it as a READY source until signalled."""

import json
import os
import logging
from pathlib import Path
from typing import Annotated, Optional

import typer

from peerload.client import CoordinatorClient
from peerload.cli._model_options import (
    CoordinatorOpt, EpSizeOpt, ModelNameOpt, PathArg, PpRankOpt, PpSizeOpt, QuantizeOpt, RevisionOpt,
    TpRankOpt, TpSizeOpt, TransportOpt, WorkerIdOpt, model_options, settings_for, wait_for_signal,
)

log = logging.getLogger(__name__)


def seed(
    path: PathArg,
    model_name: ModelNameOpt,
    coordinator: CoordinatorOpt = None,
    transport: TransportOpt = None,
    revision: RevisionOpt = "",
    tp_size: TpSizeOpt = 1,
    tp_rank: TpRankOpt = 0,
    pp_size: PpSizeOpt = 1,
    pp_rank: PpRankOpt = 0,
    ep_size: EpSizeOpt = 1,
    quantize: QuantizeOpt = None,
    worker_id: WorkerIdOpt = None,
    ready_file: Annotated[Optional[Path], typer.Option(
        "--ready-file", help="Write {worker_id, source_id, rank} as JSON here once READY.")] = None,
) -> None:
    """Load PATH from disk, post-process, publish it, and heartbeat READY until SIGINT/SIGTERM."""
    from peerload.adapters import hf  # torch-heavy: imported per command to keep the CLI fast
    from peerload.seed.publisher import publish

    opts = model_options(path, model_name, revision, tp_size, tp_rank, pp_size, pp_rank, ep_size, quantize)
    settings = settings_for(coordinator, transport)
    # Fail before reading gigabytes from disk if nobody can be told about them.
    with CoordinatorClient.from_settings(settings) as client:
        client.health_check()
    tensors, _model = hf.seed_tensors(path, quantize=quantize, tp_size=tp_size, tp_rank=tp_rank)
    with publish(tensors, opts.identity, rank=opts.rank, settings=settings, worker_id=worker_id) as pub:
        typer.echo(f"seeding {model_name} rank {opts.rank}: {len(pub.manifest.tensors)} tensors, "
                   f"{pub.manifest.total_bytes / 2**20:.1f} MiB, source {pub.source_id}, "
                   f"worker {pub.worker_id}, transport {pub.transport.kind}, "
                   f"coordinator {settings.coordinator}", err=True)
        if ready_file is not None:
            tmp = ready_file.with_suffix(ready_file.suffix + ".tmp")
            tmp.write_text(json.dumps({"worker_id": pub.worker_id, "source_id": pub.source_id,
                                       "rank": opts.rank, "pid": os.getpid()}))
            tmp.rename(ready_file)  # atomic: readers never see half a file
        wait_for_signal()
        typer.echo("stopping: marking the source STALE", err=True)
