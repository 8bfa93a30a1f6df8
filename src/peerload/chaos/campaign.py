"""The fault campaign: each fault a fixed number of times within a time bound; chaos.json + a table.

A fault is one entry of `FAULTS`. Network faults run on emulated hosts (`peerload.fleet`); where
those cannot be made (not root, no `nft`) they are reported as not run here, with the reason.
"""

from __future__ import annotations

import json
import os
import platform
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from peerload.chaos import fuzz
from peerload.chaos.network import FleetCluster, packet_loss, partition, reader_vanishes, seed_vanishes
from peerload.chaos.trials import (
    Cluster,
    Trial,
    coordinator_restart,
    flipped_byte,
    redis_restart,
    seed_sigkill,
    seed_sigstop,
)
from peerload.client import CoordinatorClient
from peerload.errors import FleetUnavailable
from peerload.settings import Settings
from peerload.synthetic import uniform, write_checkpoint

AnyCluster = Cluster | FleetCluster
TrialFn = Callable[[Any, random.Random], Trial]


@dataclass(frozen=True)
class Fault:
    """One fault of the campaign: what it is, how often, and on which kind of cluster."""

    name: str
    what: str
    trials: int  # full campaign
    quick: int  # `--quick` (what `make test` runs)
    run: TrialFn | None = None  # a load-level trial; None for fuzzing or not-yet-runnable faults
    cluster: str = "nixl"  # key of the cluster it runs on (see `_CLUSTERS`; "fleet": emulated hosts)
    fuzz: str = ""  # "coordinator" | "seed" | "leases" | "worker" | "manifests": `trials` messages
    needs: str = ""  # why it cannot run yet (then it is reported, not run)


FAULTS: tuple[Fault, ...] = (
    Fault("seed-sigkill", "seed SIGKILLed at a random point of the transfer", 100, 3, seed_sigkill),
    Fault(
        "seed-sigstop",
        "seed SIGSTOPped at a random point, resumed 0.5-4 s later (Mooncake, 2 s timeout)",
        20,
        2,
        seed_sigstop,
        cluster="mooncake",
    ),
    Fault(
        "coordinator-restart-memory",
        "coordinator SIGKILLed and restarted mid-load, memory store",
        20,
        2,
        coordinator_restart,
        cluster="nixl",
    ),
    Fault(
        "coordinator-restart-redis",
        "coordinator SIGKILLed and restarted mid-load, Redis store",
        20,
        2,
        coordinator_restart,
        cluster="redis",
    ),
    Fault(
        "redis-restart",
        "redis-server replaced by an empty one on its port, mid-load",
        10,
        2,
        redis_restart,
        cluster="redis",
    ),
    Fault("flipped-byte", "one byte flipped in every seed's memory after publish", 100, 3, flipped_byte),
    Fault("fuzz-coordinator", "fuzzed P2pService messages (coordinator)", 10_000, 300, fuzz="coordinator"),
    Fault("fuzz-seed", "fuzzed SeedService messages (a seed's manifest service)", 10_000, 300, fuzz="seed"),
    Fault(
        "fuzz-seed-leases",
        "fuzzed SeedService AcquireLease/ReleaseLease messages (a seed's read leases)",
        10_000,
        300,
        fuzz="leases",
    ),
    Fault(
        "fuzz-worker",
        "fuzzed WorkerService messages (a seed's ModelExpress tensor and artifact RPCs)",
        10_000,
        300,
        fuzz="worker",
    ),
    Fault("fuzz-manifests", "fuzzed manifests read by a target", 10_000, 300, fuzz="manifests"),
    Fault(
        "packet-loss-5pct",
        "5% packet loss each way between the target and one seed (emulated hosts, NIXL over tcp)",
        10,
        1,
        packet_loss,
        cluster="fleet",
    ),
    Fault(
        "partition-10s",
        "one seed's host cut off for 10 s at a random point of a load (emulated hosts, 3 s part timeout)",
        10,
        1,
        partition,
        cluster="fleet",
    ),
    Fault(
        "seed-vanishes",
        "one seed SIGSTOPped at a random point of a load, never resumed (emulated hosts, NIXL over tcp)",
        10,
        1,
        seed_vanishes,
        cluster="fleet",
    ),
    Fault(
        "reader-vanishes",
        "the target SIGKILLed at a random point of its load, then a new one (emulated hosts, NIXL over tcp)",
        10,
        1,
        reader_vanishes,
        cluster="fleet",
    ),
)
# How each kind of cluster is built: (transport, store).
_CLUSTERS = {"nixl": ("nixl", "memory"), "mooncake": ("transfer_engine", "memory"), "redis": ("nixl", "redis")}


