"""Lip sync end to end, in two stages that read top-down.

``plan``: the speech's mel chunks (one per output frame), the face video's frames, and one face box
per frame (detected, cached by content, or fixed). ``render``: for each batch of output frames,
crop the faces, run the generator, paste the mouths back, and encode with the audio.

The face video is streamed twice, so memory stays flat as the video grows: the detection pass
keeps only boxes, the render pass holds one batch of frames at a time.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm.auto import tqdm

from face_detection.detector import FaceDetector
from lipsync import detcache, detect, faces, weights
from lipsync.audio import SAMPLE_RATE, mel_chunks, melspectrogram
from lipsync.compose import paste
from lipsync.errors import Cancelled, InputError, NoFaceError
from lipsync.hashing import content_key, file_sha256
from lipsync.media import VideoSource, VideoWriter, load_audio
from lipsync.model import FACE_SIZE, generate, load_wav2lip
from lipsync.options import FULL_FRAME, LipSyncOptions

log = logging.getLogger(__name__)

# Frames held at once while generating: the generator batch, capped so that a batch of 1080p frames
# stays within this many bytes (128 frames of 1080p would be 800 MB).
FRAME_BUFFER_BYTES = 128 * 1024 * 1024
# On the CPU the generator runs this many faces per forward pass whatever the batch size: larger passes
# are no faster there, and their activations cost about 10 MB per face (a pass of 128 faces peaked
# above 2 GB). Eval-mode BatchNorm works per face, so the output does not depend on it.
CPU_GENERATOR_BATCH = 16
# Options that change which pixels the detector sees, hence its answers (the detection cache's key).
DETECTION_SETTINGS = ("detection", "detect_every", "detect_size", "resize_factor", "rotate", "crop")


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
    if options.crop != FULL_FRAME:
        top, bottom, left, right = options.crop
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


class Stopwatch:
    """Seconds spent per stage, summed over a run."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.totals[stage] += time.perf_counter() - start

    def timed_iter(self, stage: str, items: Iterable):
        """``items``, with the time spent producing each one counted under ``stage``."""
        it = iter(items)
        while True:
            with self(stage):
                try:
                    item = next(it)
                except StopIteration:
                    return
            yield item


class FaceFrames:
    """The face input as the run sees it: probed once, frames resized/rotated/cropped by the options."""

    def __init__(self, path: Path, options: LipSyncOptions) -> None:
        self.video = VideoSource(path)
        self.options = options
        info = self.video.info
        self.static = options.static or info.is_image
        if info.is_image or info.fps is None:
            self.fps_exact = Fraction(options.fps).limit_denominator(1001)
            self.fps = float(options.fps)
        else:
            self.fps_exact, self.fps = info.fps, float(info.fps)
        self.first = transform_frame(self.video.first_frame, options)
        self.height, self.width = self.first.shape[:2]

    @property
    def name(self) -> str:
        return self.video.path.name

    def usable(self, n_out: int) -> int:
        """Input frames the output shows: 1 for a still, else as many as both the video and the audio cover."""
        return 1 if self.static else min(self.video.frame_count, n_out)

    def frames(self, limit: int) -> Iterator[np.ndarray]:
        """The first ``limit`` frames, transformed (one pass over the file)."""
        if self.static:
            yield self.first.copy()
            return
        for _, frame in zip(range(limit), self.video.frames(), strict=False):
            yield transform_frame(frame, self.options)


@dataclass
class Speech:
    chunks: np.ndarray  # (n_out, 80, 16) mel windows, one per output frame
    track: np.ndarray  # (channels, n) the audio as it is muxed into the output
    rate: int


def load_speech(path: Path, fps: float) -> Speech:
    """The generator's mel chunks for ``fps`` output frames, and the audio track to mux."""
    wav, _ = load_audio(path, sample_rate=SAMPLE_RATE, mono=True)
    if not np.any(wav):
        log.warning("the audio in %s is silent: the mouth will barely move", path.name)
    chunks = mel_chunks(melspectrogram(wav), fps)  # (N, 80, 16)
    # inference.py stops one chunk short of the audio's end (the muxed audio then outlasts the
    # picture by up to 16 mel frames, 0.2 s); repeat its final window so the video covers the audio
    cover = math.ceil(len(wav) / SAMPLE_RATE * fps - 1e-6)
    if cover > len(chunks):
        chunks = np.concatenate([chunks, np.repeat(chunks[-1:], cover - len(chunks), axis=0)])
    track, rate = load_audio(path, sample_rate=None, mono=False)
    return Speech(chunks, track, rate)


