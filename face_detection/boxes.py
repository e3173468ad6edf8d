"""Per-frame face boxes: padding, smoothing, gap filling, face choice (pure numpy).

Boxes are x1, y1, x2, y2 in pixels, x2/y2 exclusive (``frame[y1:y2, x1:x2]``).
"""

from __future__ import annotations

import numpy as np

# inference.py --pads default: top, bottom, left, right (extra chin room for the mouth)
WAV2LIP_PADS = (0, 10, 0, 0)
# inference.py get_smoothened_boxes(boxes, T=5)
WAV2LIP_SMOOTH_WINDOW = 5


def wav2lip_rect(dets: np.ndarray) -> np.ndarray | None:
    """What Wav2Lip's ``get_detections_for_batch`` makes of one frame's detections.

    The best (first) row of ``dets`` (n, 5), negatives clipped to 0, truncated to int: (4,) int64
    x1, y1, x2, y2; ``None`` when there is no detection.
    """
    dets = np.asarray(dets).reshape(-1, 5)
    if len(dets) == 0:
        return None
    return np.maximum(dets[0, :4], 0).astype(np.int64)


def pad_boxes(boxes: np.ndarray, pads: tuple[int, int, int, int] = WAV2LIP_PADS,
              frame_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Grow boxes (N, 4) by ``pads`` = (top, bottom, left, right) pixels, as inference.py does.

    x1/y1 are clamped at 0 and x2/y2 at the frame's width/height (only those sides, like the original).
    """
    top, bottom, left, right = pads
    boxes = np.asarray(boxes)
    out = boxes + np.array([-left, -top, right, bottom], dtype=boxes.dtype)
    out[..., :2] = np.maximum(out[..., :2], 0)
    if frame_hw is not None:
        height, width = frame_hw
        out[..., 2:] = np.minimum(out[..., 2:], [width, height])
    return out


def smooth_boxes(boxes: np.ndarray, window: int = WAV2LIP_SMOOTH_WINDOW) -> np.ndarray:
    """Wav2Lip's box smoothing: each row becomes the mean of the next ``window`` rows, truncated to int.

    As in inference.py, row i averages rows i..i+window-1 while that fits; the last rows average
    the final ``window`` rows *after* the earlier ones were overwritten (the original smooths in
    place). With fewer than ``window`` rows the window is all n rows (the original's negative slice
    start would average only the last ``window - n`` rows there).
    """
    out = np.array(boxes, dtype=np.int64).reshape(-1, 4)
    n = len(out)
    if n == 0 or window <= 1:
        return out
    window = min(window, n)
    head = n - window + 1  # rows whose forward window fits: a moving average of the untouched rows
    sums = np.cumsum(np.concatenate([np.zeros((1, 4), np.int64), out]), axis=0)
    means = (sums[window:window + head] - sums[:head]) / window
    # float mean then truncation toward zero, as numpy's int assignment of np.mean did
    out[:head] = np.trunc(means).astype(np.int64)
    for i in range(head, n):
        out[i] = np.trunc(out[n - window:].mean(axis=0)).astype(np.int64)
    return out


def true_runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Inclusive (first, last) index ranges where ``mask`` is True."""
    hits = np.asarray(mask, dtype=bool).ravel()
    edges = np.diff(np.concatenate([[0], hits.astype(np.int8), [0]]))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1) - 1
    return [(int(a), int(b)) for a, b in zip(starts, ends, strict=True)]


def fill_gaps(boxes: np.ndarray, max_gap: int) -> tuple[np.ndarray, np.ndarray]:
    """Linearly interpolate interior runs of NaN rows no longer than ``max_gap`` frames.

    ``boxes`` (N, 4) float, a NaN row = no face. Runs at the start/end, or longer than ``max_gap``,
    stay NaN. Returns ``(filled (N, 4) float64, found (N,) bool)``, found = the row has a box now.
    """
    out = np.array(boxes, dtype=np.float64).reshape(-1, 4)
    found = ~np.isnan(out).any(axis=1)
    out[~found] = np.nan
    for first, last in true_runs(~found):
        if first == 0 or last == len(out) - 1 or last - first + 1 > max_gap:
            continue
        before, after = out[first - 1], out[last + 1]
        t = (np.arange(first, last + 1) - (first - 1))[:, None] / (last + 2 - first)
        out[first:last + 1] = before + (after - before) * t
        found[first:last + 1] = True
    return out, found


def choose_face(dets: np.ndarray, *, index: int = 0, point: tuple[float, float] | None = None) -> np.ndarray | None:
    """Pick one face from a frame's detections (n, 5) or (n, 4); returns its (4,) float64 box or None.

    ``point`` = (x, y): the box containing the point (the one whose centre is nearest when several
    or none contain it). Otherwise the ``index``-th largest box by area (0 = largest); ``None`` when
    there are not that many.
    """
    dets = np.asarray(dets, dtype=np.float64)
    if dets.size == 0:
        return None
    boxes = dets.reshape(len(dets), -1)[:, :4]
    if point is not None:
        px, py = point
        inside = (boxes[:, 0] <= px) & (px < boxes[:, 2]) & (boxes[:, 1] <= py) & (py < boxes[:, 3])
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        dist = np.hypot(centres[:, 0] - px, centres[:, 1] - py)
        candidates = np.flatnonzero(inside) if inside.any() else np.arange(len(boxes))
        return boxes[candidates[np.argmin(dist[candidates])]].copy()
    if not 0 <= index < len(boxes):
        return None
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    # stable, so equal areas keep the detector's (score) order
    return boxes[np.argsort(-areas, kind="stable")[index]].copy()
