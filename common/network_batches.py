"""Run a network over a sequence in batches, halving the batch when the device runs out of memory.

The face detectors, the Wav2Lip generator and SyncNet all share this one copy.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

log = logging.getLogger(__name__)


def in_batches(run: Callable[[int, int], None], total: int, batch_size: int, *, what: str,
               device: torch.device | str = "cpu") -> int:
    """Call ``run(start, stop)`` over ``[0, total)`` in pieces of at most ``batch_size``.

    When a piece raises ``torch.OutOfMemoryError`` the batch size is halved and that piece retried
    (pieces already done are kept); at batch size 1 the error propagates. ``what`` names the network
    in the warning. Returns the batch size that worked last, for the caller to reuse.
    """
    size = max(1, min(batch_size, total)) if total else max(1, batch_size)
    start = 0
    while start < total:
        stop = min(start + size, total)
        try:
            run(start, stop)
        except torch.OutOfMemoryError:
            if size == 1:
                raise
            size //= 2
            log.warning("out of memory in %s; retrying with batch size %d", what, size)
            if torch.device(device).type == "cuda":
                torch.cuda.empty_cache()
            continue
        start = stop
    return size
