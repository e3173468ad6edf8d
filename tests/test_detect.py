"""The lip-sync detection pass: the fast preset detects at the size the faces are, and its boxes match
those of the fixed 320 px preset (planted, scale-agnostic detector: the random test weights find no face)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from face_detection import keyframes
from lipsync import detect, faces
from lipsync.options import LipSyncOptions

W, H = 1280, 720
GREY = 128


class BlobDetector:
    """Finds the non-grey blob in any frame it is handed, at whatever size; records the sizes."""

    def __init__(self) -> None:
        self.sizes: list[tuple[int, int]] = []

    def detect(self, frames, scale: float = 1.0):
        out = []
        for frame in frames:
            self.sizes.append(frame.shape[:2])
            ys, xs = np.nonzero(np.abs(frame.astype(int) - GREY).sum(axis=2) > 24)
            if len(xs) < 4:
                out.append(np.zeros((0, 5), np.float32))
            else:
                out.append(np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1, 0.99]], np.float32))
        return out


def clip(face_bgr: np.ndarray, side: int, n: int, *, gone: range = range(0)):
    """``n`` 720p frames: the astronaut's face, ``side`` px tall, drifting; absent in ``gone``."""
    face = cv2.resize(face_bgr[20:300, 130:380], (round(side * 250 / 280), side), interpolation=cv2.INTER_AREA)
    fh, fw = face.shape[:2]
    for i in range(n):
        frame = np.full((H, W, 3), GREY, np.uint8)
        if i not in gone:
            x = round(100 + 6 * i + 30 * np.sin(i / 7))
            y = round((H - fh) / 2 + 20 * np.cos(i / 9))
            frame[y:y + fh, x:x + fw] = face
        yield frame


def boxes_for(frames, n: int, options: LipSyncOptions, detector) -> np.ndarray:
    dets = detect.detect_faces(detector, frames, n, options)
    return faces.boxes_from_detections(dets, n, options, (H, W))


@pytest.mark.parametrize("side, shrinks", [(90, False), (200, True), (480, True)])
def test_faces_detected_at_their_size_match_the_320_px_preset(monkeypatch, face_image_bgr, side, shrinks):
    n, options = 61, LipSyncOptions()
    adaptive = BlobDetector()
    boxes, found = boxes_for(clip(face_image_bgr, side, n), n, options, adaptive)
    monkeypatch.setattr(keyframes, "FACE_TARGET_PX", 10**6)  # never shrink further: the plain 320 px preset
    preset = BlobDetector()
    ref_boxes, ref_found = boxes_for(clip(face_image_bgr, side, n), n, options, preset)

    assert found.all() and ref_found.all()
    assert set(preset.sizes) == {(180, 320)}
    key_sizes = set(adaptive.sizes[1:])  # the first key frame is detected at the preset's size
    if shrinks:
        assert max(h for h, _ in key_sizes) < 180 and min(h for h, _ in key_sizes) >= keyframes.MIN_SHORT_SIDE
    else:  # a 90 px face is 20 px wide at 320 px: no room to shrink
        assert key_sizes == {(180, 320)}
    # the same boxes, within the coarser pixels of the smaller frames
    step = W / min(w for _, w in adaptive.sizes)
    assert np.abs(boxes - ref_boxes).max() <= 2 * step + 1
    ious = [faces.iou(a, b) for a, b in zip(boxes.astype(float), ref_boxes.astype(float), strict=True)]
    assert min(ious) > 0.93


def test_a_face_lost_at_the_small_size_is_looked_for_at_the_preset_size(face_image_bgr):
    class SmallBlind(BlobDetector):
        """Misses faces in frames shrunk below the preset's size (as a real net might, at its limit)."""

        def detect(self, frames, scale: float = 1.0):
            found = super().detect(frames)
            return [f if frame.shape[0] >= 180 else f[:0] for frame, f in zip(frames, found, strict=True)]

    n, options = 41, LipSyncOptions()
    detector = SmallBlind()
    boxes, found = boxes_for(clip(face_image_bgr, 400, n), n, options, detector)
    assert found.all()
    assert (180, 320) in detector.sizes[1:] and any(h < 180 for h, _ in detector.sizes)


def test_detection_cache_key_names_the_scale_rule():
    rule = keyframes.SCALE_RULE
    assert str(keyframes.FACE_TARGET_PX) in rule and str(keyframes.MIN_SHORT_SIDE) in rule


def test_lost_faces_are_those_with_none_or_fewer_than_the_key_frame_before():
    face = np.zeros((1, 5), np.float32)
    two, none = np.zeros((2, 5), np.float32), np.zeros((0, 5), np.float32)
    assert keyframes.lost_faces([face, two, face, none, face], before=2) == [0, 2, 3]
    assert keyframes.lost_faces([face, face], before=0) == []
    assert keyframes.lost_faces([], before=1) == []
