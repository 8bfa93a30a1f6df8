"""SourceIdentity <-> protobuf `model_express.p2p.SourceIdentity`."""

from __future__ import annotations

from peerload._gen.model_express import p2p_pb2 as pb
from peerload.identity import OPTIONAL_HASHED_FIELDS, SourceIdentity

_STRING_FIELDS = ("mx_version", "model_name", "dtype", "quantization", "revision",
                  *OPTIONAL_HASHED_FIELDS)
_INT_FIELDS = ("mx_source_type", "backend_framework", "tensor_parallel_size",
               "pipeline_parallel_size", "expert_parallel_size")


def to_proto(identity: SourceIdentity) -> pb.SourceIdentity:
    """Build the wire message for an identity."""
    message = pb.SourceIdentity(extra_parameters=dict(identity.extra_parameters))
    for name in _STRING_FIELDS:
        setattr(message, name, getattr(identity, name))
    for name in _INT_FIELDS:
        setattr(message, name, int(getattr(identity, name)))
    return message


def from_proto(message: pb.SourceIdentity) -> SourceIdentity:
    """Build an identity from the wire; raises ConfigError if it is not a valid identity."""
    values: dict[str, object] = {name: getattr(message, name) for name in (*_STRING_FIELDS, *_INT_FIELDS)}
    values["extra_parameters"] = dict(message.extra_parameters)
    return SourceIdentity(**values)  # type: ignore[arg-type]
