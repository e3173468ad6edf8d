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

from common import precision, weights
from common.errors import Cancelled, InputError, NoFaceError
from common.hashing import content_key, file_sha256
from common.overlap import Prefetch, WriteBehind
from face_detection.detector import FaceDetector
from face_detection.keyframes import SCALE_RULE
from face_detection.loading import load_detector
from face_detection.memory import release_free_memory
from face_detection.winograd import DEFAULT_BLOCK
from lipsync import detcache, detect, faces, vad
from lipsync.audio import SAMPLE_RATE, mel_chunks, melspectrogram
from lipsync.compose import crossfade, paste
from lipsync.folded import load_folded_wav2lip
from lipsync.model import FACE_SIZE, generate
from lipsync.options import FULL_FRAME, LipSyncOptions
from media.io import VideoSource, VideoWriter, load_audio
from media.segments import Segments

log = logging.getLogger(__name__)

# Frames held at once while generating: the generator batch, capped so that a batch of 1080p frames
# stays within this many bytes (128 frames of 1080p would be 800 MB).
FRAME_BUFFER_BYTES = 128 * 1024 * 1024
# On the CPU the generator runs this many faces per forward pass whatever the batch size: larger passes
# are no faster there, and their activations cost about 10 MB per face (a pass of 128 faces peaked
# above 2 GB). Eval-mode BatchNorm works per face, so the output does not depend on it.
CPU_GENERATOR_BATCH = 16
# Batches decoded ahead of and encoded behind the generator (see common.overlap). On 2 CPU cores, one
# batch each way made a 10 s 720p run 7 % faster (34.6 -> 32.3 s, two runs each) for 60-100 MB more
# at the peak; two batches were no faster there and cost 190 MB.
OVERLAP_BATCHES = 2
CPU_OVERLAP_BATCHES = 1
# Past the first START_FRAMES frames the detection pass advances in steps of this many frames beyond what
# the render pass needs (each step recomputes the settled boxes from the start, so not frame by frame:
# 28 ms for 3000 frames); before, exactly as far as the boxes need, so that the first frames (and a
# stream's first piece) wait for no more detection than that.
RENDER_AHEAD = 64
START_FRAMES = 128
# Options that change which pixels the detector sees, hence its answers (the detection cache's key).
DETECTION_SETTINGS = ("detection", "detect_every", "detect_size", "resize_factor", "rotate", "crop")
# The face box drawn on a preview frame: pure green (BGR), which skin and hair hardly ever are.
PREVIEW_BOX_BGR = (0, 255, 0)
PREVIEW_BOX_THICKNESS = 2  # px


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
    wav: np.ndarray | None = None  # (n,) 16 kHz mono: the speech the chunks come from (the voice track if any)


def load_speech(path: Path, fps: float, voice: Path | None = None) -> Speech:
    """The generator's mel chunks for ``fps`` output frames, and the audio track to mux.

    With ``voice``, the chunks come from it and the track from ``path`` (a song's mix, say, with the
    vocals alone as the voice); the two must last the same within one frame.
    """
    speech = path if voice is None else voice
    wav, _ = load_audio(speech, sample_rate=SAMPLE_RATE, mono=True)
    track, rate = load_audio(path, sample_rate=None, mono=False)
    if voice is not None:
        check_same_length(len(wav) / SAMPLE_RATE, track.shape[-1] / rate, fps)
    if not np.any(wav):
        log.warning("the audio in %s is silent: the mouth will barely move", speech.name)
    chunks = mel_chunks(melspectrogram(wav), fps)  # (N, 80, 16)
    # inference.py stops one chunk short of the audio's end (the muxed audio then outlasts the
    # picture by up to 16 mel frames, 0.2 s); repeat its final window so the video covers the audio
    cover = math.ceil(len(wav) / SAMPLE_RATE * fps - 1e-6)
    if cover > len(chunks):
        chunks = np.concatenate([chunks, np.repeat(chunks[-1:], cover - len(chunks), axis=0)])
    return Speech(chunks, track, rate, wav)


def check_same_length(voice_seconds: float, audio_seconds: float, fps: float) -> None:
    """InputError unless the voice track and the audio last the same within one frame (1 / fps s)."""
    tolerance = 1 / fps
    difference = abs(voice_seconds - audio_seconds)
    if difference <= tolerance + 1e-9:
        return
    longer = "voice track" if voice_seconds > audio_seconds else "audio"
    raise InputError(f"the voice track is {voice_seconds:.2f} s, the audio {audio_seconds:.2f} s (the {longer} is "
                     f"{difference:.2f} s longer): they must be the same length within {tolerance:.2f} s; "
                     "trim one of them")


