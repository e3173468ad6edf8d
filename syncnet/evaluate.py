"""Lip-sync scores of a video (LSE-D, LSE-C, AV offset), faithful to syncnet_python, streamed.

Two ways to choose what SyncNet looks at:

* ``mode="tracks"`` (default) follows the reference's real-video pipeline (run_pipeline.py +
  run_syncnet.py): frames at 25 fps, shot boundaries (content change), S3FD (``sfd_face.pth``) at
  0.25 scale, IoU tracking, median-smoothed 224x224 crops; every face track is scored on its own,
  against the audio cut to the track's frames, and the video's numbers are the means over tracks
  (what users do with the reference's per-track lines).
* ``mode="whole-frame"`` follows the LRS2 script (calculate_scores_LRS.py): the whole frame, which
  is already a face crop there, resized to 224x224.

The video is decoded twice in track mode: the first pass keeps only boxes and one float per frame
(scene change), the second crops the tracks and embeds 5-frame windows as they fill, holding a
batch of 224x224 crops per track. Memory therefore stays flat however long the video is.

What is and is not reproduced of the reference's media round trips: the frames SyncNet sees went
through ffmpeg's image2 JPEG writer at its default quality (rate control at 200 kb/s), then
OpenCV; ``jpeg_roundtrip=True`` (default) does the same in-process (same encoder and settings, see
:class:`syncnet.crops.JpegRoundTrip`). Not reproduced: run_pipeline's intermediate MPEG-4 AVI at
``-qscale 2`` and its quality-2 JPEG frames (near lossless), and the XVID crop video written by
OpenCV before that last JPEG step. Audio is decoded to 16 kHz mono and rounded to int16 as
``ffmpeg -acodec pcm_s16le -ar 16000 -ac 1`` does.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import torch
from tqdm.auto import tqdm

from face_detection.detector import FaceDetector
from face_detection.tracking import Track, link_tracks
from face_detection.winograd import DEFAULT_BLOCK
from lipsync.batching import in_batches
from lipsync.errors import InputError, NoFaceError
from lipsync.faces import load_detector
from lipsync.media import MediaInfo, iter_frames, load_audio, probe
from syncnet import scenes
from syncnet.crops import CROP_SCALE, CROP_SIZE, JpegRoundTrip, crop_face, smooth_track
from syncnet.fused import FusedSyncNet
from syncnet.mfcc import mfcc
from syncnet.model import WINDOW_FRAMES, load_syncnet
from syncnet.score import (
    AUDIO_RATE,
    SAMPLES_PER_FRAME,
    VIDEO_FPS,
    VSHIFT,
    audio_windows,
    lip_windows,
    score_features,
    window_count,
)

log = logging.getLogger(__name__)

Mode = Literal["tracks", "whole-frame"]
MODES: tuple[str, ...] = ("tracks", "whole-frame")

# run_pipeline.py defaults
MIN_TRACK = 100  # frames (4 s): shorter shots, and tracks with no more detections, are not scored
FACEDET_SCALE = 0.25  # frames are shrunk to a quarter before S3FD
MAX_MISSED_FRAMES = 25  # a track survives up to 1 s without a detection
MIN_FACE_SIZE = 100  # px, mean box side over the track
# a track needs at least one window: 5 frames plus the one the reference leaves unused
MIN_FRAMES = WINDOW_FRAMES + 1
# SyncNet windows per forward pass (the reference uses 20; the result does not depend on it)
SYNCNET_BATCH = 20
DETECT_BATCH = 16  # frames handed to the face detector at once (it caps the batch by pixels on CPU)
INT16_SCALE = 32768  # ffmpeg's float -> s16 conversion: round(x * 2**15), clipped


@dataclass(frozen=True)
class EvalOptions:
    """How to score a video. The defaults reproduce the reference's real-video pipeline.

    ``min_track``: shots and tracks need more than this many frames with a detected face (the
    reference's 100, i.e. 4 s, which leaves shorter clips without any score). Lower it for short
    clips; scores from fewer than ~50 frames are noisy. ``detect_every=k`` runs the face detector
    on every k-th frame only and interpolates the boxes in between (about k times faster
    detection; the reference is k=1). ``jpeg_roundtrip=False`` scores the decoded frames directly
    instead of reproducing the reference's JPEG step (scores then differ slightly from published ones).
    """

    mode: Mode = "tracks"
    min_track: int = MIN_TRACK
    detect_every: int = 1
    facedet_scale: float = FACEDET_SCALE
    jpeg_roundtrip: bool = True
    min_face_size: float = MIN_FACE_SIZE
    crop_scale: float = CROP_SCALE
    vshift: int = VSHIFT
    batch_size: int = SYNCNET_BATCH
    detect_batch_size: int = DETECT_BATCH

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InputError(f"unknown mode '{self.mode}'; use one of: {', '.join(MODES)}")
        if self.min_track < MIN_FRAMES - 1:
            raise InputError(f"min_track must be at least {MIN_FRAMES - 1} frames (one SyncNet window "
                             f"needs {MIN_FRAMES}), got {self.min_track}")
        if self.detect_every < 1:
            raise InputError(f"detect_every must be 1 (every frame) or more, got {self.detect_every}")
        if self.detect_every > MAX_MISSED_FRAMES:
            raise InputError(f"detect_every must be at most {MAX_MISSED_FRAMES}: tracks end after "
                             f"{MAX_MISSED_FRAMES} frames without a detection")
        if not 0 < self.facedet_scale <= 1:
            raise InputError(f"facedet_scale must be in (0, 1], got {self.facedet_scale}")
        if self.min_face_size < 0 or self.crop_scale < 0 or self.vshift < 1:
            raise InputError("min_face_size and crop_scale must not be negative and vshift must be positive")
        if self.batch_size < 1 or self.detect_batch_size < 1:
            raise InputError("batch sizes must be at least 1")


@dataclass(frozen=True)
class TrackResult:
    """Scores of one face track (or of the whole video in whole-frame mode)."""

    first_frame: int  # at 25 fps, inclusive
    last_frame: int
    n_windows: int  # 5-frame windows scored
    lse_d: float  # lowest mean embedding distance over offsets: lower is better
    lse_c: float  # median minus lowest mean distance: higher is better
    offset: int  # AV offset in frames at 25 fps; positive: the audio leads the video
    confidence: np.ndarray  # (n_windows,) per-window confidence, median-filtered (window v = frames v..v+4)
    distances: np.ndarray  # (2*vshift+1,) mean distance per offset, from +vshift down to -vshift

    @property
    def start_s(self) -> float:
        return self.first_frame / VIDEO_FPS

    @property
    def end_s(self) -> float:
        return (self.last_frame + 1) / VIDEO_FPS

    def to_dict(self) -> dict[str, Any]:
        return {"first_frame": self.first_frame, "last_frame": self.last_frame,
                "start_s": round(self.start_s, 3), "end_s": round(self.end_s, 3), "n_windows": self.n_windows,
                "lse_d": self.lse_d, "lse_c": self.lse_c, "offset": self.offset,
                "confidence": [round(float(v), 4) for v in self.confidence],
                "distances": [round(float(v), 4) for v in self.distances]}


@dataclass(frozen=True)
class VideoResult:
    """Scores of one video: per track, and their means (the video's LSE-D / LSE-C / offset)."""

    path: Path
    mode: Mode
    jpeg_roundtrip: bool
    tracks: list[TrackResult]
    lse_d: float
    lse_c: float
    offset: float
    n_frames: int  # at 25 fps
    source_fps: float | None
    messages: list[str] = field(default_factory=list)  # what the user should know (dropped tracks, ...)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["path"] = str(self.path)
        out["tracks"] = [t.to_dict() for t in self.tracks]
        out["timings"] = {k: round(v, 3) for k, v in self.timings.items()}
        out["fps"] = VIDEO_FPS
        return out


def to_int16(samples: np.ndarray) -> np.ndarray:
    """float32 [-1, 1] -> int16 as FFmpeg's pcm_s16le encoder rounds it."""
    return np.clip(np.rint(samples.astype(np.float64) * INT16_SCALE), -INT16_SCALE, INT16_SCALE - 1).astype(np.int16)


class _LipWindows:
    """Lip embeddings of 5-frame windows, computed while the crops arrive.

    Window v (frames v..v+4) is embedded once frame v+5 has arrived: the reference scores
    ``min(frames, audio frames) - 5`` windows, one fewer than would fit. ``limit`` caps the count
    by the audio. Only the crops of unfinished windows are kept (at most a batch plus 5).
    """

    def __init__(self, model: FusedSyncNet, device: torch.device, batch_size: int, limit: int) -> None:
        self.model, self.device, self.batch_size, self.limit = model, device, batch_size, limit
        self.buffer: list[np.ndarray] = []  # crops from the first window not yet embedded
        self.done = 0
        self.seen = 0
        self.feats: list[torch.Tensor] = []

    def _ready(self) -> int:
        return max(0, min(self.limit, self.seen - WINDOW_FRAMES))

    @property
    def full(self) -> bool:
        """True once every frame the scored windows need has arrived (later crops are not looked at)."""
        return self.done + len(self.buffer) >= self.limit + WINDOW_FRAMES - 1

    def push(self, crop: np.ndarray | None) -> None:
        """Add the next frame's crop (``None`` is allowed once ``full``: only counted)."""
        self.seen += 1
        if self.full:
            return
        self.buffer.append(crop)
        if self._ready() - self.done >= self.batch_size:
            self._run(self.batch_size)

    def finish(self) -> torch.Tensor:
        while self._ready() > self.done:
            self._run(min(self.batch_size, self._ready() - self.done))
        return torch.cat(self.feats) if self.feats else torch.zeros(0, 1024)

    def _run(self, n: int) -> None:
        windows = lip_windows(np.stack(self.buffer[:n + WINDOW_FRAMES - 1]), n)
        self.feats.append(_forward(self.model.forward_lip, windows, self.device))
        del self.buffer[:n]
        self.done += n


@torch.inference_mode()
def _forward(fn: Any, batch: torch.Tensor, device: torch.device, batch_size: int | None = None) -> torch.Tensor:
    """Run ``fn`` on ``batch`` in pieces of ``batch_size``, halving them on out-of-memory (see in_batches)."""
    if len(batch) == 0:
        return torch.zeros(0, 1024)
    parts: list[torch.Tensor] = []

    def run(start: int, stop: int) -> None:
        parts.append(fn(batch[start:stop].to(device)).float().cpu())

    in_batches(run, len(batch), batch_size or len(batch), what="SyncNet", device=device)
    return torch.cat(parts)


@dataclass
class _TrackPlan:
    """A track being scored in the second pass."""

    track: Track
    smooth: np.ndarray  # (n, 3) s, x, y per frame
    audio: np.ndarray  # int16 samples of the track's frames
    lips: _LipWindows
    jpeg: JpegRoundTrip | None

    @property
    def first(self) -> int:
        return int(self.track.frames[0])

    @property
    def last(self) -> int:
        return int(self.track.frames[-1])


class SyncNetEvaluator:
    """Loads SyncNet (and, for track mode, the face detector) once, lazily; ``evaluate`` any number of videos.

    ``syncnet`` / ``detector``: registry names or checkpoint paths (see :mod:`lipsync.weights`).
    Not safe to call ``evaluate`` from several threads at once.
    """

    def __init__(self, weights_dir: str | os.PathLike | None = None, device: str | None = None, *,
                 syncnet: str | os.PathLike = "syncnet_v2", detector: str | os.PathLike = "sfd_face") -> None:
        self.weights_dir = weights_dir
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self._syncnet_name = syncnet
        self._detector_name = detector
        self._syncnet: FusedSyncNet | None = None
        self._detector: FaceDetector | None = None
        self._lock = threading.Lock()

    @property
    def syncnet(self) -> FusedSyncNet:
        with self._lock:
            if self._syncnet is None:
                model = load_syncnet(self._syncnet_name, device=self.device, weights_dir=self.weights_dir)
                self._syncnet = FusedSyncNet(model)
            return self._syncnet

    @property
    def detector(self) -> FaceDetector:
        with self._lock:
            if self._detector is None:
                # every frame is detected here, so the Winograd kernels' memory is worth their speed
                self._detector = load_detector(self._detector_name, "sfd_face", device=self.device,
                                               weights_dir=self.weights_dir, winograd=DEFAULT_BLOCK)
            return self._detector

    def evaluate(self, path: str | os.PathLike, options: EvalOptions = EvalOptions(), *,
                 progress: bool = True) -> VideoResult:
        """Score one video; raises InputError / NoFaceError with a message for the user."""
        path = Path(path)
        start = time.perf_counter()
        info = probe(path)
        _check_video(info)
        messages: list[str] = []
        if info.fps is not None and info.fps != VIDEO_FPS:
            note = (f"{path.name} is {float(info.fps):.3f} fps; converted to {VIDEO_FPS} fps as the reference does "
                    "(frames are repeated or dropped)")
            log.warning(note)
            messages.append(note)
        audio = self._load_audio(path)
        timings = {"audio": time.perf_counter() - start}
        if options.mode == "whole-frame":
            tracks, n_frames = self._score_whole_frames(path, info, audio, options, messages, timings, progress)
        else:
            tracks, n_frames = self._score_tracks(path, info, audio, options, messages, timings, progress)
        audio_s, video_s = audio.size / AUDIO_RATE, n_frames / VIDEO_FPS
        if abs(audio_s - video_s) >= 1 / VIDEO_FPS:
            messages.append(f"audio ({audio_s:.2f} s) and video ({video_s:.2f} s) differ in length; "
                            "only the overlap is scored")
        timings["total"] = time.perf_counter() - start
        return VideoResult(
            path=path, mode=options.mode, jpeg_roundtrip=options.jpeg_roundtrip, tracks=tracks,
            lse_d=float(np.mean([t.lse_d for t in tracks])), lse_c=float(np.mean([t.lse_c for t in tracks])),
            offset=float(np.mean([t.offset for t in tracks])), n_frames=n_frames,
            source_fps=float(info.fps) if info.fps else None, messages=messages, timings=timings)

    # -- inputs ------------------------------------------------------------------------------------
    def _load_audio(self, path: Path) -> np.ndarray:
        samples, _ = load_audio(path, sample_rate=AUDIO_RATE, mono=True)
        audio = to_int16(samples)
        if not audio.any():
            raise InputError(f"the audio of {path.name} is silent (every sample is zero): a lip-sync score "
                             "of silence is meaningless; score a video with speech")
        if audio.size // SAMPLES_PER_FRAME < MIN_FRAMES:
            raise InputError(f"{path.name} has only {audio.size / AUDIO_RATE:.2f} s of audio: SyncNet needs "
                             f"at least {MIN_FRAMES} frames ({MIN_FRAMES / VIDEO_FPS:.2f} s) of speech")
        return audio

    # -- whole-frame mode ----------------------------------------------------------------------------
    def _score_whole_frames(self, path: Path, info: MediaInfo, audio: np.ndarray, options: EvalOptions,
                            messages: list[str], timings: dict[str, float],
                            progress: bool) -> tuple[list[TrackResult], int]:
        model = self.syncnet
        tic = time.perf_counter()
        lips = _LipWindows(model, self.device, options.batch_size, audio.size // SAMPLES_PER_FRAME - WINDOW_FRAMES)
        jpeg = JpegRoundTrip() if options.jpeg_roundtrip else None
        n_frames = 0
        for frame in tqdm(iter_frames(path, fps=VIDEO_FPS), total=_expected_frames(info), desc="syncnet",
                          unit="frame", disable=not progress):
            n_frames += 1
            if lips.full:  # the audio has ended: only count the frames
                lips.push(None)
                continue
            if jpeg is not None:
                frame = jpeg(frame)  # the reference wrote full frames to JPEG, then resized
            lips.push(cv2.resize(frame, (CROP_SIZE, CROP_SIZE), interpolation=cv2.INTER_LINEAR))
        _check_length(path, n_frames)
        lip_feat = lips.finish()
        timings["decode_embed"] = time.perf_counter() - tic
        result = self._score(lip_feat, audio, 0, n_frames - 1, options)
        timings["score"] = time.perf_counter() - tic - timings["decode_embed"]
        return [result], n_frames

    # -- track mode ----------------------------------------------------------------------------------
    def _score_tracks(self, path: Path, info: MediaInfo, audio: np.ndarray, options: EvalOptions,
                      messages: list[str], timings: dict[str, float],
                      progress: bool) -> tuple[list[TrackResult], int]:
        detector, model = self.detector, self.syncnet
        tic = time.perf_counter()
        dets, scene_scores = self._detect(path, info, detector, options, progress)
        n_frames = len(dets)
        _check_length(path, n_frames)
        timings["decode_detect"] = time.perf_counter() - tic

        tic = time.perf_counter()
        tracks = self._select_tracks(path, dets, scenes.detect_shots(scene_scores), options, messages)
        plans = []
        for track in tracks:
            first, last = int(track.frames[0]), int(track.frames[-1])
            segment = audio[first * SAMPLES_PER_FRAME:(last + 1) * SAMPLES_PER_FRAME]
            limit = window_count(len(track), segment.size)
            if limit == 0:
                messages.append(f"face track at frames {first}-{last} was not scored: the audio ends before it")
                continue
            plans.append(_TrackPlan(track, smooth_track(track.boxes), segment,
                                    _LipWindows(model, self.device, options.batch_size, limit),
                                    JpegRoundTrip() if options.jpeg_roundtrip else None))
        if not plans:
            raise InputError(f"the audio of {path.name} ends before any face track starts: nothing to score")
        timings["tracking"] = time.perf_counter() - tic

        tic = time.perf_counter()
        end = max(p.last for p in plans)
        frames = iter_frames(path, fps=VIDEO_FPS)
        with tqdm(total=end + 1, desc="syncnet", unit="frame", disable=not progress) as bar:
            for index, frame in enumerate(frames):
                if index > end:
                    break
                for plan in plans:
                    if not plan.first <= index <= plan.last:
                        continue
                    if plan.lips.full:
                        plan.lips.push(None)
                        continue
                    s, x, y = plan.smooth[index - plan.first]
                    crop = crop_face(frame, s, x, y, crop_scale=options.crop_scale)
                    plan.lips.push(plan.jpeg(crop) if plan.jpeg is not None else crop)
                bar.update()
        frames.close()
        results = [self._score(p.lips.finish(), p.audio, p.first, p.last, options) for p in plans]
        timings["crop_embed_score"] = time.perf_counter() - tic
        return results, n_frames

    def _detect(self, path: Path, info: MediaInfo, detector: FaceDetector, options: EvalOptions,
                progress: bool) -> tuple[list[np.ndarray], list[float]]:
        """First pass: faces on every ``detect_every``-th frame and the scene-change score of every frame."""
        empty = np.zeros((0, 5), np.float32)
        dets: list[np.ndarray] = []
        scene_scores: list[float] = []
        pending: list[tuple[int, np.ndarray]] = []
        scorer: scenes.ContentScorer | None = None

        def flush() -> None:
            found = detector.detect([f for _, f in pending], scale=options.facedet_scale)
            for (i, _), d in zip(pending, found, strict=True):
                dets[i] = d
            pending.clear()

        latest: tuple[int, np.ndarray] | None = None  # the newest frame that was not a key frame
        for index, frame in enumerate(tqdm(iter_frames(path, fps=VIDEO_FPS), total=_expected_frames(info),
                                           desc="face detection", unit="frame", disable=not progress)):
            if scorer is None:
                scorer = scenes.ContentScorer(frame.shape[1])
            scene_scores.append(scorer(frame))
            dets.append(empty)
            if index % options.detect_every == 0:
                latest = None
                pending.append((index, frame))
                if len(pending) >= options.detect_batch_size:
                    flush()
            else:
                latest = (index, frame)
        if latest is not None:
            # the last frame is a key frame too, so that tracks reach the end of the video as the
            # reference's (which detects every frame) do
            pending.append(latest)
        if pending:
            flush()
        return dets, scene_scores

    def _select_tracks(self, path: Path, dets: list[np.ndarray], shots: list[tuple[int, int]],
                       options: EvalOptions, messages: list[str]) -> list[Track]:
        """Link detections into tracks per shot and keep those the reference keeps, or explain why none."""
        k = options.detect_every
        kept: list[Track] = []
        dropped: list[tuple[Track, str]] = []
        for first, stop in shots:
            # linking does not depend on the length/size filters, so link everything and filter after,
            # which also tells the user why a track was not scored
            for track in link_tracks(dets[first:stop], max_gap=MAX_MISSED_FRAMES, min_track=0,
                                     min_face_size=0, start_frame=first):
                n_detected = int(track.detected.sum()) if len(track.detected) else len(track)
                side = max(np.mean(track.boxes[:, 2] - track.boxes[:, 0]),
                           np.mean(track.boxes[:, 3] - track.boxes[:, 1]))
                if stop - first < options.min_track:
                    dropped.append((track, f"its shot is {stop - first} frames, not at least {options.min_track}"))
                elif n_detected * k <= options.min_track:
                    dropped.append((track, f"{n_detected * k} frames with a face, not more than {options.min_track}"))
                elif side <= options.min_face_size:
                    dropped.append((track, f"the face is {side:.0f} px, not more than {options.min_face_size:g} px"))
                else:
                    kept.append(track)
        if not kept and not dropped:
            raise NoFaceError(f"no face found in any frame of {path.name}. If the frames are already face "
                              "crops (as in LRS2), score them with --mode whole-frame")
        if not kept:
            longest, why = max(dropped, key=lambda d: len(d[0]))
            raise NoFaceError(
                f"no face track in {path.name} is long enough to score: the longest is {len(longest)} frames "
                f"({len(longest) / VIDEO_FPS:.1f} s, frames {longest.frames[0]}-{longest.frames[-1]}; {why}). "
                f"The reference only scores shots and tracks longer than {options.min_track} frames "
                f"({options.min_track / VIDEO_FPS:.1f} s) with faces over {options.min_face_size:g} px: lower "
                "--min-track (e.g. --min-track 25; shorter tracks give noisier scores) or --min-face-size")
        for track, why in dropped:
            if len(track) >= MIN_FRAMES:
                messages.append(f"face track at frames {track.frames[0]}-{track.frames[-1]} not scored: {why}")
        return kept

    # -- scoring -------------------------------------------------------------------------------------
    def _score(self, lip_feat: torch.Tensor, audio: np.ndarray, first: int, last: int,
               options: EvalOptions) -> TrackResult:
        """Audio embeddings for the same windows, then distances and scores."""
        n = len(lip_feat)
        mfcc_t = mfcc(audio).T  # (13, T)
        windows = torch.from_numpy(audio_windows(mfcc_t, 0, n))  # (n, 1, 13, 20), 1 KB each
        aud_feat = _forward(self.syncnet.forward_aud, windows, self.device, options.batch_size)
        score = score_features(lip_feat, aud_feat, options.vshift)
        return TrackResult(first_frame=first, last_frame=last, n_windows=n, lse_d=score.min_dist,
                           lse_c=score.conf, offset=score.offset, confidence=score.fconfm, distances=score.mdist)


def _check_video(info: MediaInfo) -> None:
    name = info.path.name
    if info.is_image:
        raise InputError(f"{name} is a still image: SyncNet scores how lips move with speech, so give it a video "
                         "with sound")
    if not info.has_audio:
        raise InputError(f"{name} has no audio track: the lip-sync score compares the lips with the speech, so "
                         "the video needs its sound")


def _check_length(path: Path, n_frames: int) -> None:
    if n_frames < MIN_FRAMES:
        raise InputError(f"{path.name} is too short to score: {n_frames} frames at {VIDEO_FPS} fps; SyncNet needs "
                         f"at least {MIN_FRAMES} ({MIN_FRAMES / VIDEO_FPS:.2f} s)")


def _expected_frames(info: MediaInfo) -> int | None:
    return round(info.duration * VIDEO_FPS) if info.duration else None


def evaluate(path: str | os.PathLike, options: EvalOptions = EvalOptions(), *,
             weights_dir: str | os.PathLike | None = None, device: str | None = None) -> VideoResult:
    """One-off convenience: build an evaluator and score one video (reuse a SyncNetEvaluator for many)."""
    return SyncNetEvaluator(weights_dir, device).evaluate(path, options)
