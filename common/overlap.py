"""Decoding and encoding in threads beside the networks, through bounded queues.

Decoding the input and encoding the output run in FFmpeg, which releases the GIL: on a GPU they would
otherwise leave it idle between batches, and on the CPU they fill the gaps the networks leave on the
cores (a 10 s 720p lip sync on 2 cores: 7 % faster). ``Prefetch`` reads an iterator ahead in a thread;
``WriteBehind`` writes batches in a thread. Both hold at most ``depth`` items, so memory stays flat, and
both hand a failure in their thread to the caller.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

_DONE = object()


class Prefetch(Generic[T]):
    """Iterate ``items`` in a thread, at most ``depth`` items ahead of the consumer."""

    def __init__(self, items: Iterable[T], depth: int) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(iter(items),), name="prefetch", daemon=True)
        self._thread.start()

    def _run(self, items: Iterator[T]) -> None:
        try:
            for item in items:
                if not self._put(item):
                    return
            self._put(_DONE)
        except BaseException as exc:  # handed to the consumer, which raises it
            self._put(_Failure(exc))

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[T]:
        try:
            while True:
                item = self._queue.get()
                if item is _DONE:
                    return
                if isinstance(item, _Failure):
                    raise item.exc
                yield item
        finally:
            self.close()

    def close(self) -> None:
        """Stop reading ahead (the consumer left early or failed)."""
        self._stop.set()
        self._thread.join(timeout=5)

    def __enter__(self) -> Prefetch[T]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class WriteBehind(Generic[T]):
    """Call ``write(item)`` for every ``put`` item in a thread, at most ``depth`` items behind."""

    def __init__(self, write: Callable[[T], None], depth: int) -> None:
        self._write = write
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="write-behind", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            if self._failure is None:
                try:
                    self._write(item)
                except BaseException as exc:  # raised in the caller at its next put or at finish
                    self._failure = exc

    def put(self, item: T) -> None:
        self._raise()
        self._queue.put(item)

    def finish(self) -> None:
        """Wait until everything put has been written; raise what writing raised."""
        if self._thread.is_alive():
            self._queue.put(_DONE)
            self._thread.join()
        self._raise()

    def abort(self) -> None:
        """Drop what is not written yet and end the thread (the caller failed); nothing is raised."""
        if self._failure is None:
            self._failure = _Aborted()
        if self._thread.is_alive():
            self._queue.put(_DONE)
            self._thread.join()

    def _raise(self) -> None:
        if self._failure is not None:
            raise self._failure


class _Aborted(Exception):
    """Marks a WriteBehind whose caller gave up: later items are dropped."""


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc
