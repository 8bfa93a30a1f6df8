"""Why no READY source matched (pure): near misses and what to change to use them.

A near miss is a source whose identity differs from the load's in one or two hashed fields, or
a worker of the load's own identity that is not READY or serves another rank.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, fields

from peerload.identity import BackendFramework, SourceIdentity, canonical_fields

MAX_DIFFERENCES = 2  # more than this and it is another model, not a near miss
# Identity fields of the parallel layout only: a source differing in just these can be resharded.
LAYOUT_FIELDS = frozenset({"tensor_parallel_size", "pipeline_parallel_size"})
RESHARD_FIX = (
    "a load that knows its layout (`peerload load` without --quantize, vLLM's `--load-format peerload` "
    "unquantized) reshards from it "
    "when no source of its own layout is READY (docs/resharding.md); to read it as it is, use the same "
    "parallel sizes (--tp-size / --pp-size)"
)
MAX_SHOWN = 5  # near misses written into a load's attempts

# What makes a field agree on both sides; the identity's fields in their dataclass order.
FIXES = {
    "model_name": "give both sides the same model name (peerload: --model-name; vLLM: --served-model-name, "
    "which defaults to the --model path)",
    "revision": "give both sides the same --revision",
    "dtype": "load the same dtype on both sides (peerload reads it from config.json; vLLM: --dtype)",
    "quantization": "use the same quantization on both sides (the checkpoint's config.json; vLLM: --quantization)",
    "tensor_parallel_size": "use the same tensor-parallel size (--tp-size; vLLM: --tensor-parallel-size)",
    "pipeline_parallel_size": "use the same pipeline-parallel size (--pp-size; vLLM: --pipeline-parallel-size)",
    "expert_parallel_size": "use the same expert-parallel size (--ep-size; vLLM: --enable-expert-parallel)",
    "backend_framework": "run the same engine on both sides: vLLM instances load from vLLM sources, "
    "`peerload load` from `peerload seed`",
}
_OTHER_FIX = "publish both sides with the same {field}"
_STATUS_FIX = {
    "INITIALIZING": "it is still loading: retry once it is READY (`peerload sources` shows its status)",
    "STALE": "it stopped heartbeating: restart it, or check that it can reach the coordinator",
}
_FIELD_ORDER = [f.name for f in fields(SourceIdentity)]


@dataclass(frozen=True)
class Seen:
    """One worker the coordinator lists; `identity` is None when it was not read."""

    worker_id: str
    source_id: str
    rank: int
    status: str  # READY, INITIALIZING or STALE
    identity: SourceIdentity | None = None


@dataclass(frozen=True)
class Difference:
    """One identity field that differs: its value at the source and in this load."""

    field: str
    theirs: str
    ours: str


@dataclass(frozen=True)
class NearMiss:
    """A source one or two fields away, or a worker of this identity that cannot serve this rank now."""

    source_id: str
    workers: tuple[Seen, ...]
    rank: int  # the rank this load wants
    differences: tuple[Difference, ...] = ()  # empty: same identity

    @property
    def kind(self) -> str:
        """'identity', 'status' (same identity, not READY) or 'rank' (same identity, READY elsewhere)."""
        if self.differences:
            return "identity"
        return "rank" if self.workers[0].status == "READY" else "status"

    @property
    def ready(self) -> bool:
        return any(w.status == "READY" for w in self.workers)

    @property
    def reshardable(self) -> bool:
        """Whether only the parallel layout differs (a resharding load can read it)."""
        return bool(self.differences) and {d.field for d in self.differences} <= LAYOUT_FIELDS

    def describe(self) -> str:
        """One line naming the source, its workers and what differs."""
        if self.kind == "identity":
            what = "; ".join(f"{d.field} is {d.theirs} there, {d.ours} here" for d in self.differences)
            more = ": the layout differs but can be resharded" if self.reshardable else ""
            return f"source {self.source_id} ({_workers(self.workers)}) differs: {what}{more}"
        worker = self.workers[0]
        where = f"worker {worker.worker_id} of this identity (source {self.source_id})"
        if self.kind == "rank":
            return f"{where} is READY at rank {worker.rank}; this load is rank {self.rank}"
        other_rank = f"; this load is rank {self.rank}" if worker.rank != self.rank else ""
        return f"{where} is {worker.status} at rank {worker.rank}{other_rank}"

    @property
    def fix(self) -> str:
        """What to change so that this source can serve the load."""
        if self.reshardable:
            return RESHARD_FIX
        if self.kind == "identity":
            fixes = [FIXES.get(d.field, _OTHER_FIX.format(field=d.field)) for d in self.differences]
            return "; ".join(dict.fromkeys(fixes))
        if self.kind == "rank":
            return (
                f"each rank loads from a source of the same rank: start one for rank {self.rank}, "
                "or check --tp-rank / --pp-rank"
            )
        return _STATUS_FIX.get(self.workers[0].status, "wait until it is READY")

    def as_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "reshardable": self.reshardable,
            "source_id": self.source_id,
            "workers": [{"worker_id": w.worker_id, "rank": w.rank, "status": w.status} for w in self.workers],
            "differences": [{"field": d.field, "theirs": d.theirs, "ours": d.ours} for d in self.differences],
            "text": self.describe(),
            "fix": self.fix,
        }


@dataclass(frozen=True)
class Explanation:
    """What a load of `identity` at `rank` would find: READY matches, else near misses."""

    identity: SourceIdentity
    rank: int
    matches: tuple[Seen, ...]
    near_misses: tuple[NearMiss, ...]

    def attempt_lines(self, limit: int = MAX_SHOWN) -> list[str]:
        """The near misses as lines of a load's `attempts` (at most `limit`, then a count)."""
        lines = [f"near miss: {m.describe()}; to use it: {m.fix}" for m in self.near_misses[:limit]]
        if len(self.near_misses) > limit:
            lines.append(
                f"... and {len(self.near_misses) - limit} more near miss(es): `peerload sources --explain` lists them"
            )
        return lines

    @property
    def hint(self) -> str:
        """The fix of the most promising near miss ("" if there is none)."""
        return self.near_misses[0].fix if self.near_misses else ""


