"""Message size limits of every peerload gRPC server and client, in one place.

A server refuses a larger request with RESOURCE_EXHAUSTED before parsing it, so these also bound
what a bad or hostile peer can make a server allocate.
"""

from __future__ import annotations

# Coordinator requests and replies: 64 MiB holds ~500k tensor descriptors (the official client
# allows 100 MB per message).
COORDINATOR_MAX_MESSAGE_BYTES = 64 << 20
# Requests to a seed's own services carry ids only.
SEED_MAX_REQUEST_BYTES = 1 << 20
# A seed's manifest reply: large models (thousands of tensors) exceed gRPC's 4 MiB default.
MANIFEST_MAX_BYTES = 256 << 20
