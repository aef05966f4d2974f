"""Transparent huge pages for weight storage.

A batch-1 decode streams every weight once per token: gpt2-xl reads 6 GB per fp32 token, i.e.
1.5 million 4 KiB pages, each a TLB miss and a page walk. Backed by 2 MiB pages the same stream
takes 3,000 walks, and the memory-bound kernels read a few percent faster (measured per shape,
README). Linux's default THP mode here is ``madvise``: a region gets huge pages only when asked,
before it is first touched. Elsewhere this is a no-op.
"""

from __future__ import annotations

import ctypes
import functools
import sys
from collections.abc import Callable

import torch

HUGE_PAGE = 2 << 20
MADV_HUGEPAGE = 14  # <sys/mman.h>


@functools.cache
def _madvise() -> Callable[[int, int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    fn.restype = ctypes.c_int
    return fn


def advise_huge_pages(t: torch.Tensor) -> bool:
    """Ask for huge pages under the 2 MiB-aligned interior of ``t``'s CPU storage; call it before
    the storage is written. False where nothing was advised (small tensor, not Linux, refused)."""
    madvise = _madvise()
    if madvise is None or t.device.type != "cpu":
        return False
    storage = t.untyped_storage()
    start = storage.data_ptr()
    end = start + storage.nbytes()
    lo = -(-start // HUGE_PAGE) * HUGE_PAGE
    hi = end // HUGE_PAGE * HUGE_PAGE
    if hi <= lo:
        return False
    return madvise(lo, hi - lo, MADV_HUGEPAGE) == 0
