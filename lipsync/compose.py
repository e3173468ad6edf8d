"""Paste a generated 96x96 face back into its frame.

``blend="none"`` is the original: resize (cv2 bilinear) to the face box and overwrite it. This is
what the published LSE scores were measured on, and it leaves a visible rectangle where the
generator's slightly blurred, recoloured face meets the frame.

``blend="feather"`` blends only the mouth part of the box with a smooth alpha mask:
* alpha is 0 over the whole top half. The generator only re-synthesises the lower half (rows
  48..95 are masked at its input); its top half is a blurrier copy of the frame, so keeping the
  frame's own pixels there loses nothing and keeps the eyes sharp.
* alpha rises from 0 at mid-height to 1 over the next eighth of the box (smoothstep, no kink),
  above where the upper lip sits in a Wav2Lip box, so the new mouth is fully used.
* alpha falls to 0 at the left, right and bottom edges over a narrow band, so there is no
  rectangular seam; the band is narrow because the jaw moves with the mouth and a wide band
  would show the old and new chin at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import cv2
import numpy as np

FEATHER_TOP = 0.5  # alpha is 0 above this fraction of the box height (unchanged upper face)
FEATHER_RISE = 0.125  # then reaches 1 over this fraction of the height
FEATHER_SIDE = 0.1  # fade band at the left/right edges, fraction of the box width
FEATHER_BOTTOM = 0.1  # fade band at the bottom edge, fraction of the box height


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def feather_mask(height: int, width: int) -> np.ndarray:
    """Alpha (height, width) float32 in [0, 1] for ``blend="feather"``, sampled at pixel centres."""
    y = (np.arange(height, dtype=np.float64) + 0.5) / height
    x = (np.arange(width, dtype=np.float64) + 0.5) / width
    vertical = _smoothstep((y - FEATHER_TOP) / FEATHER_RISE) * _smoothstep((1.0 - y) / FEATHER_BOTTOM)
    horizontal = _smoothstep(x / FEATHER_SIDE) * _smoothstep((1.0 - x) / FEATHER_SIDE)
    return np.outer(vertical, horizontal).astype(np.float32)


def paste(frame: np.ndarray, face_u8: np.ndarray, box: Sequence[float] | np.ndarray, *,
          blend: Literal["none", "feather"] = "none") -> np.ndarray:
    """Return a copy of ``frame`` (H,W,3) uint8 with ``face_u8`` resized into ``box`` (x1, y1, x2, y2).

    A box partly outside the frame pastes its visible part; an empty, inverted, non-finite or fully
    outside box returns the frame unchanged (as a copy). ``frame`` itself is never modified.
    """
    if blend not in ("none", "feather"):
        raise ValueError(f"blend must be 'none' or 'feather', got {blend!r}")
    out = frame.copy()
    coords = np.asarray(box, dtype=np.float64).reshape(-1)
    if coords.shape != (4,) or not np.isfinite(coords).all():
        return out
    x1, y1, x2, y2 = (int(v) for v in coords)
    width, height = x2 - x1, y2 - y1
    frame_h, frame_w = frame.shape[:2]
    # visible part of the box, in frame coordinates
    vx1, vy1, vx2, vy2 = max(x1, 0), max(y1, 0), min(x2, frame_w), min(y2, frame_h)
    if width <= 0 or height <= 0 or vx1 >= vx2 or vy1 >= vy2:
        return out

    resized = cv2.resize(np.ascontiguousarray(face_u8, dtype=np.uint8), (width, height))  # bilinear
    if resized.ndim == 2:  # cv2 drops a trailing channel axis of size 1
        resized = resized[..., None]
    visible = (slice(vy1 - y1, vy2 - y1), slice(vx1 - x1, vx2 - x1))
    region = (slice(vy1, vy2), slice(vx1, vx2))
    if blend == "none":
        out[region] = resized[visible]
        return out

    alpha = feather_mask(height, width)[visible][..., None]
    rows = np.flatnonzero(alpha[:, :, 0].any(axis=1))  # skip rows the mask leaves untouched
    if rows.size == 0:
        return out
    band = slice(rows[0], rows[-1] + 1)
    target = out[region][band].astype(np.float32)
    mixed = target + alpha[band] * (resized[visible][band].astype(np.float32) - target)
    out[region][band] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    return out


def crossfade(under: np.ndarray, over: np.ndarray, weight: float) -> np.ndarray:
    """``weight`` of ``over`` laid on ``under`` (same shape, uint8), rounded: 1 gives ``over`` and 0
    ``under``, exactly, so frames outside a fade stay bit for bit what they were."""
    if weight >= 1:
        return over
    if weight <= 0:
        return under
    mixed = under.astype(np.float32) + np.float32(weight) * (over.astype(np.float32) - under.astype(np.float32))
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
