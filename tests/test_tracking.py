"""Face-track linking (syncnet_python run_pipeline.py semantics) with planted tracks."""

from __future__ import annotations

import numpy as np
import pytest

from face_detection.tracking import Track, iou, link_tracks


def _box(cx: float, cy: float, side: float = 150.0, score: float = 0.99) -> list[float]:
    return [cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2, score]


def test_iou_planted():
    a = np.array([0, 0, 10, 10])
    assert iou(a, a) == pytest.approx(1.0)
    assert iou(a, [20, 20, 30, 30]) == 0.0
    assert iou(a, [5, 0, 15, 10]) == pytest.approx(50 / 150)
    assert iou(a, [0, 0, 10, 0]) == 0.0  # touching and empty boxes: no overlap, no division by zero
    assert iou([0, 0, 0, 0], [0, 0, 0, 0]) == 0.0
    pairwise = iou(np.array([a, [5, 0, 15, 10]])[:, None], np.array([a, [20, 20, 30, 30], [0, 0, 5, 10]])[None])
    np.testing.assert_allclose(pairwise, [[1, 0, 0.5], [1 / 3, 0, 0]])


def test_two_faces_crossing_keep_their_identity():
    """A walks right (top row), B walks left (bottom row); they pass each other and swap detector order."""
    n = 150
    dets = []
    for f in range(n):
        a = _box(100 + 4 * f, 200, score=0.99 if f < n // 2 else 0.95)
        b = _box(700 - 4 * f, 400, score=0.97)
        dets.append(np.array(sorted([a, b], key=lambda d: -d[4])))
    tracks = link_tracks(dets)
    assert len(tracks) == 2
    by_start_x = sorted(tracks, key=lambda t: t.boxes[0, 0])
    for track, direction, cy in zip(by_start_x, (4, -4), (200, 400), strict=True):
        np.testing.assert_array_equal(track.frames, np.arange(n))
        assert track.detected.all()
        np.testing.assert_allclose(np.diff(track.boxes[:, 0]), direction)
        np.testing.assert_allclose((track.boxes[:, 1] + track.boxes[:, 3]) / 2, cy)


def test_gap_of_10_frames_is_interpolated():
    n = 130
    dets = [np.array([_box(200 + f, 300 + 0.5 * f)]) for f in range(n)]
    for f in range(50, 60):
        dets[f] = np.zeros((0, 5))
    (track,) = link_tracks(dets)
    np.testing.assert_array_equal(track.frames, np.arange(n))
    np.testing.assert_array_equal(np.flatnonzero(~track.detected), np.arange(50, 60))
    expected = np.array([_box(200 + f, 300 + 0.5 * f)[:4] for f in range(n)])
    np.testing.assert_allclose(track.boxes, expected, atol=1e-9)


def test_gap_of_40_frames_splits_the_track():
    dets = [np.array([_box(300, 300)]) for _ in range(300)]
    for f in range(120, 160):
        dets[f] = np.zeros((0, 5))
    tracks = link_tracks(dets)
    assert [(t.frames[0], t.frames[-1]) for t in tracks] == [(0, 119), (160, 299)]


def test_gap_limit_is_inclusive():
    """The reference allows a frame difference of num_failed_det to the last detection."""
    dets = [np.array([_box(300, 300)]) for _ in range(130)]
    for f in range(60, 84):  # last detection at 59, next at 84: difference 25
        dets[f] = np.zeros((0, 5))
    assert len(link_tracks(dets, max_gap=25)) == 1
    assert len(link_tracks(dets, max_gap=24)) == 0  # two tracks of 60 and 46 detections, both too short


def test_min_track_and_min_face_size_are_strict():
    dets = [np.array([_box(300, 300, side=120)]) for _ in range(101)]
    assert len(link_tracks(dets[:100])) == 0  # exactly min_track detections: dropped
    (track,) = link_tracks(dets)
    assert len(track) == 101
    assert len(link_tracks(dets, min_face_size=120)) == 0  # mean side 120 is not > 120
    # the reference compares max(mean width, mean height): a tall narrow face passes on its height
    tall = [np.array([[250, 200, 330, 330, 0.9]]) for _ in range(101)]
    assert len(link_tracks(tall, min_face_size=100)) == 1


def test_no_match_starts_a_new_track_and_start_frame_offsets():
    # a face that jumps across the frame (IoU 0) mid-way is a new track
    dets = [np.array([_box(200, 300)]) for _ in range(120)] + [np.array([_box(800, 300)]) for _ in range(120)]
    tracks = link_tracks(dets, start_frame=1000)
    assert [(int(t.frames[0]), int(t.frames[-1])) for t in tracks] == [(1000, 1119), (1120, 1239)]
    assert link_tracks([]) == []
    assert link_tracks([np.zeros((0, 5))] * 5) == []


def test_accepts_four_column_boxes_and_lists():
    dets = [[_box(300, 300)[:4]] for _ in range(101)]
    (track,) = link_tracks(dets)
    assert isinstance(track, Track) and track.boxes.shape == (101, 4)
