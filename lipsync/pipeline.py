"""Lip sync end to end: probe -> detect -> boxes -> mel chunks -> generator -> paste -> encode.

Two streaming passes over the face video keep memory flat as the video grows: the first runs the
face detector and keeps only boxes (cached by content), the second generates and writes frame by
frame. Only a batch of frames is ever held.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm.auto import tqdm

from face_detection.detector import FaceDetector
from lipsync import detcache, faces, weights
from lipsync.audio import mel_chunks, melspectrogram
from lipsync.compose import paste
from lipsync.errors import InputError, NoFaceError
from lipsync.media import MediaInfo, VideoWriter, count_frames, iter_frames, load_audio, probe
from lipsync.model import generate, load_wav2lip
from lipsync.options import LipSyncOptions

log = logging.getLogger(__name__)

FACE_SIZE = 96  # Wav2Lip's generator works on 96x96 face crops
# Frames held at once while generating: the generator batch, capped so that a batch of 1080p frames
# stays within this many bytes (128 frames of 1080p would be 800 MB).
FRAME_BUFFER_BYTES = 128 * 1024 * 1024
# On the CPU the generator runs this many faces per forward pass whatever the batch size: larger passes
# are no faster there, and their activations cost about 10 MB per face (a pass of 128 faces peaked
# above 2 GB). Eval-mode BatchNorm works per face, so the output does not depend on it.
CPU_GENERATOR_BATCH = 16


@dataclass
class LipSyncResult:
    output: Path
    n_frames: int
    fps: float
    duration: float
    width: int
    height: int
    no_face_ranges: list[tuple[int, int]]  # inclusive output-frame ranges written unchanged
    timings: dict[str, float] = field(default_factory=dict)
    message: str = ""  # for the user: what was left unchanged, if anything


def transform_frame(frame: np.ndarray, options: LipSyncOptions) -> np.ndarray:
    """inference.py's order: resize by the factor, rotate, crop."""
    if options.resize_factor > 1:
        h, w = frame.shape[:2]
        frame = cv2.resize(frame, (max(1, w // options.resize_factor), max(1, h // options.resize_factor)))
    if options.rotate:
        frame = cv2.rotate(frame, cv2.ROTATE_90_CLOCKWISE)
    top, bottom, left, right = options.crop
    if (top, bottom, left, right) != (0, -1, 0, -1):
        h, w = frame.shape[:2]
        bottom = h if bottom == -1 else bottom
        right = w if right == -1 else right
        frame = frame[top:bottom, left:right]
        if frame.size == 0:
            raise InputError(f"crop {options.crop} leaves nothing of the {w}x{h} frame: check top/bottom/left/right")
    return np.ascontiguousarray(frame)


def source_index(i: int, n_frames: int, loop: str) -> int:
    """Which input frame output frame ``i`` shows when the audio outlasts the video."""
    if n_frames == 1:
        return 0
    if loop == "pingpong":
        period = 2 * n_frames - 2
        j = i % period
        return j if j < n_frames else period - j
    return i % n_frames


class _Stopwatch:
    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.totals[stage] += time.perf_counter() - start

    def timed_iter(self, stage: str, items: Iterator):
        it = iter(items)
        while True:
            with self(stage):
                try:
                    item = next(it)
                except StopIteration:
                    return
            yield item


class _FrameStore:
    """Transformed frames on disk (raw), for ping-pong playback, which needs them in reverse."""

    def __init__(self, folder: Path, shape: tuple[int, ...]) -> None:
        self.path = folder / "frames.raw"
        self.shape = shape
        self.size = int(np.prod(shape))
        self._fh = open(self.path, "w+b")  # noqa: SIM115 - closed by close()

    def append(self, frame: np.ndarray) -> None:
        self._fh.write(frame.tobytes())

    def get(self, index: int) -> np.ndarray:
        self._fh.seek(index * self.size)
        return np.frombuffer(self._fh.read(self.size), np.uint8).reshape(self.shape)

    def close(self) -> None:
        self._fh.close()


class LipSync:
    """Holds the loaded models; ``run`` can be called many times (not concurrently)."""

    def __init__(self, weights_dir: str | os.PathLike | None = None, device: str | None = None) -> None:
        self.weights_dir = weights_dir
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if self.device == "cpu":
            log.warning("running on the CPU: expect about 20 frames/s for the generator on 2 cores")
        self._generators: dict[str, torch.nn.Module] = {}
        self._detector: FaceDetector | None = None
        self._lock = threading.Lock()

    def generator(self, checkpoint: str) -> torch.nn.Module:
        with self._lock:
            if checkpoint not in self._generators:
                self._generators[checkpoint] = load_wav2lip(checkpoint, device=self.device,
                                                            weights_dir=self.weights_dir)
            return self._generators[checkpoint]

    def detector(self) -> FaceDetector:
        with self._lock:
            if self._detector is None:
                self._detector = faces.load_detector("s3fd", "s3fd", device=self.device,
                                                     weights_dir=self.weights_dir)
            return self._detector

    # -- pass 1 --------------------------------------------------------------------------------------
    def _detect(self, frames: Iterator[np.ndarray], n_frames: int, options: LipSyncOptions,
                frame_hw: tuple[int, int]) -> dict[int, np.ndarray]:
        """Raw detections for the frames the preset looks at (every frame, or key frames + refinement)."""
        detector = self.detector()
        batch = options.face_det_batch_size
        dets: dict[int, np.ndarray] = {}
        if options.detection == "original":
            pending: list[np.ndarray] = []
            start = 0
            for i, frame in enumerate(tqdm(frames, total=n_frames, desc="face detection", unit="frame")):
                pending.append(frame)
                if len(pending) == batch or i == n_frames - 1:
                    for j, found in enumerate(detector.detect(pending)):
                        dets[start + j] = found
                    start += len(pending)
                    pending = []
            return dets
        # fast: the detector sees frames shrunk to detect_size on their longest side, key frames first
        scale = min(1.0, options.detect_size / max(frame_hw))
        keys = set(faces.key_frames(n_frames, options.detect_every))
        small: dict[int, np.ndarray] = {}  # shrunk frames not yet settled, bounded by batch * detect_every
        queued: list[int] = []
        last_key: int | None = None

        def flush() -> None:
            nonlocal last_key
            found = detector.detect([small[k] for k in queued])
            refine: list[int] = []
            for k, d in zip(queued, found, strict=True):
                dets[k] = d / np.array([scale] * 4 + [1], np.float32) if len(d) else d
                if last_key is not None and k - last_key > 1 and faces.needs_refinement(dets[last_key], dets[k]):
                    refine.extend(range(last_key + 1, k))
                last_key = k
            for a in range(0, len(refine), batch):
                part = refine[a:a + batch]
                for k, d in zip(part, detector.detect([small[j] for j in part]), strict=True):
                    dets[k] = d / np.array([scale] * 4 + [1], np.float32) if len(d) else d
            for j in [j for j in small if j < queued[-1]]:
                del small[j]
            queued.clear()

        for i, frame in enumerate(tqdm(frames, total=n_frames, desc="face detection", unit="frame")):
            h, w = frame.shape[:2]
            small[i] = cv2.resize(frame, (max(1, round(w * scale)), max(1, round(h * scale))),
                                  interpolation=cv2.INTER_LINEAR) if scale < 1 else frame
            if i in keys:
                queued.append(i)
                if len(queued) == batch:
                    flush()
        if queued:
            flush()
        return dets

    def _boxes(self, face: Path, info: MediaInfo, n_frames: int, options: LipSyncOptions,
               frame_hw: tuple[int, int], watch: _Stopwatch) -> tuple[np.ndarray, np.ndarray]:
        """``(boxes (n, 4) int x1 y1 x2 y2, found (n,) bool)`` for the first ``n_frames`` input frames."""
        if options.box is not None:
            top, bottom, left, right = options.box
            h, w = frame_hw
            box = np.array([min(left, w), min(top, h), min(right, w), min(bottom, h)], dtype=np.int64)
            if box[2] <= box[0] or box[3] <= box[1]:
                raise InputError(f"box {options.box} lies outside the {w}x{h} frame: give top bottom left right "
                                 "in pixels of the (resized/cropped) frame")
            return np.tile(box, (n_frames, 1)), np.ones(n_frames, bool)
        settings = {k: getattr(options, k) for k in ("detection", "detect_every", "detect_size", "resize_factor",
                                                     "rotate", "crop")}
        settings.update(n_frames=n_frames, detector=weights.sha256_of(
            weights.resolve("s3fd", weights_dir=self.weights_dir)))
        key = detcache.content_key(face, settings) if options.cache_detections else None
        dets = detcache.load(key) if key else None
        if dets is None:
            frames = (transform_frame(f, options) for _, f in zip(range(n_frames), iter_frames(face), strict=False))
            with watch("detect"):
                dets = self._detect(frames, n_frames, options, frame_hw)
            if key:
                detcache.save(key, dets)
        else:
            log.info("face detections for %s taken from the cache", face.name)
        boxes = faces.select_face(dets, n_frames, face_index=options.face_index, face_point=options.face_point,
                                  top_score=options.detection == "original" and options.face_index == 0)
        if options.detection == "fast":
            boxes = faces.interpolate_undetected(boxes, dets.keys())
        return faces.finalize_boxes(boxes, pads=options.pads, frame_hw=frame_hw, max_gap=options.max_gap,
                                    smooth=not options.nosmooth)

    # -- the whole run -------------------------------------------------------------------------------
    def run(self, face: str | os.PathLike, audio: str | os.PathLike, output: str | os.PathLike,
            options: LipSyncOptions | None = None) -> LipSyncResult:
        options = options or LipSyncOptions()
        face, audio, output = Path(face), Path(audio), Path(output)
        watch = _Stopwatch()
        info = probe(face)
        if not info.has_video:
            raise InputError(f"{face.name} has no picture: give a video or an image of a face as FACE")
        static = options.static or info.is_image
        fps = float(options.fps) if info.is_image or info.fps is None else float(info.fps)
        fps_exact = Fraction(options.fps).limit_denominator(1001) if info.is_image or info.fps is None else info.fps

        with watch("audio"):
            wav, _ = load_audio(audio, sample_rate=16000, mono=True)
            if not np.any(wav):
                log.warning("the audio in %s is silent: the mouth will barely move", audio.name)
            chunks = mel_chunks(melspectrogram(wav), fps)  # (N, 80, 16)
            # inference.py stops one chunk short of the audio's end (the muxed audio then outlasts the
            # picture by up to 16 mel frames, 0.2 s); repeat its final window so the video covers the audio
            cover = math.ceil(len(wav) / 16000 * fps - 1e-6)
            if cover > len(chunks):
                chunks = np.concatenate([chunks, np.repeat(chunks[-1:], cover - len(chunks), axis=0)])
            track, track_rate = load_audio(audio, sample_rate=None, mono=False)
        n_out = len(chunks)

        first = transform_frame(next(iter_frames(face)), options)
        frame_hw = first.shape[:2]
        n_in = 1 if static else count_frames(face)
        n_used = min(n_in, n_out)
        boxes, found = self._boxes(face, info, 1 if static else n_used, options, frame_hw, watch)
        if not found.any():
            raise NoFaceError(
                f"No face found in any of the {1 if static else n_used} frames of {face.name}: check that a face "
                "is visible, try detection 'original' (full resolution), or give a fixed box (top bottom left right)"
            )
        missing_in = faces.frame_ranges(~found)
        if options.strict and missing_in:
            raise NoFaceError(f"No face found in {faces.describe_ranges(missing_in, fps)} of {face.name} "
                              "(strict mode): trim those frames, give a fixed box, or turn strict mode off")

        model = self.generator(options.checkpoint)
        no_face = np.zeros(n_out, bool)
        with tempfile.TemporaryDirectory(prefix="lipsync-") as tmp:
            store = self._frame_source(face, options, static, first, n_used, n_out, Path(tmp), watch)
            h, w = frame_hw
            per_batch = max(1, min(options.wav2lip_batch_size, FRAME_BUFFER_BYTES // (h * w * 3)))
            with VideoWriter(output, w, h, fps_exact, audio=track, audio_rate=track_rate) as writer, \
                    tqdm(total=n_out, desc="lip sync", unit="frame") as bar:
                batch_frames: list[np.ndarray] = []
                batch_idx: list[int] = []
                for i, frame in enumerate(watch.timed_iter("decode", store)):
                    batch_frames.append(frame)
                    batch_idx.append(i)
                    if len(batch_frames) == per_batch or i == n_out - 1:
                        self._generate_batch(model, batch_frames, batch_idx, chunks, boxes, found, n_used,
                                             static, options, no_face, watch)
                        with watch("encode"):
                            for f in batch_frames:
                                writer.write(f)
                        bar.update(len(batch_frames))
                        batch_frames, batch_idx = [], []
                with watch("encode"):
                    writer.close()
        ranges = faces.frame_ranges(no_face)
        message = ""
        if ranges:
            message = (f"No face found in {faces.describe_ranges(ranges, fps)}: those frames were left unchanged")
            log.warning(message)
        return LipSyncResult(output=output, n_frames=n_out, fps=fps, duration=n_out / fps, width=w, height=h,
                             no_face_ranges=ranges, timings=dict(watch.totals), message=message)

    def _frame_source(self, face: Path, options: LipSyncOptions, static: bool, first: np.ndarray, n_used: int,
                      n_out: int, tmp: Path, watch: _Stopwatch) -> Iterator[np.ndarray]:
        """Transformed input frames in output order (looping forward or ping-pong past the video's end)."""
        if static:
            for _ in range(n_out):
                yield first.copy()
            return
        needs_store = options.loop == "pingpong" and n_out > n_used
        store = _FrameStore(tmp, first.shape) if needs_store else None
        try:
            produced = 0
            while produced < n_out:
                if store is not None and produced >= n_used:
                    yield store.get(source_index(produced, n_used, "pingpong"))
                    produced += 1
                    continue
                for _, frame in zip(range(min(n_used, n_out - produced)), iter_frames(face), strict=False):
                    frame = transform_frame(frame, options)
                    if store is not None:
                        store.append(frame)
                    yield frame
                    produced += 1
        finally:
            if store is not None:
                store.close()

    def _generate_batch(self, model, frames: list[np.ndarray], out_idx: list[int], chunks: np.ndarray,
                        boxes: np.ndarray, found: np.ndarray, n_used: int, static: bool,
                        options: LipSyncOptions, no_face: np.ndarray, watch: _Stopwatch) -> None:
        """Generate the mouths of one batch of frames and paste them in place."""
        src = [0 if static else source_index(i, n_used, options.loop) for i in out_idx]
        with_face = [k for k, s in enumerate(src) if found[s]]
        for k, s in enumerate(src):
            if not found[s]:
                no_face[out_idx[k]] = True
        if not with_face:
            return
        crops = np.stack([
            cv2.resize(frames[k][boxes[src[k]][1]:boxes[src[k]][3], boxes[src[k]][0]:boxes[src[k]][2]],
                       (FACE_SIZE, FACE_SIZE))
            for k in with_face
        ])
        mels = chunks[[out_idx[k] for k in with_face]]
        with watch("generate"):
            mouths = generate(model, mels, crops,
                              batch_size=CPU_GENERATOR_BATCH if self.device == "cpu" else None)
        with watch("paste"):
            for k, mouth in zip(with_face, mouths, strict=True):
                frames[k] = paste(frames[k], mouth, tuple(int(v) for v in boxes[src[k]]), blend=options.blend)

