"""Run every data-plane case in fresh processes, several times, and summarise them side by side."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from peerload._process import log_tail, spawn, stop_process, wait_ready_file
from peerload.components import TRANSPORTS
from peerload.errors import PeerloadError
from peerload.synthetic import TensorSpec, inventory, write_checkpoint
from peerload.transport.ucx_env import LOOPBACK

log = logging.getLogger(__name__)

GiB = 1 << 30
GROUPS = ("limit", "storage", "peerload", "setup", "wire", "modelexpress", "digest")
# The groups whose cases read from a peerload seed (one seed per transport, one coordinator).
PEER_GROUPS = frozenset({"peerload", "setup", "wire"})
PlanItem = tuple[str, str, dict[str, Any]]  # (result name, case, args)
# The cases whose runs are checked for outliers (the limit was bimodal on shared cores: 6.36 s in
# one round, 0.78 s in the others), and re-measured when one is found.
OUTLIER_CASES = ("limit", "limit_prefault")


@dataclass
class BenchConfig:
    """What one `peerload bench data` run measures."""

    size_gib: float = 2.0
    tensors: int = 500
    transports: Sequence[str] = tuple(TRANSPORTS)
    repeats: int = 3
    groups: Sequence[str] = GROUPS
    out: Path = Path("bench/results")
    cache: Path | None = None  # where the checkpoint is written (default: OUT/cache)
    timeout_s: float = 300.0  # per child process
    skip: frozenset[str] = frozenset()  # case names not to run (the scaling curve skips some)
    outlier_factor: float = 2.0  # a limit run > this x the median of its other runs is an outlier
    remeasure: int = 2  # re-runs of an outlier before it is only reported

    @property
    def total_bytes(self) -> int:
        return int(self.size_gib * GiB)


class CaseFailed(RuntimeError):
    """A benchmark child process failed; carries the tail of its log."""


@dataclass
class Runs:
    """Raw results of one case: one dict per repeat, or the reason it could not run."""

    runs: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    outliers: list[dict[str, Any]] = field(default_factory=list)  # see _Measurement.remeasure_outliers


def _child_cmd(case: str, args_path: Path, out_path: Path) -> list[str]:
    return [sys.executable, "-m", "peerload.bench.cases", case, str(args_path), str(out_path)]


class Harness:
    """Spawns case processes with a shared scratch dir; seeds live until their context exits."""

    def __init__(self, scratch: Path, timeout_s: float) -> None:
        self.scratch = scratch
        self.timeout_s = timeout_s
        # One host: UCX on loopback unless the user chose devices. peerload's transports add the
        # other UCX defaults themselves; ModelExpress runs with its own (see cases.main).
        self.env = {**LOOPBACK, **os.environ}
        self._n = 0

    def _paths(self, case: str) -> tuple[Path, Path, Path]:
        self._n += 1
        stem = self.scratch / f"{self._n:03d}-{case}"
        return stem.with_suffix(".args.json"), stem.with_suffix(".out.json"), stem.with_suffix(".log")

    def run(self, case: str, args: dict[str, Any]) -> dict[str, Any]:
        """Run `case` in a fresh process; its JSON result, plus the process wall time."""
        args_path, out_path, log_path = self._paths(case)
        args_path.write_text(json.dumps(args))
        load1 = os.getloadavg()[0]  # other work on the machine skews every timing: record it
        started = time.perf_counter()
        proc = spawn(_child_cmd(case, args_path, out_path), log_path, env=self.env)
        try:
            returncode = proc.wait(timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise CaseFailed(f"{case}: no result within {self.timeout_s:.0f} s") from None
        wall = time.perf_counter() - started
        # A result written before a crash at exit still counts; the exit code is recorded.
        if not out_path.exists():
            raise CaseFailed(f"{case}: exit code {returncode}: {log_tail(log_path)}")
        result = json.loads(out_path.read_text())
        result["process_s"] = wall
        result["load1"] = load1
        if returncode != 0:
            result["exit_code"] = returncode
        return result

    @contextmanager
    def seed(self, case: str, args: dict[str, Any]) -> Iterator[Path]:
        """Start a seed process; yields its ready file once written; stops it on exit."""
        args_path, out_path, log_path = self._paths(case)
        ready = out_path.with_suffix(".ready")
        args_path.write_text(json.dumps({**args, "ready": str(ready)}))
        proc = spawn(_child_cmd(case, args_path, out_path), log_path, env=self.env, stdin=subprocess.PIPE)
        try:
            try:
                wait_ready_file(proc, ready, self.timeout_s, what=case)
            except PeerloadError as exc:
                raise CaseFailed(f"{exc}: {log_tail(log_path)}") from None
            yield ready
        finally:
            stop_process(proc, timeout_s=30, close_stdin=True)  # a seed serves until its stdin closes


class _Measurement:
    """One `measure` call: the seeds it started, its plan of runs, the raw results so far."""

    def __init__(
        self, config: BenchConfig, harness: Harness, seeds: ExitStack, base: dict[str, Any], coordinator: dict[str, str]
    ) -> None:
        self.config = config
        self.harness = harness
        self.seeds = seeds
        self.base = base  # args every case gets: tensor specs, checkpoint path, model name
        self.coordinator = coordinator
        self.raw: dict[str, Runs] = {}

    def plan(self) -> list[PlanItem]:
        """The runs of one round; starts the seeds that the peer cases read from."""
        groups = set(self.config.groups)
        items: list[PlanItem] = []
        if "limit" in groups:
            # The limit is a P2P target minus the transport: a fresh process copies another
            # process's resident bytes (shared memory) into fresh tensors of the same inventory.
            holder = self._seed("shm_holder", self.base, "limit")
            if holder is not None:
                items += [
                    ("limit", "limit", {"holder_ready": str(holder)}),
                    ("limit_prefault", "limit", {"holder_ready": str(holder), "prefault": True}),
                ]
        if "storage" in groups:
            items += [
                ("safetensors_warm", "safetensors_load", {"cold": False}),
                ("safetensors_cold", "safetensors_load", {"cold": True}),
            ]
        if groups & PEER_GROUPS:
            for kind in self.config.transports:
                items += self._peer_items(kind, groups)
        if "modelexpress" in groups:
            items += self._modelexpress_items()
        if "digest" in groups:
            # Verifying a part, per algorithm, beside a copy of the same resident bytes.
            items += [(f"digest_{a}", "digest", {"algorithm": a}) for a in ("copy", "xxh3_64", "wsum64")]
        return [item for item in items if item[0] not in self.config.skip]

    def _seed(self, case: str, args: dict[str, Any], name: str) -> Path | None:
        """A seed's ready file; None, with `name` marked failed, if it did not start."""
        try:
            return self.seeds.enter_context(self.harness.seed(case, args))
        except CaseFailed as exc:
            self.raw[name] = Runs(error=f"seed: {exc}")
            return None

    def _peer_items(self, kind: str, groups: set[str]) -> list[PlanItem]:
        # One model name per transport: a target must only find the seed of its own kind.
        own = {**self.coordinator, "transport": kind, "model_name": f"{self.base['model_name']}-{kind}"}
        ready = self._seed("seed", {**self.base, **own}, f"peerload_{kind}")
        if ready is None:
            return []
        args = {**own, "seed_ready": str(ready)}
        items: list[PlanItem] = []
        if "peerload" in groups:
            items += [
                (f"peerload_{kind}", "target", {**args, "verify": True}),
                (f"peerload_{kind}_noverify", "target", {**args, "verify": False}),
            ]
        if "setup" in groups:
            items.append((f"setup_{kind}", "setup", args))
        if "wire" in groups:
            items.append((f"wire_{kind}", "wire", args))
        return items

    def _modelexpress_items(self) -> list[PlanItem]:
        name = "modelexpress_nixl"
        # Not imported here: its p2p_pb2 clashes with ours in protobuf's default pool.
        if importlib.util.find_spec("modelexpress") is None:
            self.raw[name] = Runs(error="modelexpress is not installed (pip install --no-deps modelexpress==0.7.0)")
            return []
        ready = self._seed("mx_seed", self.base, name)
        return [] if ready is None else [(name, "mx_target", {"seed_ready": str(ready)})]

    def run_rounds(self, plan: list[PlanItem], progress: Callable[[str], None]) -> None:
        """Every run of the plan once per repeat, round-robin, so a slow spell hits all cases alike."""
        repeats = self.config.repeats
        for rep in range(repeats):
            progress(f"round {rep + 1}/{repeats}")
            for name, case, args in plan:
                self._run_once(name, case, args, f"{name} {rep + 1}/{repeats}")

    def remeasure_outliers(self, plan: list[PlanItem], progress: Callable[[str], None]) -> None:
        """Re-run each outlier run of OUTLIER_CASES, up to `remeasure` times, until one is not an outlier.

        A re-run that is in line replaces the outlier in its round (action "remeasured"); else the
        outlier stays and is only reported (action "reported"), and the per-round ratio leaves it out.
        """
        factor = self.config.outlier_factor
        for name, case, args in plan:
            runs = self.raw.get(name)
            if name not in OUTLIER_CASES or runs is None or runs.error is not None:
                continue
            for i in outlier_rounds([r["seconds"] for r in runs.runs], factor):
                others = statistics.median(r["seconds"] for j, r in enumerate(runs.runs) if j != i)
                entry: dict[str, Any] = {
                    "round": i + 1, "seconds": runs.runs[i]["seconds"], "others_median": others,
                    "remeasured": [], "action": "reported",
                }  # fmt: skip
                for _ in range(self.config.remeasure):
                    try:
                        result = self.harness.run(case, {**self.base, **args})
                    except CaseFailed as exc:
                        entry["error"] = str(exc)
                        break
                    entry["remeasured"].append(result["seconds"])
                    if result["seconds"] <= factor * others:
                        runs.runs[i] = {**result, "remeasured_from": entry["seconds"]}
                        entry["action"] = "remeasured"
                        break
                runs.outliers.append(entry)
                progress(f"{name} round {i + 1}: {entry['seconds']:.3f} s against {others:.3f} s in the others: "
                         f"{entry['action']} {entry['remeasured']}")  # fmt: skip

    def _run_once(self, name: str, case: str, args: dict[str, Any], label: str) -> None:
        runs = self.raw.setdefault(name, Runs())
        if runs.error is not None:  # a case that failed once is not run again
            return
        try:
            runs.runs.append(self.harness.run(case, {**self.base, **args}))
        except CaseFailed as exc:
            runs.error = str(exc)
            log.warning("%s failed: %s", label, exc)
            return
        log.info("%s: %.3f s", label, runs.runs[-1]["seconds"])


