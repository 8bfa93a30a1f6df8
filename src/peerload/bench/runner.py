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

from peerload.bench.checkpoint import TensorSpec, inventory, write_checkpoint

log = logging.getLogger(__name__)

GiB = 1 << 30
GROUPS = ("limit", "storage", "peerload", "setup", "modelexpress")
TRANSPORTS = ("nixl", "transfer_engine")
# Environment of every child: UCX stays on loopback, and without ^ib every UCX process
# segfaults at exit on these machines (shared DESIGN.md).
CHILD_ENV = {"UCX_MODULES": "^ib", "UCX_NET_DEVICES": "lo"}


@dataclass
class BenchConfig:
    """What one `peerload bench` run measures."""

    size_gib: float = 2.0
    tensors: int = 500
    transports: Sequence[str] = TRANSPORTS
    repeats: int = 3
    groups: Sequence[str] = GROUPS
    out: Path = Path("bench/results")
    cache: Path | None = None  # where the checkpoint is written (default: OUT/cache)
    timeout_s: float = 300.0  # per child process
    skip: frozenset[str] = frozenset()  # case names not to run (the scaling curve skips some)

    @property
    def total_bytes(self) -> int:
        return int(self.size_gib * GiB)


class CaseFailed(RuntimeError):
    """A benchmark child process failed; carries the tail of its stderr."""


@dataclass
class Runs:
    """Raw results of one case: one dict per repeat, or the reason it could not run."""

    runs: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None


def _child_cmd(case: str, args_path: Path, out_path: Path) -> list[str]:
    return [sys.executable, "-m", "peerload.bench.cases", case, str(args_path), str(out_path)]


class Harness:
    """Spawns case processes with a shared scratch dir; seeds live until their context exits."""

    def __init__(self, scratch: Path, timeout_s: float) -> None:
        self.scratch = scratch
        self.timeout_s = timeout_s
        self.env = {**os.environ, **CHILD_ENV}
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
        with open(log_path, "wb") as err:
            try:
                proc = subprocess.run(_child_cmd(case, args_path, out_path), stdin=subprocess.DEVNULL,
                                      stdout=err, stderr=err, env=self.env, timeout=self.timeout_s)
            except subprocess.TimeoutExpired:
                raise CaseFailed(f"{case}: no result within {self.timeout_s:.0f} s") from None
        wall = time.perf_counter() - started
        # A result written before a crash at exit still counts; the exit code is recorded.
        if not out_path.exists():
            raise CaseFailed(f"{case}: exit code {proc.returncode}: {_tail(log_path)}")
        result = json.loads(out_path.read_text())
        result["process_s"] = wall
        result["load1"] = load1
        if proc.returncode != 0:
            result["exit_code"] = proc.returncode
        return result

    @contextmanager
    def seed(self, case: str, args: dict[str, Any]) -> Iterator[Path]:
        """Start a seed process; yields its ready file once written; stops it on exit."""
        args_path, out_path, log_path = self._paths(case)
        ready = out_path.with_suffix(".ready")
        args_path.write_text(json.dumps({**args, "ready": str(ready)}))
        with open(log_path, "wb") as err:
            proc = subprocess.Popen(_child_cmd(case, args_path, out_path), stdin=subprocess.PIPE,
                                    stdout=err, stderr=err, env=self.env)
        try:
            deadline = time.monotonic() + self.timeout_s
            while not ready.exists():
                if proc.poll() is not None:
                    raise CaseFailed(f"{case}: exited with {proc.returncode} before ready: {_tail(log_path)}")
                if time.monotonic() > deadline:
                    raise CaseFailed(f"{case}: not ready within {self.timeout_s:.0f} s")
                time.sleep(0.05)
            yield ready
        finally:
            assert proc.stdin is not None
            proc.stdin.close()  # the seed serves until its stdin closes
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _tail(path: Path, n: int = 1500) -> str:
    text = path.read_text(errors="replace").strip()
    return text[-n:] if text else "(no output)"


def _once(runs: Runs, run: Callable[[], dict[str, Any]], label: str) -> None:
    try:
        runs.runs.append(run())
    except CaseFailed as exc:
        runs.error = str(exc)
        log.warning("%s failed: %s", label, exc)
        return
    log.info("%s: %.3f s", label, runs.runs[-1]["seconds"])


