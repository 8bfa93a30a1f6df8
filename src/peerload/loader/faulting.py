"""Faulting destination pages in ahead of the bytes, wave by wave, on a background thread.

Faulting in the destination dominates a cold load far more than the wire does, so it overlaps
agent creation, the handshake and the transfer of the waves already faulted.
"""

from __future__ import annotations

import threading

import torch

from peerload.tensors import TensorSet
from peerload.transport import prefault

# Regions are faulted in, read and hashed in waves of about this size so the three overlap;
# every wave is one read (one seed round trip), so waves stay large.
WAVE_BYTES = 512 << 20


def waves(tensor_set: TensorSet, wave_bytes: int = WAVE_BYTES) -> list[list[str]]:
    """Region names in read order, cut into consecutive groups of about `wave_bytes`."""
    out: list[list[str]] = [[]]
    size = 0
    for name, flat in tensor_set.regions.items():
        if size >= wave_bytes:
            out.append([])
            size = 0
        out[-1].append(name)
        size += flat.numel()
    return out


class Faulting:
    """Faults the waves in, in order, on a background thread; `wait(i)` before writing wave i."""

    def __init__(self, waves: list[list[torch.Tensor]]) -> None:
        self._done = [threading.Event() for _ in waves]
        self._error: BaseException | None = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(waves,), name="peerload-prefault", daemon=True)
        self._thread.start()

    def _run(self, waves: list[list[torch.Tensor]]) -> None:
        try:
            for i, wave in enumerate(waves):
                if self._stopped.is_set():
                    break
                prefault(wave)
                self._done[i].set()
        except BaseException as exc:  # re-raised in wait(); a failed prefault is a bug, not a fallback
            self._error = exc
        finally:
            for done in self._done:
                done.set()

    def wait(self, i: int) -> None:
        self._done[i].wait()
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        """Fault no further wave (an interrupted load); `join` then returns after the wave in hand."""
        self._stopped.set()

    def join(self) -> None:
        self._thread.join()
