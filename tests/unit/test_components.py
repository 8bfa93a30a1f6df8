"""Which transport a published endpoint speaks: one answer for records, listings and readers."""

from __future__ import annotations

import pytest

from peerload.components import TRANSPORTS, transport_of
from peerload.transport.base import EndpointInfo


@pytest.mark.parametrize(
    ("blob", "session", "listen", "expected"),
    [
        (b"md", None, "", "nixl"),  # a peerload seed, or an official one in centralized mode
        (None, None, "10.0.0.1:5555", "nixl"),  # an official seed in P2P mode: the agent's listen thread
        (None, "10.0.0.1:12345", "", "transfer_engine"),  # a Mooncake seed
        (None, None, "", ""),  # nothing published
    ],
)
def test_transport_of_a_published_endpoint(blob: bytes | None, session: str | None, listen: str, expected: str) -> None:
    assert transport_of(blob, session, listen) == expected
    assert EndpointInfo("agent", blob, session, listen or None).transport == expected
    assert expected in (*TRANSPORTS, "")
