"""across_cores: results in job order, one torch thread per worker, the caller's threads untouched."""

from __future__ import annotations

import threading

import pytest
import torch

from face_detection.cores import across_cores, workers_for


@pytest.fixture
def two_threads(torch_threads):
    torch_threads(2)


def test_results_come_back_in_job_order(two_threads):
    assert across_cores(lambda k: k * k, list(range(9))) == [k * k for k in range(9)]
    assert across_cores(lambda k: k, []) == []


def test_jobs_run_at_once_each_on_one_thread(two_threads):
    barrier = threading.Barrier(2, timeout=10)  # broken (an error) unless two jobs wait at once

    def job(_: int) -> tuple[int, str]:
        barrier.wait()
        return torch.get_num_threads(), threading.current_thread().name

    seen = across_cores(job, [0, 1])
    assert [threads for threads, _ in seen] == [1, 1]
    assert len({name for _, name in seen}) == 2 and threading.current_thread().name not in {n for _, n in seen}
    assert torch.get_num_threads() == 2  # the caller's setting is its own
    started_later: list[int] = []
    later = threading.Thread(target=lambda: started_later.append((torch.ones(1 << 16) + 1, torch.get_num_threads())[1]))
    later.start()
    later.join()
    assert started_later == [2]  # and so is that of threads the process starts afterwards


def test_one_thread_or_one_job_runs_here(torch_threads):
    assert workers_for(1) == 1
    torch_threads(1)
    assert workers_for(8) == 1
    assert across_cores(lambda _: threading.current_thread().name, [0, 1]) == [threading.current_thread().name] * 2


def test_a_jobs_error_reaches_the_caller(two_threads):
    def job(k: int) -> int:
        if k == 1:
            raise torch.OutOfMemoryError("planted")
        return k

    with pytest.raises(torch.OutOfMemoryError, match="planted"):
        across_cores(job, [0, 1, 2, 3])
    assert across_cores(job, [0, 2]) == [0, 2]  # the pool still works
