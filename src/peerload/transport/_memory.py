"""Making destination memory resident before bytes arrive (cold loads are page-fault bound).

A fresh process's tensors are untouched virtual memory: the first write to each page faults,
and on our VMs a fault is slower than the copy itself. Faulting pages in from other threads
while the agent starts and connects (and while the transfer runs) takes that cost off the
transfer's critical path.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
import threading
from collections.abc import Iterable

import torch

log = logging.getLogger(__name__)

_PAGE = mmap.PAGESIZE
_HUGE = 2 << 20
_MADV_HUGEPAGE = 14
_MADV_POPULATE_WRITE = 23  # Linux >= 5.14; EINVAL before
_PIECE = 64 << 20  # work unit handed to a thread

_libc: ctypes.CDLL | None = None
_populate_ok: bool | None = None  # probed once: does the kernel have MADV_POPULATE_WRITE?


def _madvise(addr: int, length: int, advice: int) -> bool:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        _libc.madvise.restype = ctypes.c_int
    return _libc.madvise(addr, length, advice) == 0  # ctypes releases the GIL here


def populate_supported() -> bool:
    """Whether faulting-in keeps page contents untouched (MADV_POPULATE_WRITE, Linux >= 5.14).

    Only then may a prefault run while a transfer writes the same memory.
    """
    global _populate_ok
    if _populate_ok is None:
        page = mmap.mmap(-1, _PAGE)
        addr = ctypes.addressof(ctypes.c_char.from_buffer(page))
        _populate_ok = _madvise(addr, _PAGE, _MADV_POPULATE_WRITE)
        del addr
        if not _populate_ok:
            log.debug("MADV_POPULATE_WRITE unavailable (errno %d); touching pages", ctypes.get_errno())
    return _populate_ok


def _pieces(tensors: Iterable[torch.Tensor]) -> list[tuple[int, int]]:
    """Page-aligned (start, length) ranges of the CPU tensors, cut into work units."""
    out: list[tuple[int, int]] = []
    for t in tensors:
        if t.is_cuda or t.nbytes == 0:
            continue
        start = t.data_ptr() // _PAGE * _PAGE
        end = -(-(t.data_ptr() + t.nbytes) // _PAGE) * _PAGE
        for off in range(start, end, _PIECE):
            out.append((off, min(_PIECE, end - off)))
    return out


def _touch(addr: int, length: int) -> None:
    """Fallback: rewrite one byte per page (destination contents are about to be replaced)."""
    buf = (ctypes.c_uint8 * length).from_address(addr)
    view = torch.frombuffer(buf, dtype=torch.uint8)
    view[::_PAGE].add_(0)  # a write, so the page is faulted in writable


def _fault(addr: int, length: int) -> None:
    if not (populate_supported() and _madvise(addr, length, _MADV_POPULATE_WRITE)):
        _touch(addr, length)


def prefault(tensors: Iterable[torch.Tensor], *, threads: int | None = None, huge_pages: bool = False) -> int:
    """Fault in every page of the given CPU tensors using `threads` threads; returns bytes.

    Page contents are preserved with MADV_POPULATE_WRITE, so it may overlap a transfer into the
    same memory; the fallback (old kernels, see `populate_supported`) rewrites one byte per page
    with its own value, so then it must finish before bytes arrive.
    CUDA tensors are skipped. With `huge_pages`, tensors of 4 MiB or more are first advised
    MADV_HUGEPAGE (one fault per 2 MiB instead of per 4 KiB when THP is in `madvise` mode).
    Off by default: on our VMs the kernel's compaction for huge pages made prefaulting about
    3x slower (1 GiB: ~1 s vs ~0.3 s) in most runs, and only occasionally faster.
    """
    tensors = list(tensors)
    if huge_pages:
        for t in tensors:
            if not t.is_cuda and t.nbytes >= 2 * _HUGE:
                start = t.data_ptr() // _PAGE * _PAGE
                _madvise(start, t.data_ptr() + t.nbytes - start, _MADV_HUGEPAGE)
    pieces = _pieces(tensors)
    total = sum(n for _, n in pieces)
    n_threads = max(1, min(threads or os.cpu_count() or 1, len(pieces)))
    if n_threads == 1:
        for addr, n in pieces:
            _fault(addr, n)
        return total

    # Interleaved assignment keeps every thread near the front, where a transfer reads first.
    def work(i: int) -> None:
        for addr, n in pieces[i::n_threads]:
            _fault(addr, n)

    workers = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(n_threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return total
