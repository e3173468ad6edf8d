"""Which frames a "detect every k-th frame" preset looks at: every k-th, and always the last; and how
far later key frames shrink once faces are found (the same rule for lip sync and for scoring).

The last frame is a key frame too, so that boxes interpolated between key frames reach the end of
the video and face tracks end where detecting every frame would end them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TypeVar

import numpy as np

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


# The fast preset detects at the size the faces are: once a key frame has faces, later key frames are
# shrunk further, until the smallest face found is FACE_TARGET_PX on its shorter side. S3FD's smallest
# anchors are 16 px (stride 4) and it was trained to find faces from that size up, so 32 px keeps a 2x
# margin; the frame's shorter side stays at least MIN_SHORT_SIDE px, so the detector's deepest layers
# (stride 128) still see a few cells. A key frame that loses a face at the smaller size is detected
# again at the preset's size, and refinement between key frames runs at the preset's size too. On a
# 720p talking head 190 px wide (47 px at 320 px) the key frames go from 320x180 to 228x128 px.
FACE_TARGET_PX = 32
MIN_SHORT_SIDE = 128
SCALE_RULE = f"faces-{FACE_TARGET_PX}px-min{MIN_SHORT_SIDE}"  # for the detection cache's key


def face_sized_reduction(found: np.ndarray, scale: float, small_hw: tuple[int, int]) -> float | None:
    """How much further than ``scale`` frames can shrink for the faces ``found`` (boxes in full-frame
    pixels) to keep FACE_TARGET_PX on their shorter side, the shrunk frame's shorter side kept at
    MIN_SHORT_SIDE; ``small_hw`` is the frame's size at ``scale``. 1: no further; None: no faces to tell."""
    if len(found) == 0:
        return None
    sides = np.minimum(found[:, 2] - found[:, 0], found[:, 3] - found[:, 1]) * scale
    floor = min(1.0, MIN_SHORT_SIDE / min(small_hw))
    return float(np.clip(FACE_TARGET_PX / max(float(sides.min()), 1.0), floor, 1.0))


def lost_faces(found: Sequence[np.ndarray], before: int) -> list[int]:
    """Which of consecutive key frames, detected shrunk further, must be detected again at the preset's
    size: those with no face, or fewer than the key frame before them (``before`` faces before the first)."""
    counts = [before] + [len(d) for d in found]
    return [k for k, d in enumerate(found) if len(d) == 0 or len(d) < counts[k]]
