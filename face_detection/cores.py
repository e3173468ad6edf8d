"""Independent batches of frames on all CPU cores at once, each batch on one core.

PyTorch spreads one batch over its intra-op threads, which pays off for the large matrix products but
not for the memory-bound passes between them (Winograd tile transforms, ReLU, pooling): on a 2-core
Zen 4 EPYC, sfd_face on 320x180 frames took 127 ms a frame as two single-threaded workers each on its
own frame, against 144-169 ms one frame at a time on two threads (the Winograd net in float32; 181 against
194 ms with direct convolutions, 90 against 96 ms in bfloat16). SyncNet's towers as torch layers,
which are all matrix products, gained nothing; its first lip layer as compiled Winograd strips
(:mod:`syncnet.lipconv`) uses this, like the detectors.

The pool is made on first use, one worker per thread the caller's torch has, and each worker runs
on one torch thread. That setting is per thread only in part: ``torch.set_num_threads`` also sets a
process-wide count that a thread adopts at its first parallel operation (threads started later, and
threads that have not run one yet). So each worker sets 1 and runs one operation, all of them at once
(one each), and then the caller's count is set again, for the process and for the caller alike.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from typing import TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")

_lock = threading.Lock()
_pools: dict[int, ThreadPoolExecutor] = {}


def _pool(workers: int) -> ThreadPoolExecutor:
    with _lock:
        if workers not in _pools:
            pool = ThreadPoolExecutor(workers, thread_name_prefix="frames-core")
            everyone = threading.Barrier(workers, timeout=60)  # one setting-up job for each worker
            caller = torch.get_num_threads()

            def one_thread(_: int) -> None:
                torch.set_num_threads(1)
                torch.zeros(1 << 16).add_(1)  # adopts the count for good, before it is set back
                everyone.wait()

            try:
                list(pool.map(one_thread, range(workers)))
            finally:
                torch.set_num_threads(caller)
            _pools[workers] = pool
        return _pools[workers]


def workers_for(jobs: int) -> int:
    """How many single-threaded workers ``jobs`` independent batches get: the calling thread's torch
    thread count, at most one per job; 1 means run them here, one after another."""
    return max(1, min(jobs, torch.get_num_threads()))


def across_cores(fn: Callable[[T], R], jobs: Sequence[T]) -> list[R]:
    """``[fn(job) for job in jobs]``, the jobs spread over :func:`workers_for` single-threaded workers.

    ``fn`` must not depend on the order the jobs run in (inference on frames does not). The first
    job's exception (in job order) is raised here, once the jobs already running have finished; the
    others are not started.
    """
    workers = workers_for(len(jobs))
    if workers == 1:
        return [fn(job) for job in jobs]
    futures = [_pool(workers).submit(fn, job) for job in jobs]
    try:
        return [future.result() for future in futures]
    finally:  # on an error, the jobs not started yet never start and the running ones finish first
        for future in futures:
            future.cancel()
        wait(futures)
