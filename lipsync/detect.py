"""The face-detection pass of a lip-sync run: every frame at full size, or shrunk key frames.

``detection="original"`` runs S3FD on every frame at full resolution, as ``inference.py``.
``detection="fast"`` runs it on frames shrunk to ``detect_size`` px on their longest side, on every
``detect_every``-th frame and the last; where a face appears, disappears or jumps between two key
frames, the frames in between are detected too. Both return raw detections ``{frame: (n, 5)}`` in
the full frames' pixels for the frames the detector saw; :mod:`lipsync.faces` turns them into boxes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import cv2
import numpy as np
import torch
from tqdm.auto import tqdm

from face_detection.detector import MIN_SIDE, FaceDetector, Variant
from face_detection.keyframes import mark_key_frames
from lipsync import faces, weights
from lipsync.errors import NoFaceError, WeightsError
from lipsync.options import FULL_FRAME, LipSyncOptions

Detections = dict[int, np.ndarray]
# Wav2Lip's S3FD runs on frames of at least this many pixels a side (see face_detection.detector)
DETECTOR_MIN_SIDE = MIN_SIDE["s3fd"]


def check_detectable(frame_hw: tuple[int, int], name: str, options: LipSyncOptions) -> None:
    """NoFaceError, saying what to do, when frames of this size are too small for the face detector.

    Both presets can look at any frame whose sides reach ``DETECTOR_MIN_SIDE`` (the fast one keeps
    the shrunk frames that large, see ``shrink_scale``), so this is the whole condition.
    """
    height, width = frame_hw
    if min(height, width) >= DETECTOR_MIN_SIDE:
        return
    shaped = options.resize_factor > 1 or options.crop != FULL_FRAME or options.rotate
    raise NoFaceError(
        f"No face can be found in {name}: its frames are {width}x{height} px"
        f"{' after resize_factor/rotate/crop' if shaped else ''}, too small to find a face in: the face "
        f"detector needs at least {DETECTOR_MIN_SIDE} px on each side. Give a fixed face box (box: top bottom "
        "left right) to lip-sync them anyway, or use a larger video")


def shrink_scale(frame_hw: tuple[int, int], detect_size: int) -> float:
    """The fast preset's detection scale: the longest side shrunk to ``detect_size`` (never enlarged),
    but the shortest kept at ``DETECTOR_MIN_SIDE`` where the frame has that much (a 1920x40 strip
    is shrunk to 1536x32, not to 320x7, which S3FD cannot run on)."""
    height, width = frame_hw
    scale = min(1.0, detect_size / max(height, width))
    if max(1, round(min(height, width) * scale)) < DETECTOR_MIN_SIDE:
        scale = min(1.0, DETECTOR_MIN_SIDE / min(height, width))
    return scale


def load_detector(name_or_path: str | os.PathLike, variant: Variant, *, device: str | torch.device = "cpu",
                  weights_dir: str | os.PathLike | None = None, winograd: int | None = None) -> FaceDetector:
    """An S3FD detector from a registry name or file (``s3fd`` for lip sync, ``sfd_face`` for scoring).

    ``winograd`` (see FaceDetector) is off by default: the lip-sync fast preset detects on one
    frame in five, and on the 10 s 720p benchmark F(4x4, 3x3) saved 2 s of its 13 s of detection but
    raised the peak RSS from 1330 to 1491 MB (the transformed kernels are 4x the weights).
    """
    path = weights.resolve(name_or_path, weights_dir=weights_dir)
    fix = weights.how_to_replace(name_or_path, path, weights_dir=weights_dir)
    try:
        return FaceDetector(weights.load_state_dict(path, fix=fix), variant=variant, device=device, winograd=winograd)
    except ValueError as exc:  # face_detection reports a checkpoint that does not fit the net this way
        raise WeightsError(f"{path.name}: {exc}") from exc


def detect_faces(detector: FaceDetector, frames: Iterable[np.ndarray], n_frames: int,
                 options: LipSyncOptions) -> Detections:
    """Raw detections of the first ``n_frames`` frames, as the options' preset looks at them."""
    frames = tqdm(frames, total=n_frames, desc="face detection", unit="frame")
    if options.detection == "original":
        return _every_frame(detector, frames, options.face_det_batch_size)
    fast = KeyFrameDetection(detector, detect_size=options.detect_size, batch_size=options.face_det_batch_size)
    for index, frame, is_key in mark_key_frames(frames, options.detect_every):
        fast.add(index, frame, is_key)
    return fast.finish()


def _every_frame(detector: FaceDetector, frames: Iterable[np.ndarray], batch_size: int) -> Detections:
    dets: Detections = {}
    pending: list[np.ndarray] = []

    def flush() -> None:
        for found in detector.detect(pending):
            dets[len(dets)] = found
        pending.clear()

    for frame in frames:
        pending.append(frame)
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    return dets


class KeyFrameDetection:
    """The fast preset over a stream of frames: key frames shrunk and detected in batches.

    Between two key frames that disagree (see ``faces.needs_refinement``) every frame is detected
    too, so the shrunk frames since the last settled key frame are kept: at most a batch of key
    frames times ``detect_every`` small frames.
    """

    def __init__(self, detector: FaceDetector, *, detect_size: int, batch_size: int) -> None:
        self.detector = detector
        self.detect_size = detect_size
        self.batch_size = batch_size
        self.dets: Detections = {}
        self._scale: float | None = None  # set by the first frame
        self._small: dict[int, np.ndarray] = {}  # shrunk frames not yet settled
        self._queued: list[int] = []  # key frames waiting for a batch
        self._last_key: int | None = None  # the newest key frame already detected

    def add(self, index: int, frame: np.ndarray, is_key: bool) -> None:
        if self._scale is None:
            self._scale = shrink_scale(frame.shape[:2], self.detect_size)
        self._small[index] = self._shrink(frame)
        if is_key:
            self._queued.append(index)
            if len(self._queued) == self.batch_size:
                self._flush()

    def finish(self) -> Detections:
        if self._queued:
            self._flush()
        return self.dets

    def _shrink(self, frame: np.ndarray) -> np.ndarray:
        if self._scale >= 1:
            return frame
        h, w = frame.shape[:2]
        size = (max(1, round(w * self._scale)), max(1, round(h * self._scale)))
        return cv2.resize(frame, size, interpolation=cv2.INTER_LINEAR)

    def _flush(self) -> None:
        self._detect(self._queued)
        refine: list[int] = []
        for key in self._queued:
            last = self._last_key
            if last is not None and key - last > 1 and faces.needs_refinement(self.dets[last], self.dets[key]):
                refine.extend(range(last + 1, key))
            self._last_key = key
        for start in range(0, len(refine), self.batch_size):
            self._detect(refine[start:start + self.batch_size])
        newest = self._queued[-1]
        self._small = {i: f for i, f in self._small.items() if i >= newest}
        self._queued = []

    def _detect(self, indices: list[int]) -> None:
        """Detect on the shrunk frames and keep the boxes in full-frame pixels."""
        unscale = np.array([self._scale] * 4 + [1], np.float32)
        for index, found in zip(indices, self.detector.detect([self._small[i] for i in indices]), strict=True):
            self.dets[index] = found / unscale if len(found) else found