@dataclass
class FaultResult:
    """The figures of one fault: what the docs table shows."""

    name: str
    what: str
    status: str  # "ran" | "stopped at the time bound" | "not run yet" | "not run here" | "failed to run"
    planned: int
    trials: int = 0
    faults_injected: int = 0
    from_peers: int = 0
    from_storage: int = 0
    failed_cleanly: int = 0
    corrupted: int = 0
    half_loaded: int = 0
    readers_died: int = 0  # target processes that ended by a signal (goal 0: a reader never dies with a peer)
    servers_died: int = 0  # seeds that ended by themselves (a crash the fault did not cause directly)
    server_errors: int = 0  # fuzzing: answers outside the allowed codes, records changed, servers gone
    recover_s: dict[str, float] = field(default_factory=dict)  # median, p95, max
    seconds: float = 0.0
    codes: dict[str, int] = field(default_factory=dict)  # fuzzing: answers by status code
    events: dict[str, int] = field(default_factory=dict)  # what the loads ran into, trials each
    notes: list[str] = field(default_factory=list)

    @property
    def sound(self) -> bool:
        """Nothing corrupted, half-loaded or broken, and no reader died (what the campaign exists to show)."""
        return self.corrupted == 0 and self.half_loaded == 0 and self.server_errors == 0 and self.readers_died == 0

    def add(self, trial: Trial) -> None:
        self.trials += 1
        self.faults_injected += trial.injected
        self.from_peers += trial.outcome == "peer"
        self.from_storage += trial.outcome == "storage"
        self.failed_cleanly += trial.outcome == "failed" and not trial.half_loaded and not trial.reader_died
        self.corrupted += trial.corrupted
        self.half_loaded += trial.half_loaded
        self.readers_died += trial.reader_died
        self.servers_died += trial.servers_died
        for event in trial.saw():
            self.events[event] = self.events.get(event, 0) + 1
        for note in trial.notes:
            if note not in self.notes:
                self.notes.append(note)


@dataclass
class CampaignOptions:
    quick: bool = False
    only: tuple[str, ...] = ()
    max_seconds_per_fault: float = 900.0
    seed: int = 0
    workdir: Path | None = None
    progress: Callable[[str], None] = print
    # The checkpoint every seed serves: `tensors` x `tensor_mib` MiB of bf16 (peerload.synthetic).
    tensors: int = 16
    tensor_mib: int = 2


def run_campaign(options: CampaignOptions) -> dict[str, Any]:
    """Run the chosen faults; returns what `write_json` writes (`faults`: one FaultResult each)."""
    started = time.time()
    chosen = [f for f in FAULTS if not options.only or f.name in options.only]
    unknown = set(options.only) - {f.name for f in FAULTS}
    if unknown:
        raise ValueError(f"unknown faults {sorted(unknown)}; choose from {', '.join(f.name for f in FAULTS)}")
    rng = random.Random(options.seed)
    results = []
    with _workdir(options.workdir) as workdir, ExitStack() as clusters:
        checkpoint = write_checkpoint(workdir / "model.safetensors", uniform(options.tensors, options.tensor_mib << 20))
        built: dict[str, AnyCluster] = {}

        def cluster(key: str) -> AnyCluster:
            if key not in built:
                if key == "fleet":
                    built[key] = FleetCluster(workdir, checkpoint)
                else:
                    transport, store = _CLUSTERS[key]
                    built[key] = Cluster(workdir, checkpoint, transport=transport, store=store)
                clusters.callback(built[key].close)
            return built[key]

        for fault in chosen:
            planned = fault.quick if options.quick else fault.trials
            options.progress(f"{fault.name}: {fault.what} x {planned}")
            result = _run_fault(fault, planned, cluster, rng, options)
            options.progress(f"  -> {_summary(result)}")
            results.append(result)
    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": round(time.time() - started, 1),
        "quick": options.quick,
        "seed": options.seed,
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
        "model": {"tensors": options.tensors, "mib": options.tensors * options.tensor_mib, "dtype": "bfloat16"},
        "faults": [asdict(r) for r in results],
    }


def _run_fault(
    fault: Fault, planned: int, cluster: Callable[[str], AnyCluster], rng: random.Random, options: CampaignOptions
) -> FaultResult:
    result = FaultResult(fault.name, fault.what, "ran", planned)
    if fault.needs:
        result.status = "not run yet"
        result.notes.append(f"needs {fault.needs}")
        return result
    started = time.monotonic()
    recover: list[float] = []
    try:
        if fault.fuzz:
            _fuzz(fault, planned, cluster, result, options.seed)
        else:
            assert fault.run is not None
            for _ in range(planned):
                if time.monotonic() - started > options.max_seconds_per_fault:
                    result.status = "stopped at the time bound"
                    break
                trial = fault.run(cluster(fault.cluster), rng)
                result.add(trial)
                if trial.recover_s is not None:
                    recover.append(trial.recover_s)
    except FleetUnavailable as exc:  # no emulated hosts on this machine: said, not a failure
        result.status = "not run here"
        result.notes.append(str(exc))
    except Exception as exc:  # a campaign reports a fault it could not run, and goes on
        result.status = "failed to run"
        result.notes.append(f"{type(exc).__name__}: {exc}")
    result.seconds = round(time.monotonic() - started, 1)
    if recover:
        ordered = sorted(recover)
        result.recover_s = {
            "median": round(statistics.median(ordered), 3),
            "p95": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 3),
            "max": round(ordered[-1], 3),
        }
    return result


def _fuzz(fault: Fault, messages: int, cluster: Callable[[str], AnyCluster], result: FaultResult, seed: int) -> None:
    if fault.fuzz == "coordinator":
        c = cluster(fault.cluster)
        assert isinstance(c, Cluster)
        report = fuzz.fuzz_coordinator(c.coordinator.address, messages, seed)
    elif fault.fuzz == "seed":
        c = cluster(fault.cluster)
        assert isinstance(c, Cluster)
        seed_proc = c.ensure_seeds()[0]
        with CoordinatorClient(c.coordinator.address, timeout_s=10) as client:
            record = client.get_metadata(seed_proc.source_id, seed_proc.worker_id)
        assert record is not None
        report = fuzz.fuzz_seed(record.worker_grpc_endpoint, seed_proc.worker_id, messages, seed)
    elif fault.fuzz in ("leases", "worker"):
        c = cluster(fault.cluster)
        assert isinstance(c, Cluster)
        report = _fuzz_leases(fault.fuzz, c, messages, seed)
    else:
        report = fuzz.fuzz_manifests(messages, seed)
    result.trials = result.faults_injected = report.messages
    result.codes = report.codes
    result.server_errors = len(report.unexpected)
    result.notes.extend(report.unexpected[:5])


def _fuzz_leases(kind: str, c: Cluster, messages: int, seed: int) -> fuzz.FuzzReport:
    """Fuzz one seed's lease RPCs; then its open leases (as its heartbeats report them) must be 0
    and a real target must still load the model bit-exact."""
    seed_proc = c.ensure_seeds()[0]
    with CoordinatorClient(c.coordinator.address, timeout_s=10) as client:
        record = client.get_metadata(seed_proc.source_id, seed_proc.worker_id)
    assert record is not None and c.identity is not None
    identity = c.identity

    def active() -> int:
        with CoordinatorClient(c.coordinator.address, timeout_s=10) as client:
            refs = [r for r in client.list_sources(identity) if r.worker_id == seed_proc.worker_id]
        return int(refs[0].source_load or 0) if refs else 0

    cap = Settings.load(env={}).seed_max_readers  # the campaign's seeds keep the default cap
    endpoint, worker_id = record.worker_grpc_endpoint, seed_proc.worker_id
    if kind == "leases":
        report = fuzz.fuzz_leases(endpoint, worker_id, messages, seed, max_readers=cap, active=active)
    else:
        source_id = seed_proc.source_id
        report = fuzz.fuzz_worker(endpoint, source_id, worker_id, messages, seed, max_readers=cap, active=active)
    after = Trial()
    c.load(after)
    if after.outcome != "peer" or after.corrupted:
        report.unexpected.append(f"a load after fuzzing came out {after.outcome}, corrupted={after.corrupted}")
    return report


