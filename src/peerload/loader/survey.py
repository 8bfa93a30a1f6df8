"""Read the coordinator's workers for the near-miss analysis, in a bounded number of RPCs."""

from __future__ import annotations

from collections.abc import Collection

from peerload.client import CoordinatorClient, SourceRef, SourceStatus
from peerload.identity import SourceIdentity
from peerload.loader.near_miss import Explanation, Seen, explain

# GetMetadata calls to read other sources' identities (one per source id, same model name first).
MAX_LOOKUPS = 16


def survey(client: CoordinatorClient, identity: SourceIdentity, *, max_lookups: int = MAX_LOOKUPS) -> list[Seen]:
    """Every listed worker with its status; identities of this one and of up to `max_lookups` others.

    Raises:
        CoordinatorError, CoordinatorUnavailable: a ListSources or GetMetadata call failed.
    """
    refs = client.list_sources()
    ready = _keys(client.list_sources(status=SourceStatus.READY))
    stale = _keys(client.list_sources(status=SourceStatus.STALE))
    own = identity.source_id()
    newest: dict[str, SourceRef] = {}
    for ref in refs:  # listed newest first
        newest.setdefault(ref.mx_source_id, ref)
    name = identity.model_name.lower()
    others = sorted((r for sid, r in newest.items() if sid != own), key=lambda r: r.model_name.lower() != name)
    identities: dict[str, SourceIdentity | None] = {own: identity}
    for ref in others[:max_lookups]:
        record = client.get_metadata(ref.mx_source_id, ref.worker_id)
        identities[ref.mx_source_id] = record.identity if record is not None else None

    def status(ref: SourceRef) -> str:
        key = (ref.mx_source_id, ref.worker_id)
        return "READY" if key in ready else "STALE" if key in stale else "INITIALIZING"

    return [Seen(r.worker_id, r.mx_source_id, r.worker_rank, status(r), identities.get(r.mx_source_id)) for r in refs]


def explain_sources(
    client: CoordinatorClient, identity: SourceIdentity, rank: int, exclude: Collection[str] = ()
) -> Explanation:
    """What a load of `identity` at `rank` finds at the coordinator: READY matches, else near misses.

    Raises:
        CoordinatorError, CoordinatorUnavailable: as for `survey`.
    """
    return explain(identity, rank, survey(client, identity), exclude)


def _keys(refs: list[SourceRef]) -> set[tuple[str, str]]:
    return {(r.mx_source_id, r.worker_id) for r in refs}
