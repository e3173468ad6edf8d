"""The face-detection pass of a lip-sync run: every frame at full size, or shrunk key frames.

``detection="original"`` runs S3FD on every frame at full resolution, as ``inference.py``.
``detection="fast"`` runs it on frames shrunk to ``detect_size`` px on their longest side, on every
``detect_every``-th frame and the last; where a face appears, disappears or jumps between two key
frames, the frames in between are detected too. Both return raw detections ``{frame: (n, 5)}`` in
the full frames' pixels for the frames the detector saw; :mod:`lipsync.faces` turns them into boxes.
"""

from __future__ import annotations

from collections.abc import Iterable

import cv2
import numpy as np

from common.errors import NoFaceError
from common.progress import counted
from face_detection.detector import MIN_SIDE, FaceDetector
from face_detection.keyframes import face_sized_reduction, lost_faces, mark_key_frames
from lipsync import faces
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


class DetectionPass:
    """Detections of a stream of frames, advanced on demand (the render pass asks as it goes).

    ``settled`` frames (from the first) have their final detections in ``dets``; ``advance(n)``
    reads and detects frames until at least ``n`` are settled or the stream ends.
    """

    def __init__(self, detector: FaceDetector, frames: Iterable[np.ndarray], n_frames: int,
                 options: LipSyncOptions) -> None:
        self.n_frames = n_frames
        frames = counted(frames, total=n_frames, desc="face detection")
        if options.detection == "original":
            self._preset: EveryFrameDetection | KeyFrameDetection = EveryFrameDetection(
                detector, batch_size=options.face_det_batch_size)
            self._frames = ((i, frame, True) for i, frame in enumerate(frames))
        else:
            self._preset = KeyFrameDetection(detector, detect_size=options.detect_size,
                                             batch_size=options.face_det_batch_size)
            self._frames = mark_key_frames(frames, options.detect_every)
        self.done = False

    @property
    def dets(self) -> Detections:
        return self._preset.dets

    @property
    def settled(self) -> int:
        return self.n_frames if self.done else self._preset.settled

    def advance(self, n: int) -> None:
        """Read and detect until the first ``n`` frames are settled (or the stream has ended)."""
        preset = self._preset
        while not self.done and preset.settled < n:
            if preset.waiting >= n - 1:  # the frames needed are read: detect them now, not at a full batch
                preset.flush()
                continue
            item = next(self._frames, None)
            if item is None:
                preset.flush()
                self.done = True
                return
            preset.add(*item)

    def finish(self) -> Detections:
        self.advance(self.n_frames)
        if not self.done and next(self._frames, None) is None:
            self.done = True
        return self.dets


def detect_faces(detector: FaceDetector, frames: Iterable[np.ndarray], n_frames: int,
                 options: LipSyncOptions) -> Detections:
    """Raw detections of the first ``n_frames`` frames, as the options' preset looks at them."""
    return DetectionPass(detector, frames, n_frames, options).finish()


class EveryFrameDetection:
    """The original preset: every frame at full size, in batches."""

    def __init__(self, detector: FaceDetector, *, batch_size: int) -> None:
        self.detector = detector
        self.batch_size = batch_size
        self.dets: Detections = {}
        self._pending: list[np.ndarray] = []

    @property
    def settled(self) -> int:
        return len(self.dets)

    @property
    def waiting(self) -> int:
        """The newest frame read, detected or not (-1 before the first)."""
        return len(self.dets) + len(self._pending) - 1

    def add(self, index: int, frame: np.ndarray, is_key: bool) -> None:
        self._pending.append(frame)
        if len(self._pending) == self.batch_size:
            self.flush()

    def flush(self) -> None:
        """Detect the frames waiting for a batch (also early, when the render pass needs them)."""
        if self._pending:
            for found in self.detector.detect(self._pending):
                self.dets[len(self.dets)] = found
        self._pending = []


