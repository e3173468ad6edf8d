"""release_free_memory gives freed heap pages back (glibc), and is harmless elsewhere."""

from __future__ import annotations

import ctypes.util
import sys

import numpy as np
import pytest

from face_detection.memory import release_free_memory


def _resident_mb() -> float:
    with open("/proc/self/status") as f:
        line = next(row for row in f if row.startswith("VmRSS"))
    return int(line.split()[1]) / 1024


@pytest.mark.skipif(not sys.platform.startswith("linux") or ctypes.util.find_library("c") is None,
                    reason="resident size read from /proc; malloc_trim is glibc's")
def test_freed_small_blocks_go_back_to_the_system():
    release_free_memory()
    before = _resident_mb()
    # 200 MB in blocks below the mmap threshold, the last kept so the heap's top cannot simply shrink
    blocks = [np.ones(32 * 1024, np.float64) for _ in range(800)]
    keep = blocks[-1]
    del blocks
    held = _resident_mb()
    assert release_free_memory()
    after = _resident_mb()
    assert held - before > 150 and held - after > 100, (before, held, after)
    assert keep.sum() == 32 * 1024
