"""in_batches: pieces in order, halving on out-of-memory, other errors untouched."""

from __future__ import annotations

import logging

import pytest
import torch

from common.network_batches import in_batches


def _recorder(limit: int | None = None):
    calls: list[tuple[int, int]] = []
    done: list[tuple[int, int]] = []

    def run(start: int, stop: int) -> None:
        calls.append((start, stop))
        if limit is not None and stop - start > limit:
            raise torch.OutOfMemoryError("planted")
        done.append((start, stop))

    return run, calls, done


def test_pieces_cover_the_range_in_order():
    run, calls, done = _recorder()
    assert in_batches(run, 10, 4, what="net") == 4
    assert done == calls == [(0, 4), (4, 8), (8, 10)]


def test_out_of_memory_halves_and_keeps_finished_pieces(caplog):
    run, calls, done = _recorder(limit=2)
    with caplog.at_level(logging.WARNING):
        assert in_batches(run, 7, 8, what="the planted net") == 1
    # 7 fails, 3 fails, then ones: every index done exactly once, in order
    assert calls[:2] == [(0, 7), (0, 3)]
    assert done == [(i, i + 1) for i in range(7)]
    assert "out of memory in the planted net; retrying with batch size 3" in caplog.text


def test_resumes_where_it_failed():
    run, calls, done = _recorder(limit=2)
    assert in_batches(run, 5, 2, what="net") == 2
    assert done == calls == [(0, 2), (2, 4), (4, 5)]
    sizes = []

    def late(start: int, stop: int) -> None:
        sizes.append((start, stop))
        if start >= 4 and stop - start > 1:
            raise torch.OutOfMemoryError("planted")

    assert in_batches(late, 6, 2, what="net") == 1
    assert sizes == [(0, 2), (2, 4), (4, 6), (4, 5), (5, 6)]


def test_out_of_memory_at_one_and_other_errors_propagate():
    run, _, _ = _recorder(limit=0)
    with pytest.raises(torch.OutOfMemoryError):
        in_batches(run, 3, 4, what="net")

    def broken(start: int, stop: int) -> None:
        raise RuntimeError("not memory")

    with pytest.raises(RuntimeError, match="not memory"):
        in_batches(broken, 3, 4, what="net")


def test_nothing_to_do():
    run, calls, _ = _recorder()
    assert in_batches(run, 0, 4, what="net") == 4
    assert calls == []