class KeyFrameDetection:
    """The fast preset over a stream of frames: key frames shrunk and detected in batches.

    Frames are shrunk to ``detect_size`` px on their longest side (the preset's size), and key frames
    further to the size the faces of the first key frame with faces allow (see FACE_TARGET_PX). Between two key frames
    that disagree (see ``faces.needs_refinement``) every frame is detected too, so the shrunk frames
    since the last settled key frame are kept: at most a batch of key frames times ``detect_every``.
    """

    def __init__(self, detector: FaceDetector, *, detect_size: int, batch_size: int) -> None:
        self.detector = detector
        self.detect_size = detect_size
        self.batch_size = batch_size
        self.dets: Detections = {}
        self._scale: float | None = None  # the preset's, set by the first frame
        self._reduce: float | None = None  # the key frames' further shrink, set by the first with faces
        self._small: dict[int, np.ndarray] = {}  # frames at the preset's size, not yet settled
        self._queued: list[int] = []  # key frames waiting for a batch
        self._last_key: int | None = None  # the newest key frame already detected

    @property
    def settled(self) -> int:
        """Frames with final detections: up to the newest detected key frame (the next one decides the rest)."""
        return 0 if self._last_key is None else self._last_key + 1

    @property
    def waiting(self) -> int:
        """The newest key frame read, detected or not (-1 before the first)."""
        return self._queued[-1] if self._queued else (-1 if self._last_key is None else self._last_key)

    def add(self, index: int, frame: np.ndarray, is_key: bool) -> None:
        if self._scale is None:
            self._scale = shrink_scale(frame.shape[:2], self.detect_size)
        self._small[index] = _resized(frame, self._scale)
        if is_key:
            self._queued.append(index)
            # key frames one at a time until one has faces (they set the size of all later ones), so
            # that the result never depends on how the key frames were batched
            if len(self._queued) == self.batch_size or self._reduce is None:
                self.flush()

    def flush(self) -> None:
        """Detect the key frames waiting for a batch, and the frames between those that disagree."""
        if not self._queued:
            return
        self._detect_keys(self._queued)
        refine: list[int] = []
        for key in self._queued:
            last = self._last_key
            if last is not None and key - last > 1 and faces.needs_refinement(self.dets[last], self.dets[key]):
                refine.extend(range(last + 1, key))
            self._last_key = key
        for start in range(0, len(refine), self.batch_size):
            self._detect(refine[start:start + self.batch_size])
        newest = self._queued[-1]
        if self._reduce is None:
            self._reduce = face_sized_reduction(self.dets[newest], self._scale or 1.0, self._small[newest].shape[:2])
        self._small = {i: f for i, f in self._small.items() if i >= newest}
        self._queued = []

    def _detect_keys(self, keys: list[int]) -> None:
        """Key frames at the reduced size; those that lose a face there, again at the preset's size."""
        reduce = self._reduce or 1.0
        self._detect(keys, reduce)
        if reduce < 1:
            before = len(self.dets[self._last_key]) if self._last_key is not None else 0
            recheck = [keys[k] for k in lost_faces([self.dets[key] for key in keys], before)]
            if recheck:
                self._detect(recheck)

    def _detect(self, indices: list[int], reduce: float = 1.0) -> None:
        """Detect on the shrunk frames (further by ``reduce``) and keep the boxes in full-frame pixels."""
        if reduce == 1:
            frames = [self._small[i] for i in indices]
            unscale = np.array([self._scale] * 4 + [1], np.float32)
        else:
            frames = [_resized(self._small[i], reduce) for i in indices]
            (h, w), (small_h, small_w) = frames[0].shape[:2], self._small[indices[0]].shape[:2]
            # the rounded size of the twice-shrunk frame, per axis
            unscale = np.array([self._scale * w / small_w, self._scale * h / small_h] * 2 + [1], np.float32)
        for index, found in zip(indices, self.detector.detect(frames), strict=True):
            self.dets[index] = found / unscale if len(found) else found


def _resized(frame: np.ndarray, scale: float) -> np.ndarray:
    if scale >= 1:
        return frame
    h, w = frame.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(frame, size, interpolation=cv2.INTER_LINEAR)
