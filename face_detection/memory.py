"""Give the C heap's free pages back to the system once models are built.

Building a model leaves much freed memory inside the process (a checkpoint read whole, float64 kernel
transforms, layout copies): glibc keeps it in its heaps, so the process's resident size counts it and
later work adds on top. Measured on the evaluator after loading SyncNet and the fp32 sfd_face detector
with its Winograd kernels: 795-845 MB resident, 637 MB after ``malloc_trim``, and the peak of a 5 s
evaluation after it 1305-1388 MB instead of 1386-1567 MB. Elsewhere than glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache


@cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # no C library by that name, or not glibc
        return None


def release_free_memory() -> bool:
    """``malloc_trim(0)`` where the C library has it (glibc); whether it ran."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
