"""Which frames a "detect every k-th frame" preset looks at: every k-th, and always the last.

The last frame is a key frame too, so that boxes interpolated between key frames reach the end of
the video and face tracks end where detecting every frame would end them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def mark_key_frames(items: Iterable[T], every: int) -> Iterator[tuple[int, T, bool]]:
    """``(index, item, is_key)`` for a stream of unknown length: one item late, to know which is last."""
    if every < 1:
        raise ValueError(f"every must be at least 1, got {every}")
    held: tuple[int, T] | None = None
    for index, item in enumerate(items):
        if held is not None:
            yield held[0], held[1], held[0] % every == 0
        held = (index, item)
    if held is not None:
        yield held[0], held[1], True


def key_frames(n_frames: int, every: int) -> list[int]:
    """The key frames of a video of ``n_frames`` frames."""
    return [i for i, _, key in mark_key_frames(range(n_frames), every) if key]