def explain(identity: SourceIdentity, rank: int, seen: Sequence[Seen], exclude: Collection[str] = ()) -> Explanation:
    """Sort the coordinator's workers into matches and near misses (READY ones and fewer differences first)."""
    source_id = identity.source_id()
    matches, misses = [], []
    others: dict[str, list[Seen]] = {}
    for worker in seen:
        if worker.worker_id in exclude:
            continue
        if worker.source_id != source_id:
            others.setdefault(worker.source_id, []).append(worker)
        elif worker.status == "READY" and worker.rank == rank:
            matches.append(worker)
        else:
            misses.append(NearMiss(source_id, (worker,), rank))
    for other_id, workers in others.items():
        theirs = workers[0].identity
        diff = differences(theirs, identity) if theirs is not None else []
        renamed = any(d.field == "model_name" for d in diff)
        if theirs is not None and renamed and not related_names(theirs.model_name, identity.model_name):
            continue  # another model altogether: never suggest renaming after it
        if 1 <= len(diff) <= MAX_DIFFERENCES:
            misses.append(NearMiss(other_id, tuple(workers), rank, tuple(diff)))
    misses.sort(key=lambda m: (not m.ready, len(m.differences), m.source_id, m.workers[0].worker_id))
    return Explanation(identity, rank, tuple(matches), tuple(misses))


def related_names(a: str, b: str) -> bool:
    """Names of the same model spelled two ways: the same last path part, ignoring case.

    "Qwen/Qwen3-0.6B", "/models/Qwen3-0.6B" and "qwen3-0.6b" are one model (a vLLM seed's
    --model path against a target's --served-model-name); "org/llama" and "org/mistral" are not.
    """

    def last(name: str) -> str:
        return name.rstrip("/").rsplit("/", 1)[-1].lower()

    return bool(last(a)) and last(a) == last(b)


def differences(theirs: SourceIdentity, ours: SourceIdentity) -> list[Difference]:
    """The hashed fields in which two identities differ, compared as the source-id hash sees them."""
    a, b = canonical_fields(theirs), canonical_fields(ours)
    changed = [name for name in _FIELD_ORDER if a.get(name, "") != b.get(name, "")]
    return [Difference(name, _shown(theirs, name), _shown(ours, name)) for name in changed]


def _shown(identity: SourceIdentity, name: str) -> str:
    value = getattr(identity, name)
    if name == "backend_framework":
        try:
            return BackendFramework(value).name
        except ValueError:
            return str(value)
    if name == "extra_parameters":
        return json.dumps(dict(value), sort_keys=True)
    return repr(value) if isinstance(value, str) else str(value)


def _workers(workers: Sequence[Seen]) -> str:
    if len(workers) == 1:
        w = workers[0]
        return f"worker {w.worker_id}, {w.status} at rank {w.rank}"
    statuses = Counter(w.status for w in workers)
    ranks = sorted({w.rank for w in workers})
    counted = ", ".join(f"{n} {status}" for status, n in sorted(statuses.items()))
    return f"{len(workers)} workers: {counted}, ranks {', '.join(map(str, ranks))}"