def _summary(r: FaultResult) -> str:
    if r.status in ("not run yet", "not run here"):
        return f"{r.status}: {r.notes[0]}" if r.notes else r.status
    if r.codes:
        return f"{r.trials} messages, {r.server_errors} server errors ({r.seconds:.0f} s)"
    return (
        f"{r.trials} trials: {r.from_peers} peer, {r.from_storage} storage, {r.failed_cleanly} failed cleanly, "
        f"{r.corrupted} corrupted, {r.half_loaded} half-loaded, {r.readers_died} readers and {r.servers_died} seeds "
        f"died ({r.seconds:.0f} s)"
    )


@contextmanager
def _workdir(path: Path | None) -> Iterator[Path]:
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
    else:
        with tempfile.TemporaryDirectory(prefix="peerload-chaos-") as tmp:
            yield Path(tmp)


def write_json(report: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(report, indent=2) + "\n")


TABLE_BEGIN = "<!-- chaos table: begin (written by `peerload chaos --markdown`) -->"
TABLE_END = "<!-- chaos table: end -->"


def markdown_table(report: dict[str, Any]) -> str:
    """The docs table: one row per fault, then when, where and how long."""
    rows = [
        "| Fault | Trials | Faults injected | From peers | From storage | Failed cleanly | Corrupted or "
        "half-loaded | Readers died / seeds died | Recover s (median / max), or answers |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for f in report["faults"]:
        if f["status"] in ("not run yet", "not run here"):
            rows.append(f"| {f['what']} | {f['status']} ({f['planned']} planned) | | | | | | | {f['notes'][0]} |")
            continue
        trials = f"{f['trials']}" + ("" if f["trials"] == f["planned"] else f" of {f['planned']}")
        if f["codes"]:
            codes = ", ".join(f"{k} {v}" for k, v in sorted(f["codes"].items()))
            rows.append(
                f"| {f['what']} | {trials} messages | {f['faults_injected']} | | | | {f['server_errors']} server "
                f"errors | | {codes} |"
            )
            continue
        recover = f["recover_s"]
        recovered = f"{recover['median']:.2f} / {recover['max']:.2f}" if recover else ""
        died = f"{f.get('readers_died', 0)} / {f.get('servers_died', 0)}"  # older reports lack them
        rows.append(
            f"| {f['what']} | {trials} | {f['faults_injected']} | {f['from_peers']} | {f['from_storage']} | "
            f"{f['failed_cleanly']} | {f['corrupted'] + f['half_loaded']} | {died} | {recovered} |"
        )
    seen = [
        f"{f['what']}: " + ", ".join(f"{event} in {n}" for event, n in sorted(f["events"].items()))
        for f in report["faults"]
        if f["events"]
    ]
    if seen:
        rows += ["", "What the loads ran into (trials each):", "", *(f"- {line}" for line in seen)]
    notes = [
        f"{f['what']}: {note}"
        for f in report["faults"]
        if f["status"] not in ("not run yet", "not run here") and not f["codes"]
        for note in f["notes"][:3]
    ]
    if notes:
        rows += ["", "Notes:", "", *(f"- {line}" for line in notes)]
    model = report["model"]
    rows.append("")
    rows.append(
        f"Run {report['started']} ({'quick' if report['quick'] else 'full'} campaign, seed {report['seed']}) on "
        f"{report['machine']}; model: {model['tensors']} {model.get('dtype', 'float32')} tensors, {model['mib']} MiB; "
        f"{report['seconds'] / 60:.1f} minutes in all."
    )
    return "\n".join(rows) + "\n"


def write_markdown(report: dict[str, Any], path: Path) -> None:
    """Write the table to `path`, or between the table markers if `path` already has them."""
    table = markdown_table(report)
    text = path.read_text() if path.exists() else ""
    if TABLE_BEGIN in text and TABLE_END in text:
        head, rest = text.split(TABLE_BEGIN, 1)
        _, tail = rest.split(TABLE_END, 1)
        path.write_text(f"{head}{TABLE_BEGIN}\n{table}{TABLE_END}{tail}")
    else:
        path.write_text(table)
