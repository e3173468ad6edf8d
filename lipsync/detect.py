"""The face-detection pass of a lip-sync run: every frame at full size, or shrunk key frames.

``detection="original"`` runs S3FD on every frame at full resolution, as ``inference.py``.
``detection="fast"`` runs it on frames shrunk to ``detect_size`` px on their longest side, on every
``detect_every``-th frame and the last; where a face appears, disappears or jumps between two key
frames, the frames in between are detected too. Both return raw detections ``{frame: (n, 5)}`` in
the full frames' pixels for the frames the detector saw; :mod:`lipsync.faces` turns them into boxes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import cv2
import numpy as np
import torch

from face_detection.detector import MIN_SIDE, FaceDetector, Variant
from face_detection.keyframes import mark_key_frames
from lipsync import faces, weights
from lipsync.errors import NoFaceError, WeightsError
from lipsync.options import FULL_FRAME, LipSyncOptions
from lipsync.progress import counted

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
                  weights_dir: str | os.PathLike | None = None, winograd: int | None = None,
                  dtype: torch.dtype = torch.float32, across_cores: bool = False) -> FaceDetector:
    """An S3FD detector from a registry name or file (``s3fd`` for lip sync, ``sfd_face`` for scoring).

    ``winograd`` (see FaceDetector): the block size of the deep layers' Winograd convolutions on the
    CPU in float32, or None for direct ones. The transformed kernels are 4x the weights (about 170 MB
    more for S3FD). ``across_cores``: see FaceDetector.
    """
    path = weights.resolve(name_or_path, weights_dir=weights_dir)
    fix = weights.how_to_replace(name_or_path, path, weights_dir=weights_dir)
    try:
        return FaceDetector(weights.load_state_dict(path, fix=fix), variant=variant, device=device, winograd=winograd,
                            dtype=dtype, across_cores=across_cores)
    except ValueError as exc:  # face_detection reports a checkpoint that does not fit the net this way
        raise WeightsError(f"{path.name}: {exc}") from exc


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


# The fast preset detects at the size the faces are: once a key frame has faces, later key frames are
# shrunk further, until the smallest face found is FACE_TARGET_PX on its shorter side. S3FD's smallest
# anchors are 16 px (stride 4) and it was trained to find faces from that size up, so 32 px keeps a 2x
# margin; the frame's shorter side stays at least MIN_SHORT_SIDE px, so the detector's deepest layers
# (stride 128) still see a few cells. A key frame that loses a face at the smaller size is detected
# again at the preset's size, and refinement between key frames runs at the preset's size too. On a
# 720p talking head 190 px wide (47 px at 320 px) the key frames go from 320x180 to 228x128 px.
FACE_TARGET_PX = 32
MIN_SHORT_SIDE = 128
SCALE_RULE = f"faces-{FACE_TARGET_PX}px-min{MIN_SHORT_SIDE}"  # for the detection cache's key


def face_sized_reduction(found: np.ndarray, scale: float, small_hw: tuple[int, int]) -> float | None:
    """How much further than ``scale`` frames can shrink for the faces ``found`` (boxes in full-frame
    pixels) to keep FACE_TARGET_PX on their shorter side, the shrunk frame's shorter side kept at
    MIN_SHORT_SIDE; ``small_hw`` is the frame's size at ``scale``. 1: no further; None: no faces to tell."""
    if len(found) == 0:
        return None
    sides = np.minimum(found[:, 2] - found[:, 0], found[:, 3] - found[:, 1]) * scale
    floor = min(1.0, MIN_SHORT_SIDE / min(small_hw))
    return float(np.clip(FACE_TARGET_PX / max(float(sides.min()), 1.0), floor, 1.0))


def lost_faces(found: Sequence[np.ndarray], before: int) -> list[int]:
    """Which of consecutive key frames, detected shrunk further, must be detected again at the preset's
    size: those with no face, or fewer than the key frame before them (``before`` faces before the first)."""
    counts = [before] + [len(d) for d in found]
    return [k for k, d in enumerate(found) if len(d) == 0 or len(d) < counts[k]]


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