def _checkpoint(config: BenchConfig, specs: list[TensorSpec], progress: Callable[[str], None]) -> Path:
    """Write (or reuse) the synthetic checkpoint in the cache directory."""
    cache = config.cache or config.out / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"llama-{sum(s.nbytes for s in specs)}-{len(specs)}.safetensors"
    progress(f"checkpoint {path}")
    return write_checkpoint(path, specs)


@contextmanager
def _coordinator(groups: Sequence[str]) -> Iterator[dict[str, str]]:
    """An in-process coordinator when a case needs one; yields the args that point cases at it."""
    if not set(groups) & PEER_GROUPS:
        yield {}
        return
    from peerload.coordinator.server import serve
    from peerload.settings import Settings

    server = serve(Settings.load(env={}), port=0)
    try:
        yield {"coordinator": server.address}
    finally:
        server.stop(grace_s=0)


def measure(config: BenchConfig, progress: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Run the configured groups, every case in fresh processes; the results document (see `summarise`)."""
    specs = inventory(config.total_bytes, config.tensors)
    path = _checkpoint(config, specs, progress)
    base = {
        "specs": [[s.name, list(s.shape)] for s in specs],
        "path": str(path),
        "model_name": f"peerload-bench/llama-{len(specs)}",
        "timeout_s": config.timeout_s,
    }
    with (
        _coordinator(config.groups) as coordinator,
        tempfile.TemporaryDirectory(prefix="peerload-bench-") as tmp,
        ExitStack() as seeds,
    ):
        m = _Measurement(config, Harness(Path(tmp), config.timeout_s), seeds, base, coordinator)
        plan = m.plan()
        m.run_rounds(plan, progress)
        m.remeasure_outliers(plan, progress)
    return summarise(m.raw, config, specs)


def outlier_rounds(seconds: Sequence[float], factor: float) -> list[int]:
    """Indices of the runs that took more than `factor` x the median of the case's other runs."""
    if len(seconds) < 2:
        return []
    return [i for i, x in enumerate(seconds) if x > factor * statistics.median([*seconds[:i], *seconds[i + 1 :]])]


def _stats(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def summarise(raw: dict[str, Runs], config: BenchConfig, specs: Sequence[TensorSpec]) -> dict[str, Any]:
    """Medians/min/max per case (seconds and GB/s), breakdowns, ratios and goals."""
    nbytes = sum(s.nbytes for s in specs)
    cases: dict[str, Any] = {}
    for name, r in raw.items():
        entry: dict[str, Any] = {}
        if r.runs:
            secs = [run["seconds"] for run in r.runs]
            entry = {**_stats(secs), "runs": secs, "gbps": nbytes / statistics.median(secs) / 1e9}
            if "bytes_ok" in r.runs[0]:
                entry["bytes_ok"] = all(run["bytes_ok"] for run in r.runs)
            parts = _breakdown(r.runs)
            if parts:
                entry["breakdown_median_s"] = parts
        if r.outliers:
            entry["outliers"] = r.outliers
        if r.error:
            entry["error"] = r.error
        cases[name] = entry
    return {
        "config": {
            "size_gib": config.size_gib,
            "bytes": nbytes,
            "tensors": len(specs),
            "largest_tensor_bytes": max(s.nbytes for s in specs),
            "repeats": config.repeats,
            "transports": list(config.transports),
            "groups": list(config.groups),
            "outlier_factor": config.outlier_factor,
            "remeasure": config.remeasure,
        },
        "machine": machine(),
        "cases": cases,
        "ratios": ratios(cases, config.transports),
    }


def _breakdown(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Median of each per-run timing part (loader phases, agent/register/connect...)."""
    keys: dict[str, list[float]] = {}
    for run in runs:
        flat = {**run.get("phases", {}), **{k: v for k, v in run.items() if isinstance(v, float)}}
        for k, v in flat.items():
            if k != "seconds":
                keys.setdefault(k, []).append(v)
    return {k: statistics.median(v) for k, v in keys.items() if len(v) == len(runs)}


def _median(cases: dict[str, Any], name: str) -> float | None:
    return cases.get(name, {}).get("median")


def _ratio(num: float | None, den: float | None) -> float | None:
    return num / den if num and den else None


# Performance goals: ratio name -> (least value that meets it, what it means); higher is better.
GOALS = {
    "p2p_cold_to_limit": (0.8, "cold P2P load >= 0.8x the fresh-memory copy limit"),
    "p2p_cold_vs_cold_storage": (3.0, ">= 3x faster than cold-cache safetensors"),
    "p2p_cold_vs_modelexpress": (1.0, "faster end to end than the modelexpress client"),
}
SETUP_GOAL_S = 0.3


def _per_round(cases: dict[str, Any], limit: str, p2p: str) -> list[float]:
    """limit / P2P for each round in which both ran (runs are in round order)."""
    a, b = cases.get(limit, {}).get("runs") or [], cases.get(p2p, {}).get("runs") or []
    return [x / y for x, y in zip(a, b, strict=False) if x and y]


def _reported_rounds(cases: dict[str, Any]) -> list[int]:
    """Rounds (1-based) whose limit run is still an outlier after re-measuring."""
    return [o["round"] for o in cases.get("limit", {}).get("outliers", []) if o["action"] == "reported"]


def ratios(cases: dict[str, Any], transports: Sequence[str]) -> dict[str, Any]:
    """Speed ratios (>1 = P2P faster) and goals; headline ones use the first transport, verified."""
    limit, cold = _median(cases, "limit"), _median(cases, "safetensors_cold")
    warm, mx = _median(cases, "safetensors_warm"), _median(cases, "modelexpress_nixl")
    per: dict[str, dict[str, Any]] = {}
    for kind in transports:
        for suffix in ("", "_noverify"):
            p2p = _median(cases, f"peerload_{kind}{suffix}")
            per[f"{kind}{suffix}"] = {
                "p2p_cold_to_limit": _ratio(limit, p2p),
                "p2p_cold_to_limit_per_round": _per_round(cases, "limit", f"peerload_{kind}{suffix}"),
                "p2p_cold_to_limit_prefault": _ratio(_median(cases, "limit_prefault"), p2p),
                "p2p_cold_vs_cold_storage": _ratio(cold, p2p),
                "p2p_cold_vs_warm_storage": _ratio(warm, p2p),
                "p2p_cold_vs_modelexpress": _ratio(mx, p2p),
            }
    head = dict(per.get(transports[0], {})) if transports else {}
    out: dict[str, Any] = {k: head.get(k) for k in (*GOALS, "p2p_cold_to_limit_prefault", "p2p_cold_vs_warm_storage")}
    out["p2p_noverify_vs_modelexpress"] = (
        per.get(f"{transports[0]}_noverify", {}).get("p2p_cold_vs_modelexpress") if transports else None
    )
    out["setup_s"] = _median(cases, f"setup_{transports[0]}") if transports else None
    # Digest throughput as a share of a copy of the same bytes (>= 0.25x is the GPU goal).
    copy = _median(cases, "digest_copy")
    out["digest_vs_copy"] = {a: _ratio(copy, _median(cases, f"digest_{a}")) for a in ("xxh3_64", "wsum64")}
    # The limit and P2P of the same round ran back to back: their ratio cancels slow spells.
    # A round whose limit stayed an outlier after re-measuring is left out (and named).
    reported = _reported_rounds(cases)
    per_round: list[float] = head.get("p2p_cold_to_limit_per_round") or []
    rounds = [x for i, x in enumerate(per_round) if i + 1 not in reported]
    out["p2p_cold_to_limit_per_round"] = per_round
    out["p2p_cold_to_limit_same_round_median"] = statistics.median(rounds) if rounds else None
    out["limit_outliers"] = {
        "rule": "a limit run longer than outlier_factor x the median of its other runs; re-measured up to "
        "remeasure times, replaced by the first re-run in line (remeasured) or kept and left out of the "
        "same-round median (reported)",
        "rounds": cases.get("limit", {}).get("outliers", []),
        "left_out_of_same_round_median": reported,
    }
    out["per_transport"] = per
    out["goals"] = goals(out)
    return out


def goals(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each goal with its threshold, the measured value and whether it is met (None = not measured)."""
    out = {
        k: {"goal": least, "value": values[k], "met": values[k] is not None and values[k] >= least, "what": what}
        for k, (least, what) in GOALS.items()
    }
    setup = values["setup_s"]
    out["setup_s"] = {
        "goal": SETUP_GOAL_S,
        "value": setup,
        "met": setup is not None and setup <= SETUP_GOAL_S,
        "what": f"setup (agent, registration, handshake) <= {SETUP_GOAL_S} s",
    }
    return out


def machine() -> dict[str, Any]:
    """What the numbers were measured on (the load average too: the machine is shared)."""
    mem = 0
    try:
        with open("/proc/meminfo") as fh:
            mem = int(fh.readline().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    thp = ""
    try:
        thp = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().strip()
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(mem / GiB, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "thp": thp,
        "host": platform.node(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "loadavg_at_end": list(os.getloadavg()),
    }
