"""Paste-back of generated faces: the original hard paste and the feathered mouth blend."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from lipsync.compose import feather_mask, paste

FRAME_H, FRAME_W = 120, 160


@pytest.fixture
def frame() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (FRAME_H, FRAME_W, 3), dtype=np.uint8)


@pytest.fixture
def face() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (96, 96, 3), dtype=np.uint8)


def outside(mask_shape, box) -> np.ndarray:
    x1, y1, x2, y2 = box
    keep = np.ones(mask_shape, bool)
    keep[max(y1, 0):max(y2, 0), max(x1, 0):max(x2, 0)] = False
    return keep


def test_hard_paste_is_the_original(frame, face):
    box = (30, 20, 100, 110)  # 70 wide, 90 high
    before = frame.copy()
    out = paste(frame, face, box)
    np.testing.assert_array_equal(frame, before)  # input untouched
    np.testing.assert_array_equal(out[20:110, 30:100], cv2.resize(face, (70, 90)))
    keep = outside(frame.shape[:2], box)
    np.testing.assert_array_equal(out[keep], frame[keep])


def test_float_and_array_boxes(frame, face):
    expected = paste(frame, face, (30, 20, 100, 110))
    np.testing.assert_array_equal(paste(frame, face, np.array([30.7, 20.2, 100.9, 110.5])), expected)


def test_feather_leaves_top_half_and_outside_unchanged(frame, face):
    box = (30, 20, 100, 110)
    out = paste(frame, face, box, blend="feather")
    keep = outside(frame.shape[:2], box)
    np.testing.assert_array_equal(out[keep], frame[keep])
    np.testing.assert_array_equal(out[20:65], frame[20:65])  # top half of the 90-row box
    resized = cv2.resize(face, (70, 90)).astype(np.float64)
    alpha = feather_mask(90, 70)[..., None]
    expected = np.rint(frame[20:110, 30:100] * (1 - alpha) + resized * alpha)
    assert np.abs(out[20:110, 30:100] - expected).max() <= 1
    # the mouth area is the generated face
    np.testing.assert_array_equal(out[20 + 70, 45:85], resized[70, 15:55])


def test_feather_mask_shape_and_profile():
    alpha = feather_mask(90, 70)
    assert alpha.shape == (90, 70) and alpha.dtype == np.float32
    assert alpha.min() == 0.0 and alpha.max() == 1.0
    assert not alpha[:45].any()
    # box edges are (almost) the frame's own pixels: no rectangular seam
    assert max(alpha[:, 0].max(), alpha[:, -1].max(), alpha[-1].max()) < 0.02
    column = alpha[:, 35]
    assert np.all(np.diff(column[45:70]) >= 0)  # rises smoothly below mid-height
    assert np.abs(np.diff(alpha, axis=0)).max() < 0.25  # no hard step anywhere
    assert np.abs(np.diff(alpha, axis=1)).max() < 0.25


@pytest.mark.parametrize("blend", ["none", "feather"])
def test_partly_outside_pastes_visible_part(frame, face, blend):
    box = (-20, 60, 50, 150)  # sticks out left and bottom
    out = paste(frame, face, box, blend=blend)
    keep = outside(frame.shape[:2], box)
    np.testing.assert_array_equal(out[keep], frame[keep])
    full = paste(np.zeros((200, 200, 3), np.uint8), face, (0, 0, 70, 90), blend=blend)
    if blend == "none":
        np.testing.assert_array_equal(out[60:120, 0:50], full[0:60, 20:70])
    else:
        assert not np.array_equal(out[105:120, 0:50], frame[105:120, 0:50])


@pytest.mark.parametrize("box", [(10, 10, 10, 50), (10, 10, 50, 10), (50, 50, 10, 10), (-80, 10, -5, 60),
                                 (10, 130, 50, 200), (170, 0, 260, 90), (np.nan, 0, 10, 10), (1, 2, 3)])
@pytest.mark.parametrize("blend", ["none", "feather"])
def test_degenerate_boxes_leave_frame_unchanged(frame, face, box, blend):
    out = paste(frame, face, box, blend=blend)
    np.testing.assert_array_equal(out, frame)
    assert out is not frame


def test_unknown_blend(frame, face):
    with pytest.raises(ValueError, match="blend"):
        paste(frame, face, (0, 0, 10, 10), blend="poisson")  # type: ignore[arg-type]