class FaceBoxes:
    """The face box of every input frame the output shows, final up to ``settled``.

    Detection runs as far ahead of the render pass as the boxes need (``faces.prefix_boxes``), so the
    first frames are written while the rest of the video is still being detected; a fixed box, or
    detections from the cache, settle everything at once. ``boxes`` (n, 4) int x1 y1 x2 y2 and
    ``found`` (n,) bool are filled up to ``settled``.
    """

    def __init__(self, n_frames: int, options: LipSyncOptions, frame_hw: tuple[int, int], watch: Stopwatch, *,
                 fixed: np.ndarray | None = None, dets: detect.Detections | None = None,
                 detection: detect.DetectionPass | None = None, on_detected=None) -> None:
        self.n_frames, self.options, self.frame_hw, self.watch = n_frames, options, frame_hw, watch
        self.boxes = np.zeros((n_frames, 4), np.int64)
        self.found = np.zeros(n_frames, bool)
        self.settled = 0
        self._detection, self._on_detected = detection, on_detected
        if fixed is not None:
            self.boxes[:], self.found[:], self.settled = fixed, True, n_frames
        elif dets is not None:
            self._update(dets, n_frames)

    def settle(self, n: int) -> None:
        """Make the first ``n`` boxes final (reading ahead a few batches at a time, not frame by frame)."""
        n = min(n, self.n_frames)
        if n <= self.settled or self._detection is None:
            return
        reach = n + faces.lookahead(self.options)  # enough unless a gap without a face is still open
        with self.watch("detect"):
            while self.settled < n:
                step = 1 if reach < START_FRAMES else RENDER_AHEAD
                self._detection.advance(min(self.n_frames, -(-reach // step) * step))  # whole steps ahead
                detected = self._detection.settled
                self._update(self._detection.dets, detected)  # all of them once everything is detected
                reach = detected + 1
        if self.settled >= self.n_frames and self._on_detected is not None:
            self._on_detected(self._detection.dets)
            self._on_detected = None

    def settle_first_face(self) -> bool:
        """Settle until a face is found (or all frames are settled); whether one was."""
        while not self.found[:self.settled].any() and self.settled < self.n_frames:
            self.settle(self.settled + 1)
        return bool(self.found[:self.settled].any())

    def _update(self, dets: detect.Detections, detected: int) -> None:
        boxes, found, final = faces.prefix_boxes(dets, detected, self.n_frames, self.options, self.frame_hw)
        if final > self.settled:
            self.boxes[self.settled:final] = boxes[self.settled:final]
            self.found[self.settled:final] = found[self.settled:final]
            self.settled = final


@dataclass
class Plan:
    """Everything ``render`` needs: the frames, the speech and the face boxes (settled as it goes)."""

    face: FaceFrames
    options: LipSyncOptions
    speech: Speech
    n_used: int  # input frames the output shows (1 for a still)
    boxes: FaceBoxes
    watch: Stopwatch
    # (n_out,) float32 share of the generated frame in each output frame (silence="keep": 0 = the input
    # frame as it is, no generation); None = 1 everywhere
    weights: np.ndarray | None = None

    @property
    def found(self) -> np.ndarray:
        return self.boxes.found

    @property
    def n_out(self) -> int:
        return len(self.speech.chunks)

    def weight(self, i: int) -> float:
        """How much of output frame ``i`` is the generated frame (1 unless silence="keep")."""
        return 1.0 if self.weights is None else float(self.weights[i])

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
            log.warning("running on the CPU: expect about 13-20 frames/s for the generator on 2 cores in float32, "
                        "33-46 in bf16 (precision auto picks it where the CPU has native bf16)")
        # decode ahead and encode behind in threads (FFmpeg releases the GIL), beside the networks
        self.overlap = True
        self._generators: dict[tuple[str, torch.dtype, bool], torch.nn.Module] = {}
        self._detectors: dict[torch.dtype, FaceDetector] = {}
        self._lock = threading.Lock()

    def dtype(self, options: LipSyncOptions) -> torch.dtype:
        """What the networks compute in for these options on this engine's device (common.precision)."""
        return precision.resolve(options.precision, self.device)

    def winograd(self, options: LipSyncOptions) -> bool:
        """Whether the generator runs its deep 3x3 convolutions as Winograd ones (lipsync.folded.WINOGRAD_BLOCKS):
        when asked for speed (precision auto) and that means float32 on a CPU. Explicit fp32 stays exact.
        Not under detection 'original': S3FD on full frames takes ~98 % of that run, and the transformed
        kernels and their work space would add 50-100 MB to its peak (1434 against 1382 MB, 1 s of 720p)."""
        return (options.precision == "auto" and options.detection != "original"
                and torch.device(self.device).type == "cpu" and self.dtype(options) == torch.float32)

    def generator(self, checkpoint: str, dtype: torch.dtype = torch.float32, *,
                  winograd: bool = False) -> torch.nn.Module:
        with self._lock:
            key = (checkpoint, dtype, winograd)
            if key not in self._generators:
                self._generators[key] = load_folded_wav2lip(
                    checkpoint, device=self.device, dtype=dtype, weights_dir=self.weights_dir, winograd=winograd)
                release_free_memory()  # the checkpoint's and the folding's temporaries
            return self._generators[key]

    def generator_for(self, options: LipSyncOptions) -> torch.nn.Module:
        """The generator these options run (their checkpoint, precision and Winograd choice), loaded once."""
        return self.generator(options.checkpoint, self.dtype(options), winograd=self.winograd(options))

    def detector(self, dtype: torch.dtype = torch.float32) -> FaceDetector:
        """The S3FD detector for ``dtype``, loaded once, for both detection presets.

        In float32 on a CPU its deep layers are Winograd F(4x4, 3x3) convolutions (see
        face_detection.detector.runs_winograd). ``--detection original``: on full 720p frames, in strips,
        S3FD took 3.8 s a frame instead of 5.7 s (2-core AVX2 CPU). The fast preset: on its key frames
        shrunk to the faces' size (228x128 for the 720p benchmark clip), 117-139 ms a frame instead of
        175-201 ms, and the 10 s clip's detection 8.6-10.2 s instead of 12.0-16.9 s (2-core AVX-512 Xeon,
        alternated). The transformed kernels (4x the weights) cost about 190 MB: 1.29 GB peak RSS for the
        10 s and the 60 s clip alike.
        """
        with self._lock:
            if dtype not in self._detectors:  # FaceDetector applies the Winograd request only where it runs
                self._detectors[dtype] = load_detector(
                    "s3fd", "s3fd", device=self.device, dtype=dtype, weights_dir=self.weights_dir,
                    winograd=DEFAULT_BLOCK)
            return self._detectors[dtype]

    def run(self, face: str | os.PathLike, audio: str | os.PathLike, output: str | os.PathLike,
            options: LipSyncOptions | None = None, *, voice: str | os.PathLike | None = None,
            segments: Segments | None = None, should_stop: Callable[[], bool] | None = None) -> LipSyncResult:
        """Lip-sync ``face`` (video or image) to ``audio`` and write ``output`` (.mp4/.mov/.mkv).

        ``voice``, when given, drives the lips instead of ``audio``, which is still what the output plays.
        ``segments`` (H.264 outputs) also hands over playable pieces of the output as they are finished.
        ``should_stop`` is asked before each batch of output frames; when it returns True the run
        raises Cancelled and leaves no output.
        """
        plan = self.plan(Path(face), Path(audio), options or LipSyncOptions(),
                         voice=None if voice is None else Path(voice))
        return self.render(plan, Path(output), segments=segments, should_stop=should_stop)

    # -- stage 1: plan --------------------------------------------------------------------------------
    def plan(self, face: Path, audio: Path, options: LipSyncOptions, voice: Path | None = None) -> Plan:
        """Audio, chunks, frames and boxes. Raises the user's errors before any frame is generated: a
        video without any face is detected to its end first, so is every frame in strict mode."""
        watch = Stopwatch()
        frames = FaceFrames(face, options)
        with watch("audio"):
            speech = load_speech(audio, frames.fps, voice)
        weights = None
        if options.silence == "keep":
            with watch("voice activity"):
                weights = vad.silence_weights(speech.wav, len(speech.chunks), frames.fps)
            if not weights.any():
                log.warning("no speech found in %s: the output shows the input frames unchanged",
                            (voice or audio).name)
        n_used = frames.usable(len(speech.chunks))
        boxes = self.face_boxes(frames, n_used, watch)
        if not boxes.settle_first_face():
            raise NoFaceError(
                f"No face found in any of the {n_used} frames of {frames.name}: check that a face is visible, "
                "try detection 'original' (full resolution), or give a fixed box (top bottom left right)")
        if options.strict:
            boxes.settle(n_used)
            missing = faces.true_runs(~boxes.found)
            if missing:
                raise NoFaceError(f"No face found in {faces.describe_ranges(missing, frames.fps)} of {frames.name} "
                                  "(strict mode): trim those frames, give a fixed box, or turn strict mode off")
        return Plan(frames, options, speech, n_used, boxes, watch, weights)

    def face_boxes(self, frames: FaceFrames, n_frames: int, watch: Stopwatch) -> FaceBoxes:
        """The boxes of the first ``n_frames`` input frames: fixed, from the cache, or detected as needed."""
        options = frames.options
        frame_hw = (frames.height, frames.width)
        if options.box is not None:
            fixed = faces.fixed_boxes(options.box, frame_hw, n_frames)
            return FaceBoxes(n_frames, options, frame_hw, watch, fixed=fixed)
        detect.check_detectable(frame_hw, frames.name, options)
        key = self._cache_key(frames, n_frames) if options.cache_detections else None
        dets = detcache.load(key) if key else None
        if dets is not None:
            log.info("face detections for %s taken from the cache", frames.name)
            return FaceBoxes(n_frames, options, frame_hw, watch, dets=dets)
        detector = self.detector(self.dtype(options))
        detection = detect.DetectionPass(detector, frames.frames(n_frames), n_frames, options)
        save = (lambda found: detcache.save(key, found)) if key else None
        return FaceBoxes(n_frames, options, frame_hw, watch, detection=detection, on_detected=save)

    def _cache_key(self, frames: FaceFrames, n_frames: int) -> str:
        settings = {name: getattr(frames.options, name) for name in DETECTION_SETTINGS}
        settings.update(n_frames=n_frames, dtype=str(self.dtype(frames.options)), scale_rule=SCALE_RULE,
                        detector=file_sha256(weights.resolve("s3fd", weights_dir=self.weights_dir)))
        return content_key(frames.video.path, settings)

    # -- stage 2: render ------------------------------------------------------------------------------
    def render(self, plan: Plan, output: Path, *, segments: Segments | None = None,
               should_stop: Callable[[], bool] | None = None) -> LipSyncResult:
        """Generate, paste and encode every output frame; the partial file is removed on failure."""
        model = self.generator_for(plan.options)
        face, watch = plan.face, plan.watch
        no_face = np.zeros(plan.n_out, bool)
        per_batch = max(1, min(plan.options.wav2lip_batch_size, FRAME_BUFFER_BYTES // (face.height * face.width * 3)))
        if self.device == "cpu":  # the generator's pass anyway; smaller batches reach the output sooner
            per_batch = min(per_batch, CPU_GENERATOR_BATCH)
        with tempfile.TemporaryDirectory(prefix="lipsync-") as tmp, \
                VideoWriter(output, face.width, face.height, face.fps_exact, audio=plan.speech.track,
                            audio_rate=plan.speech.rate, segments=segments) as writer, \
                tqdm(total=plan.n_out, desc="lip sync", unit="frame") as bar:
            frames: Iterable[np.ndarray] = frames_in_output_order(plan, Path(tmp))
            depth = CPU_OVERLAP_BATCHES if self.device == "cpu" else OVERLAP_BATCHES
            if self.overlap:
                frames = Prefetch(frames, depth=depth * per_batch)

            def write(batch: list[np.ndarray]) -> None:
                for frame in batch:
                    writer.write(frame)

            behind = WriteBehind(write, depth=depth) if self.overlap else None
            try:
                for start, batch in _batches(watch.timed_iter("decode", frames), per_batch):
                    if should_stop is not None and should_stop():
                        raise Cancelled(f"stopped at output frame {start} of {plan.n_out}")
                    indices = range(start, start + len(batch))
                    plan.boxes.settle(max(plan.source(i) for i in indices) + 1)
                    no_face[indices] = ~plan.found[[plan.source(i) for i in indices]]
                    self._lip_sync_batch(model, plan, batch, indices)
                    if behind is not None:
                        behind.put(batch)
                    else:
                        with watch("encode"):
                            write(batch)
                    bar.update(len(batch))
                with watch("encode"):  # on a GPU: only the wait for the last batches
                    if behind is not None:
                        behind.finish()
                    writer.close()
            finally:
                if behind is not None:
                    behind.abort()
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
        boxes = {k: plan.boxes.boxes[plan.source(i)] for k, i in enumerate(indices)
                 if plan.found[plan.source(i)] and plan.weight(i) > 0}  # weight 0: the input frame as it is
        if not boxes:
            return
        crops = np.stack([cv2.resize(frames[k][y1:y2, x1:x2], (FACE_SIZE, FACE_SIZE))
                          for k, (x1, y1, x2, y2) in boxes.items()])
        mels = plan.speech.chunks[[indices[k] for k in boxes]]
        with plan.watch("generate"):
            mouths = generate(model, mels, crops, batch_size=CPU_GENERATOR_BATCH if self.device == "cpu" else None)
        with plan.watch("paste"):
            for (k, box), mouth in zip(boxes.items(), mouths, strict=True):
                pasted = paste(frames[k], mouth, tuple(int(v) for v in box), blend=plan.options.blend)
                frames[k] = crossfade(frames[k], pasted, plan.weight(indices[k]))


    # -- one frame: preview ---------------------------------------------------------------------------
    def preview(self, face: str | os.PathLike, audio: str | os.PathLike, at_seconds: float,
                options: LipSyncOptions | None = None, *, voice: str | os.PathLike | None = None) -> np.ndarray:
        """The output frame at ``at_seconds`` with its face box drawn: (H, W, 3) BGR uint8, without a run.

        Only that frame is worked on: the input frame the output shows then is decoded by seeking (after
        looping, as ``loop`` says); the face is detected on it alone as the preset sees it (shrunk to
        ``detect_size`` for fast, full size for original), or the fixed box is taken; the box is padded,
        and the mouth generated from that frame's mel chunk is pasted (and faded as silence="keep" would)
        by the code a run uses. The box drawn (PREVIEW_BOX_BGR) is the padded one the mouth goes into.
        A single frame cannot be smoothed over time as a run smooths its boxes (a 5-frame average unless
        nosmooth), nor bridged or interpolated from its neighbours, so a run's box may differ by a few
        pixels; and where the detector misses this frame, a run may still bridge it.
        """
        options = options or LipSyncOptions()
        if not math.isfinite(at_seconds) or at_seconds < 0:
            raise InputError(f"the preview time must be a number of seconds from 0 on, not {at_seconds}")
        watch = Stopwatch()
        frames = FaceFrames(Path(face), options)
        speech = load_speech(Path(audio), frames.fps, None if voice is None else Path(voice))
        n_out = len(speech.chunks)
        i = min(math.floor(at_seconds * frames.fps), n_out - 1)  # the output frame shown at that time
        if frames.static:
            frame = frames.first.copy()
        else:
            shown = source_index(i, frames.usable(n_out), options.loop)
            frame = transform_frame(frames.video.frame_at((shown + 0.5) / frames.fps), options)
        frame_hw = frame.shape[:2]
        if options.box is not None:
            boxes, found = faces.fixed_boxes(options.box, frame_hw, 1), np.ones(1, bool)
        else:
            dets = detect.detect_faces(self.detector(self.dtype(options)), [frame], 1, options)
            boxes, found = faces.boxes_from_detections(dets, 1, options, frame_hw)
        if not found[0]:
            raise NoFaceError(
                f"No face found in the frame at {i / frames.fps:.2f} s of {frames.name}: try another time, "
                "detection 'original' (full resolution), or give a fixed box (top bottom left right)")
        weights = vad.silence_weights(speech.wav, n_out, frames.fps) if options.silence == "keep" else None
        # a plan of one input frame: output frame i shows it, and the run's own batch code paints it
        plan = Plan(frames, options, speech, 1, FaceBoxes(1, options, frame_hw, watch, fixed=boxes), watch, weights)
        batch = [frame]
        self._lip_sync_batch(self.generator_for(options), plan, batch, range(i, i + 1))
        out = batch[0]  # our own array either way: the frame was decoded (or copied) for this call
        x1, y1, x2, y2 = (int(v) for v in boxes[0])
        for k in range(PREVIEW_BOX_THICKNESS):  # 1-px outlines inward: nothing outside the box changes
            cv2.rectangle(out, (x1 + k, y1 + k), (x2 - 1 - k, y2 - 1 - k), PREVIEW_BOX_BGR, 1)
        return out


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
