"""A seed's tensors as ModelExpress readers take them: one descriptor per parameter name.

The official client matches descriptors to its own tensors by name and reads `size` bytes at
`addr`, so every name gets its own descriptor, aliases (tied weights, views) included, each
pointing into the one registered storage it shares.
"""

from __future__ import annotations

import logging

from peerload.devices import device_id_of
from peerload.tensors import TensorSet
from peerload.wire import TensorInfo

log = logging.getLogger(__name__)


def named_descriptors(tensor_set: TensorSet) -> list[TensorInfo]:
    """One descriptor per name, with `str(tensor.dtype)` as the official client writes it.

    Zero-byte tensors are left out: the official 0.7.0 reader asks NIXL for a zero-byte range
    at address 0 and fails the whole read. Non-contiguous tensors are left out (and named in a
    warning): their bytes are no single range a reader could copy into its own tensor.
    """
    out: list[TensorInfo] = []
    scattered: list[str] = []
    for name in sorted(tensor_set.tensors):
        t = tensor_set.tensors[name]
        size = t.numel() * t.element_size()
        if size == 0:
            continue
        if not t.is_contiguous():
            scattered.append(name)
            continue
        out.append(TensorInfo(name, t.data_ptr(), size, device_id_of(t.device), str(t.dtype)))
    if scattered:
        log.warning(
            "%d non-contiguous tensor(s) are not offered to ModelExpress readers (peerload readers get them): %s",
            len(scattered),
            ", ".join(scattered[:5]),
        )
    return out