@dataclass
class Plan:
    """Everything ``render`` needs, decided before any frame is generated."""

    face: FaceFrames
    options: LipSyncOptions
    speech: Speech
    n_used: int  # input frames the output shows (1 for a still)
    boxes: np.ndarray  # (n_used, 4) int x1 y1 x2 y2 per input frame
    found: np.ndarray  # (n_used,) bool: a face box exists
    watch: Stopwatch

    @property
    def n_out(self) -> int:
        return len(self.speech.chunks)

    def source(self, i: int) -> int:
        """The input frame output frame ``i`` shows."""
        return 0 if self.face.static else source_index(i, self.n_used, self.options.loop)


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


def frames_in_output_order(plan: Plan, tmp: Path) -> Iterator[np.ndarray]:
    """Transformed input frames in output order: looping forward (decoding again) or ping-pong (from disk)."""
    face, n_used, n_out = plan.face, plan.n_used, plan.n_out
    if face.static:
        for _ in range(n_out):
            yield face.first.copy()
        return
    store = _FrameStore(tmp, face.first.shape) if plan.options.loop == "pingpong" and n_out > n_used else None
    try:
        produced = 0
        while produced < n_out:
            if store is not None and produced >= n_used:
                yield store.get(plan.source(produced))
                produced += 1
                continue
            for frame in face.frames(min(n_used, n_out - produced)):
                if store is not None:
                    store.append(frame)
                yield frame
                produced += 1
    finally:
        if store is not None:
            store.close()


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
                self._detector = detect.load_detector("s3fd", "s3fd", device=self.device,
                                                      weights_dir=self.weights_dir)
            return self._detector

    def run(self, face: str | os.PathLike, audio: str | os.PathLike, output: str | os.PathLike,
            options: LipSyncOptions | None = None, *,
            should_stop: Callable[[], bool] | None = None) -> LipSyncResult:
        """Lip-sync ``face`` (video or image) to ``audio`` and write ``output`` (.mp4/.mov/.mkv).

        ``should_stop`` is asked before each batch of output frames; when it returns True the run
        raises Cancelled and leaves no output.
        """
        plan = self.plan(Path(face), Path(audio), options or LipSyncOptions())
        return self.render(plan, Path(output), should_stop=should_stop)

    # -- stage 1: plan --------------------------------------------------------------------------------
    def plan(self, face: Path, audio: Path, options: LipSyncOptions) -> Plan:
        """Audio, chunks, frames and boxes; raises the user's errors before any generation."""
        watch = Stopwatch()
        frames = FaceFrames(face, options)
        with watch("audio"):
            speech = load_speech(audio, frames.fps)
        n_used = frames.usable(len(speech.chunks))
        boxes, found = self.face_boxes(frames, n_used, watch)
        if not found.any():
            raise NoFaceError(
                f"No face found in any of the {n_used} frames of {frames.name}: check that a face is visible, "
                "try detection 'original' (full resolution), or give a fixed box (top bottom left right)")
        missing = faces.true_runs(~found)
        if options.strict and missing:
            raise NoFaceError(f"No face found in {faces.describe_ranges(missing, frames.fps)} of {frames.name} "
                              "(strict mode): trim those frames, give a fixed box, or turn strict mode off")
        return Plan(frames, options, speech, n_used, boxes, found, watch)

    def face_boxes(self, frames: FaceFrames, n_frames: int, watch: Stopwatch) -> tuple[np.ndarray, np.ndarray]:
        """``(boxes (n, 4) int x1 y1 x2 y2, found (n,) bool)`` for the first ``n_frames`` input frames."""
        options = frames.options
        frame_hw = (frames.height, frames.width)
        if options.box is not None:
            return faces.fixed_boxes(options.box, frame_hw, n_frames), np.ones(n_frames, bool)
        detect.check_detectable(frame_hw, frames.name, options)
        key = self._cache_key(frames, n_frames) if options.cache_detections else None
        dets = detcache.load(key) if key else None
        if dets is None:
            with watch("detect"):
                dets = detect.detect_faces(self.detector(), frames.frames(n_frames), n_frames, options)
            if key:
                detcache.save(key, dets)
        else:
            log.info("face detections for %s taken from the cache", frames.name)
        return faces.boxes_from_detections(dets, n_frames, options, frame_hw)

    def _cache_key(self, frames: FaceFrames, n_frames: int) -> str:
        settings = {name: getattr(frames.options, name) for name in DETECTION_SETTINGS}
        settings.update(n_frames=n_frames, detector=file_sha256(weights.resolve("s3fd", weights_dir=self.weights_dir)))
        return content_key(frames.video.path, settings)

    # -- stage 2: render ------------------------------------------------------------------------------
    def render(self, plan: Plan, output: Path, *, should_stop: Callable[[], bool] | None = None) -> LipSyncResult:
        """Generate, paste and encode every output frame; the partial file is removed on failure."""
        model = self.generator(plan.options.checkpoint)
        face, watch = plan.face, plan.watch
        no_face = np.zeros(plan.n_out, bool)
        per_batch = max(1, min(plan.options.wav2lip_batch_size, FRAME_BUFFER_BYTES // (face.height * face.width * 3)))
        with tempfile.TemporaryDirectory(prefix="lipsync-") as tmp, \
                VideoWriter(output, face.width, face.height, face.fps_exact, audio=plan.speech.track,
                            audio_rate=plan.speech.rate) as writer, \
                tqdm(total=plan.n_out, desc="lip sync", unit="frame") as bar:
            frames = watch.timed_iter("decode", frames_in_output_order(plan, Path(tmp)))
            for start, batch in _batches(frames, per_batch):
                if should_stop is not None and should_stop():
                    raise Cancelled(f"stopped at output frame {start} of {plan.n_out}")
                indices = range(start, start + len(batch))
                no_face[indices] = ~plan.found[[plan.source(i) for i in indices]]
                self._lip_sync_batch(model, plan, batch, indices)
                with watch("encode"):
                    for frame in batch:
                        writer.write(frame)
                bar.update(len(batch))
            with watch("encode"):
                writer.close()
        ranges = faces.true_runs(no_face)
        message = f"No face found in {faces.describe_ranges(ranges, face.fps)}: those frames were left unchanged" \
            if ranges else ""
        if message:
            log.warning(message)
        return LipSyncResult(output=output, n_frames=plan.n_out, fps=face.fps, duration=plan.n_out / face.fps,
                             width=face.width, height=face.height, no_face_ranges=ranges,
                             timings=dict(watch.totals), message=message)

    def _lip_sync_batch(self, model: torch.nn.Module, plan: Plan, frames: list[np.ndarray],
                        indices: range) -> None:
        """Generate the mouths of one batch of output frames and paste them in place."""
        boxes = {k: plan.boxes[plan.source(i)] for k, i in enumerate(indices) if plan.found[plan.source(i)]}
        if not boxes:
            return
        crops = np.stack([cv2.resize(frames[k][y1:y2, x1:x2], (FACE_SIZE, FACE_SIZE))
                          for k, (x1, y1, x2, y2) in boxes.items()])
        mels = plan.speech.chunks[[indices[k] for k in boxes]]
        with plan.watch("generate"):
            mouths = generate(model, mels, crops, batch_size=CPU_GENERATOR_BATCH if self.device == "cpu" else None)
        with plan.watch("paste"):
            for (k, box), mouth in zip(boxes.items(), mouths, strict=True):
                frames[k] = paste(frames[k], mouth, tuple(int(v) for v in box), blend=plan.options.blend)


def _batches(frames: Iterable[np.ndarray], size: int) -> Iterator[tuple[int, list[np.ndarray]]]:
    """``(index of the first, frames)`` for consecutive groups of ``size`` frames (the last may be shorter)."""
    batch: list[np.ndarray] = []
    start = 0
    for frame in frames:
        batch.append(frame)
        if len(batch) == size:
            yield start, batch
            start += size
            batch = []
    if batch:
        yield start, batch
