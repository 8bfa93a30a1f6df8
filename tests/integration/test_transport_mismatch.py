"""A seed on one transport, a target on the other: the target names a transport mismatch (not a
layout mismatch) and falls back to storage. Real NIXL and Mooncake endpoints in this process."""

from __future__ import annotations

import pytest
import torch

from peerload.identity import SourceIdentity
from peerload.loader import load_into
from peerload.seed.publisher import publish
from peerload.settings import Settings

IDENTITY = SourceIdentity(model_name="test/transport-mismatch", dtype="float32")


def weights() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return {f"w{i}": torch.randn(128, 32, generator=g) for i in range(3)}


@pytest.mark.parametrize(
    ("seed_transport", "target_transport"), [("transfer_engine", "nixl"), ("nixl", "transfer_engine")]
)
def test_a_source_on_another_transport_is_a_transport_mismatch(
    coordinator, seed_transport: str, target_transport: str
) -> None:
    pytest.importorskip("mooncake.engine", reason="the mooncake extra is not installed")
    source = weights()
    with publish(
        source, IDENTITY, settings=Settings.load(env={}, coordinator=coordinator.address, transport=seed_transport)
    ) as seed:
        destination = {n: torch.empty_like(t) for n, t in source.items()}
        settings = Settings.load(env={}, coordinator=coordinator.address, transport=target_transport)
        result = load_into(destination, IDENTITY, settings=settings, fallback=weights, publish=False)
    assert result.source == "storage"
    [attempt] = [a for a in result.attempts if a.startswith(f"source {seed.worker_id}")]
    assert "TransportMismatch: transport mismatch" in attempt, result.attempts
    assert f"source {seed.worker_id} serves over {seed_transport}, this load reads over {target_transport}" in attempt
    assert "same transport (--transport or PEERLOAD_TRANSPORT" in attempt
    assert "LayoutMismatch" not in " ".join(result.attempts)
    assert all(torch.equal(destination[n], source[n]) for n in source)
