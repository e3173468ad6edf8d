"""Decode-ahead and write-behind threads (common.overlap): order, bounds, failures, early exits."""

from __future__ import annotations

import threading
import time

import pytest

from common.overlap import Prefetch, WriteBehind


def test_prefetch_keeps_order_and_reads_at_most_depth_ahead():
    read: list[int] = []

    def items():
        for i in range(20):
            read.append(i)
            yield i

    out = []
    for item in Prefetch(items(), depth=3):
        time.sleep(0.002)
        assert len(read) - len(out) <= 3 + 2  # the queue, the item in hand, the one being put
        out.append(item)
    assert out == list(range(20))


def test_prefetch_hands_over_a_failure_and_stops_on_early_exit():
    def broken():
        yield 1
        raise ValueError("damaged at frame 2")

    with pytest.raises(ValueError, match="frame 2"):
        list(Prefetch(broken(), depth=2))
    endless = Prefetch(iter(int, 1), depth=2)  # never ends by itself
    for _ in endless:
        break
    assert not endless._thread.is_alive()
    # as a context manager it stops however the block is left, even while its iterator is still held
    with pytest.raises(KeyError), Prefetch(iter(int, 1), depth=2) as held:
        iterator = iter(held)
        next(iterator)
        raise KeyError("the consumer failed")
    assert not held._thread.is_alive()


def test_write_behind_writes_everything_in_order_in_another_thread():
    written, threads = [], set()

    def write(item):
        threads.add(threading.current_thread().name)
        written.append(item)

    behind = WriteBehind(write, depth=2)
    for i in range(10):
        behind.put(i)
    behind.finish()
    assert written == list(range(10)) and threads == {"write-behind"}


def test_write_behind_raises_the_writers_error_and_abort_drops_the_rest():
    def write(item):
        if item == 3:
            raise OSError("disk full")

    behind = WriteBehind(write, depth=1)
    with pytest.raises(OSError, match="disk full"):
        for i in range(100):
            behind.put(i)
            time.sleep(0.001)
        behind.finish()
    behind.abort()
    written = []
    slow = WriteBehind(lambda item: (time.sleep(0.01), written.append(item)), depth=5)
    for i in range(5):
        slow.put(i)
    slow.abort()
    assert len(written) < 5 and not slow._thread.is_alive()
