"""Shot boundaries like PySceneDetect 0.5.1's ContentDetector with the settings syncnet_python uses.

syncnet_python's run_pipeline splits the video into shots before tracking faces, with
``ContentDetector()`` defaults and ``VideoManager.set_downscale_factor()`` (automatic):

* each frame is subsampled (every k-th row and column, k from the frame width, see
  :func:`downscale_factor`) and converted to HSV with OpenCV (H in 0..179);
* its score is the mean over H, S and V of the mean absolute difference to the previous frame;
* frame i starts a new shot when its score is >= 30 and at least 15 frames have passed since the
  previous cut (the first frame counts as a cut);
* no cut at all means one shot covering the whole video.

The per-frame work (:class:`ContentScorer`) keeps only the previous small HSV frame and returns one
float per frame, so a long video streams; the cut logic (:func:`find_cuts`) is a pure function.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

THRESHOLD = 30.0
MIN_SCENE_LEN = 15  # frames
# PySceneDetect's automatic downscale: frame width >= key -> keep every value-th pixel
DOWNSCALE_FACTORS = ((3200, 12), (2100, 8), (1700, 6), (1200, 5), (900, 4), (600, 3), (400, 2))


def downscale_factor(frame_width: int) -> int:
    """Subsampling step PySceneDetect picks for a frame of this width (1 below 400 px)."""
    for width, factor in DOWNSCALE_FACTORS:
        if frame_width >= width:
            return factor
    return 1


def small_hsv(frame_bgr: np.ndarray, factor: int) -> np.ndarray:
    """(h, w, 3) uint8 OpenCV HSV of the frame subsampled with step ``factor``."""
    small = frame_bgr[::factor, ::factor] if factor > 1 else frame_bgr
    return cv2.cvtColor(np.ascontiguousarray(small), cv2.COLOR_BGR2HSV)


def content_score(prev_hsv: np.ndarray, hsv: np.ndarray) -> float:
    """Mean over the three channels of the mean absolute per-pixel HSV difference."""
    diff = np.abs(hsv.astype(np.int32) - prev_hsv.astype(np.int32))
    n_pixels = float(hsv.shape[0] * hsv.shape[1])
    return sum(float(diff[..., c].sum()) / n_pixels for c in range(3)) / 3.0


class ContentScorer:
    """Streaming per-frame content score (0.0 for the first frame)."""

    def __init__(self, frame_width: int) -> None:
        self.factor = downscale_factor(frame_width)
        self._prev: np.ndarray | None = None

    def __call__(self, frame_bgr: np.ndarray) -> float:
        hsv = small_hsv(frame_bgr, self.factor)
        score = 0.0 if self._prev is None else content_score(self._prev, hsv)
        self._prev = hsv
        return score


def find_cuts(scores: Sequence[float] | np.ndarray, *, threshold: float = THRESHOLD,
              min_scene_len: int = MIN_SCENE_LEN) -> list[int]:
    """Frames that start a new shot; ``scores[i]`` compares frame i with frame i-1 (``scores[0]`` unused)."""
    cuts: list[int] = []
    last_cut = 0
    for i in range(1, len(scores)):
        if scores[i] >= threshold and i - last_cut >= min_scene_len:
            cuts.append(i)
            last_cut = i
    return cuts


def shots_from_cuts(cuts: Sequence[int], n_frames: int) -> list[tuple[int, int]]:
    """[(start, end), ...] with ``end`` exclusive; the whole video when there is no cut."""
    bounds = [0, *cuts, n_frames]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def detect_shots(scores: Sequence[float] | np.ndarray, *, threshold: float = THRESHOLD,
                 min_scene_len: int = MIN_SCENE_LEN) -> list[tuple[int, int]]:
    """Shots (start, end-exclusive) of a video from its per-frame content scores."""
    return shots_from_cuts(find_cuts(scores, threshold=threshold, min_scene_len=min_scene_len), len(scores))