def measure(config: BenchConfig, progress: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Run the configured groups; the results document (see `summarise`)."""
    from peerload.coordinator.server import serve
    from peerload.settings import Settings

    specs = inventory(config.total_bytes, config.tensors)
    cache = config.cache or config.out / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    ckpt = cache / f"llama-{sum(s.nbytes for s in specs)}-{len(specs)}.safetensors"
    progress(f"checkpoint {ckpt}")
    write_checkpoint(ckpt, specs)
    base = {"specs": [[s.name, list(s.shape)] for s in specs], "path": str(ckpt),
            "model_name": f"peerload-bench/llama-{len(specs)}", "timeout_s": config.timeout_s}
    raw: dict[str, Runs] = {}
    groups = set(config.groups)
    server = serve(Settings.load(env={}), port=0) if groups & {"peerload", "setup"} else None
    try:
        with tempfile.TemporaryDirectory(prefix="peerload-bench-") as tmp, ExitStack() as seeds:
            h = Harness(Path(tmp), config.timeout_s)
            coord = {"coordinator": server.address} if server else {}
            plan: list[tuple[str, str, dict[str, Any]]] = []  # (result name, case, args)
            if "limit" in groups:
                plan += [("limit", "limit", {}), ("limit_prefault", "limit_prefault", {})]
            if "storage" in groups:
                plan += [("safetensors_warm", "safetensors_load", {"cold": False}),
                         ("safetensors_cold", "safetensors_load", {"cold": True})]
            for kind in config.transports if groups & {"peerload", "setup"} else ():
                # One model name per transport: a target must only find the seed of its own kind.
                own = {**coord, "transport": kind, "model_name": f"{base['model_name']}-{kind}"}
                try:
                    ready = seeds.enter_context(h.seed("seed", {**base, **own}))
                except CaseFailed as exc:
                    raw[f"peerload_{kind}"] = Runs(error=f"seed: {exc}")
                    continue
                run_args = {**own, "seed_ready": str(ready)}
                if "peerload" in groups:
                    plan += [(f"peerload_{kind}", "target", {**run_args, "verify": True}),
                             (f"peerload_{kind}_noverify", "target", {**run_args, "verify": False})]
                if "setup" in groups:
                    plan.append((f"setup_{kind}", "setup", run_args))
            if "modelexpress" in groups:
                name = "modelexpress_nixl"
                # Not imported here: its p2p_pb2 clashes with ours in protobuf's default pool.
                if importlib.util.find_spec("modelexpress") is None:
                    raw[name] = Runs(error="modelexpress is not installed "
                                           "(pip install --no-deps modelexpress==0.7.0)")
                else:
                    try:
                        ready = seeds.enter_context(h.seed("mx_seed", base))
                        plan.append((name, "mx_target", {"seed_ready": str(ready)}))
                    except CaseFailed as exc:
                        raw[name] = Runs(error=f"seed: {exc}")
            plan = [p for p in plan if p[0] not in config.skip]
            # Round-robin over the cases, so a slow spell on a shared machine hits all of them.
            for rep in range(config.repeats):
                progress(f"round {rep + 1}/{config.repeats}")
                for name, case, args in plan:
                    runs = raw.setdefault(name, Runs())
                    if runs.error is None:
                        _once(runs, lambda: h.run(case, {**base, **args}), f"{name} {rep + 1}/{config.repeats}")
    finally:
        if server is not None:
            server.stop(grace_s=0)
    return summarise(raw, config, specs)


def _stats(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def summarise(raw: dict[str, Runs], config: BenchConfig, specs: Sequence[TensorSpec]) -> dict[str, Any]:
    """Medians/min/max per case (seconds and GB/s), breakdowns, ratios against the targets."""
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
        if r.error:
            entry["error"] = r.error
        cases[name] = entry
    return {
        "config": {"size_gib": config.size_gib, "bytes": nbytes, "tensors": len(specs),
                   "largest_tensor_bytes": max(s.nbytes for s in specs), "repeats": config.repeats,
                   "transports": list(config.transports), "groups": list(config.groups)},
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


# Issue 5's targets: ratio name -> (threshold, "higher" is better, what it means).
TARGETS = {
    "p2p_cold_to_limit": (0.8, "cold P2P load >= 0.8x the fresh-memory copy limit"),
    "p2p_cold_vs_cold_storage": (3.0, ">= 3x faster than cold-cache safetensors"),
    "p2p_cold_vs_modelexpress": (1.0, "faster end to end than the modelexpress client"),
}
SETUP_TARGET_S = 0.3


def ratios(cases: dict[str, Any], transports: Sequence[str]) -> dict[str, Any]:
    """Speed ratios (>1 = P2P faster); headline ones use the first transport, verified."""
    limit, cold = _median(cases, "limit"), _median(cases, "safetensors_cold")
    warm, mx = _median(cases, "safetensors_warm"), _median(cases, "modelexpress_nixl")
    per: dict[str, dict[str, float | None]] = {}
    for kind in transports:
        for suffix in ("", "_noverify"):
            p2p = _median(cases, f"peerload_{kind}{suffix}")
            per[f"{kind}{suffix}"] = {
                "p2p_cold_to_limit": _ratio(limit, p2p),
                "p2p_cold_to_limit_prefault": _ratio(_median(cases, "limit_prefault"), p2p),
                "p2p_cold_vs_cold_storage": _ratio(cold, p2p),
                "p2p_cold_vs_warm_storage": _ratio(warm, p2p),
                "p2p_cold_vs_modelexpress": _ratio(mx, p2p),
            }
    head = dict(per.get(transports[0], {})) if transports else {}
    out: dict[str, Any] = {k: head.get(k) for k in (*TARGETS, "p2p_cold_to_limit_prefault",
                                                     "p2p_cold_vs_warm_storage")}
    out["p2p_noverify_vs_modelexpress"] = per.get(f"{transports[0]}_noverify", {}).get(
        "p2p_cold_vs_modelexpress") if transports else None
    out["setup_s"] = _median(cases, f"setup_{transports[0]}") if transports else None
    out["per_transport"] = per
    targets = {k: {"target": t, "value": out[k], "met": out[k] is not None and out[k] >= t, "what": what}
               for k, (t, what) in TARGETS.items()}
    targets["setup_s"] = {"target": SETUP_TARGET_S, "value": out["setup_s"],
                          "met": out["setup_s"] is not None and out["setup_s"] <= SETUP_TARGET_S,
                          "what": "setup (agent, registration, handshake) <= 0.3 s"}
    out["targets"] = targets
    return out


def machine() -> dict[str, Any]:
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
    return {"cpus": os.cpu_count(), "memory_gib": round(mem / GiB, 1), "kernel": platform.release(),
            "python": platform.python_version(), "torch": torch.__version__, "thp": thp,
            "host": platform.node(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "loadavg_at_end": list(os.getloadavg())}
