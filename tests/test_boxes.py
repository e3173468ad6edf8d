"""Box padding/smoothing (inference.py goldens), gap filling and face choice with planted answers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from face_detection.boxes import choose_face, fill_gaps, pad_boxes, smooth_boxes, true_runs
from tests.conftest import DATA


@pytest.fixture(scope="module")
def logic() -> dict:
    return json.loads((DATA / "golden" / "inference_logic.json").read_text())


def test_pad_and_smooth_match_inference_py(logic):
    raw = np.array(logic["raw_rects_x1y1x2y2"])
    padded = pad_boxes(raw, tuple(logic["pads_top_bottom_left_right"]), tuple(logic["image_hw"]))
    np.testing.assert_array_equal(padded, logic["padded_x1y1x2y2"])
    smoothed = smooth_boxes(padded, 5)
    assert smoothed.dtype == np.int64
    np.testing.assert_array_equal(smoothed, logic["smoothed_T5_x1y1x2y2"])
    np.testing.assert_array_equal(padded, logic["padded_x1y1x2y2"])  # input left alone


def _smooth_in_place_like_inference_py(boxes: np.ndarray, window: int) -> np.ndarray:
    boxes = boxes.copy()
    n = len(boxes)
    for i in range(n):
        boxes[i] = np.mean(boxes[n - window:] if i + window > n else boxes[i:i + window], axis=0)
    return boxes


@pytest.mark.parametrize(("n", "window"), [(5, 5), (6, 5), (9, 5), (31, 5), (200, 5), (5, 2), (7, 7), (9, 7)])
def test_smooth_equals_the_in_place_loop(n, window):
    boxes = np.random.default_rng(n * window).integers(0, 1920, (n, 4))
    np.testing.assert_array_equal(smooth_boxes(boxes, window), _smooth_in_place_like_inference_py(boxes, window))


def test_smooth_short_runs_use_a_window_of_all_rows():
    boxes = np.array([[0, 0, 10, 10], [3, 3, 13, 13], [6, 6, 17, 17]])
    np.testing.assert_array_equal(smooth_boxes(boxes, 5), _smooth_in_place_like_inference_py(boxes, 3))
    np.testing.assert_array_equal(smooth_boxes(boxes, 5), [[3, 3, 13, 13], [4, 4, 14, 14], [4, 4, 14, 14]])
    np.testing.assert_array_equal(smooth_boxes(boxes[:1], 5), boxes[:1])
    assert smooth_boxes(np.zeros((0, 4), int), 5).shape == (0, 4)


def test_pad_clamps_only_the_grown_sides():
    boxes = np.array([[5, 2, 95, 110], [-4, 3, 50, 60]])
    out = pad_boxes(boxes, (3, 10, 6, 8), (115, 100))
    np.testing.assert_array_equal(out, [[0, 0, 100, 115], [0, 0, 58, 70]])


def test_true_runs():
    mask = np.array([True, False, False, True, True, False, True])
    assert true_runs(mask) == [(0, 0), (3, 4), (6, 6)]
    assert true_runs(np.zeros(4, bool)) == []
    assert true_runs(np.ones(3, bool)) == [(0, 2)]
    assert true_runs(np.zeros(0, bool)) == []


def _moving_box(n: int) -> np.ndarray:
    t = np.arange(n, dtype=float)[:, None]
    return np.hstack([10 + 2 * t, 20 + t, 110 + 2 * t, 140 + t])


def test_fill_gaps_interpolates_short_interior_gaps_exactly():
    truth = _moving_box(60)
    boxes = truth.copy()
    boxes[20:30] = np.nan  # 10 frames: bridged, on the straight line of the motion
    boxes[40:50] = np.nan
    boxes[40] = truth[40]  # a 1-frame detection splits this gap into 0 + 9
    filled, found = fill_gaps(boxes, max_gap=10)
    np.testing.assert_allclose(filled, truth, atol=1e-9)
    assert found.all()


def test_fill_gaps_leaves_long_gaps_and_edges():
    truth = _moving_box(100)
    boxes = truth.copy()
    boxes[:3] = np.nan
    boxes[30:70] = np.nan  # 40 frames
    boxes[95:] = np.nan
    boxes[80:84] = np.nan
    filled, found = fill_gaps(boxes, max_gap=25)
    assert true_runs(~found) == [(0, 2), (30, 69), (95, 99)]
    assert np.isnan(filled[~found]).all()
    np.testing.assert_allclose(filled[found], truth[found], atol=1e-9)
    np.testing.assert_array_equal(boxes[:3], np.nan)  # input left alone


def test_fill_gaps_partial_nan_row_counts_as_missing():
    boxes = np.array([[0, 0, 10, 10], [np.nan, 1, 11, 11], [2, 2, 12, 12]], dtype=float)
    filled, found = fill_gaps(boxes, max_gap=1)
    assert found.all()
    np.testing.assert_allclose(filled[1], [1, 1, 11, 11])


DETS = np.array([
    [100, 100, 150, 150, 0.99],  # area 2500
    [300, 50, 420, 170, 0.95],  # area 14400, largest
    [10, 10, 90, 90, 0.90],  # area 6400
], dtype=np.float32)


def test_choose_face_by_size():
    np.testing.assert_array_equal(choose_face(DETS), [300, 50, 420, 170])
    np.testing.assert_array_equal(choose_face(DETS, index=1), [10, 10, 90, 90])
    np.testing.assert_array_equal(choose_face(DETS, index=2), [100, 100, 150, 150])
    assert choose_face(DETS, index=3) is None
    assert choose_face(np.zeros((0, 5))) is None
    assert choose_face(DETS[:, :4], index=0).shape == (4,)


def test_choose_face_by_point():
    np.testing.assert_array_equal(choose_face(DETS, point=(120, 130)), [100, 100, 150, 150])
    np.testing.assert_array_equal(choose_face(DETS, point=(92, 60), index=2), [10, 10, 90, 90])  # nearest centre
    nested = np.array([[0, 0, 200, 200, 0.9], [90, 90, 130, 130, 0.8]])
    np.testing.assert_array_equal(choose_face(nested, point=(100, 100)), [0, 0, 200, 200])
    np.testing.assert_array_equal(choose_face(nested, point=(110, 110)), [90, 90, 130, 130])
