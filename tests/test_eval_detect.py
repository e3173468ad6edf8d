"""The evaluator's detection pass at the faces' size: the same boxes as at the detector scale
(planted, scale-aware detector: the random test weights find no face)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from face_detection import keyframes
from lipsync import faces
from syncnet.options import EvalOptions
from syncnet.tracks import detect_pass
from tests.test_detect import BlobDetector, clip


class ScaledBlobDetector(BlobDetector):
    """FaceDetector.detect's contract: frames shrunk by ``scale`` before the net, boxes in full-frame pixels."""

    def detect(self, frames, scale: float = 1.0):
        small = [cv2.resize(f, (0, 0), fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR) for f in frames]
        found = super().detect(small)
        return [d if not len(d) else np.concatenate([d[:, :4] / scale, d[:, 4:]], axis=1) for d in found]


def _key_boxes(dets: list[np.ndarray], every: int) -> np.ndarray:
    keys = sorted(set(range(0, len(dets), every)) | {len(dets) - 1})
    assert all(len(dets[k]) == 1 for k in keys)
    return np.stack([dets[k][0, :4] for k in keys])


@pytest.mark.parametrize(("side", "shrinks"), [(90, False), (200, True), (480, True)])
def test_key_frames_at_the_faces_size_find_the_same_boxes(face_image_bgr, side, shrinks):
    n, every = 41, 5
    at_scale, at_face = ScaledBlobDetector(), ScaledBlobDetector()
    ref, _ = detect_pass(clip(face_image_bgr, side, n), at_scale,
                         EvalOptions(detect_every=every, detect_at_face_size=False), progress=False)
    dets, _ = detect_pass(clip(face_image_bgr, side, n), at_face,
                          EvalOptions(detect_every=every, detect_at_face_size=True), progress=False)

    assert set(at_scale.sizes) == {(180, 320)}  # the reference's 0.25
    later = set(at_face.sizes[1:])  # the first key frame is detected at the detector scale
    if shrinks:
        assert max(h for h, _ in later) < 180 and min(h for h, _ in later) >= keyframes.MIN_SHORT_SIDE
    else:  # a 90 px face is 22 px tall at 0.25: no room to shrink
        assert later == {(180, 320)}
    boxes, ref_boxes = _key_boxes(dets, every), _key_boxes(ref, every)
    step = 1280 / min(w for _, w in at_face.sizes)
    assert np.abs(boxes - ref_boxes).max() <= 2 * step + 1
    assert min(faces.iou(a, b) for a, b in zip(boxes.astype(float), ref_boxes.astype(float), strict=True)) > 0.93
    assert all(not len(d) for k, d in enumerate(dets) if k % every and k != n - 1)  # key frames only


def test_a_key_frame_that_loses_its_face_is_detected_again_at_the_detector_scale(face_image_bgr):
    class SmallBlind(ScaledBlobDetector):
        def detect(self, frames, scale: float = 1.0):
            found = super().detect(frames, scale)
            return [d[:0] if scale < 0.25 else d for d in found]

    n, every = 41, 5
    detector = SmallBlind()
    dets, _ = detect_pass(clip(face_image_bgr, 400, n), detector,
                          EvalOptions(detect_every=every, detect_at_face_size=True), progress=False)
    _key_boxes(dets, every)  # every key frame has its face
    assert any(h < 180 for h, _ in detector.sizes) and detector.sizes.count((180, 320)) > 1


def test_key_frames_wait_for_a_batch_once_the_size_is_known(face_image_bgr):
    calls: list[int] = []

    class Counting(ScaledBlobDetector):
        def detect(self, frames, scale: float = 1.0):
            calls.append(len(frames))
            return super().detect(frames, scale)

    n, every = 61, 5
    detect_pass(clip(face_image_bgr, 200, n, gone=range(0, 12)), Counting(),
                EvalOptions(detect_every=every, detect_at_face_size=True, detect_batch_size=4), progress=False)
    # key frames 0, 5 and 10 have no face (one call each); 15 sets the size; the rest go 4 at a time
    assert calls[:4] == [1, 1, 1, 1] and max(calls) == 4 and len(calls) < 13


def test_by_default_key_frames_shrink_only_when_not_every_frame_is_detected(face_image_bgr):
    """``detect_at_face_size`` is on by default, but the reference's every frame stays at the detector scale."""
    every_frame, every_fifth = ScaledBlobDetector(), ScaledBlobDetector()
    assert not EvalOptions().face_sized_key_frames and EvalOptions(detect_every=5).face_sized_key_frames
    dets, _ = detect_pass(clip(face_image_bgr, 300, 12), every_frame, EvalOptions(), progress=False)
    assert set(every_frame.sizes) == {(180, 320)} and all(len(d) == 1 for d in dets)
    detect_pass(clip(face_image_bgr, 300, 41), every_fifth, EvalOptions(detect_every=5), progress=False)
    assert every_fifth.sizes[0] == (180, 320) and max(h for h, _ in every_fifth.sizes[1:]) < 180
