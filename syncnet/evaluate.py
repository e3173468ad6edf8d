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
:class:`syncnet.crops.JpegRoundTrip`). In whole-frame mode the encoder gets the decoder's own YUV
frames, as ffmpeg does, so for 8-bit 4:2:0 video the frames are the reference's pixel for pixel.
Not reproduced: run_pipeline's intermediate MPEG-4 AVI at ``-qscale 2`` and its quality-2 JPEG
frames (near lossless), and the XVID crop video written by OpenCV before that last JPEG step.
Audio is decoded to 16 kHz mono and rounded to int16 as ``ffmpeg -acodec pcm_s16le -ar 16000 -ac 1``
does, keeping every decoded sample (an AAC track's final padding too), as ffmpeg does.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np
import torch
from tqdm.auto import tqdm

from common import precision
from common.errors import Cancelled, InputError
from common.overlap import Prefetch
from common.progress import counted
from face_detection.detector import FaceDetector
from face_detection.loading import load_detector
from face_detection.memory import release_free_memory
from face_detection.tracking import Track
from face_detection.winograd import DEFAULT_BLOCK, load_kernels
from media.io import MediaInfo, VideoSource, audio_duration, load_audio
from syncnet import scenes
from syncnet.constants import AUDIO_RATE, CROP_SIZE, SAMPLES_PER_FRAME, VIDEO_FPS, WINDOW_FRAMES
from syncnet.crops import JpegRoundTrip, crop_face, smooth_track
from syncnet.embed import LipWindows, audio_embeddings
from syncnet.folded import FoldedSyncNet
from syncnet.model import load_syncnet
from syncnet.options import MIN_FRAMES, MIN_TRACK, MODES, EvalOptions, Mode  # noqa: F401 - the public names
from syncnet.score import score_features, window_count
from syncnet.tracks import check_detectable, detect_pass, select_tracks

log = logging.getLogger(__name__)
# Track mode decodes this many frames ahead in a thread (FFmpeg releases the GIL), beside the networks:
# a 10 s 720p clip with detect_every 5 scored in 17.8 and 16.4 s against 19.0 and 19.6 s without
# (alternated, fresh processes, 2 CPU cores), for about 45 MB of frames at 720p.
PREFETCH_FRAMES = 16
T = TypeVar("T")

INT16_SCALE = 32768  # ffmpeg's float -> s16 conversion: round(x * 2**15), clipped


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



@dataclass
class _TrackPlan:
    """A track being scored in the second pass."""

    track: Track
    smooth: np.ndarray  # (n, 3) s, x, y per frame
    audio: np.ndarray  # int16 samples of the track's frames
    lips: LipWindows
    jpeg: JpegRoundTrip | None

    @property
    def first(self) -> int:
        return int(self.track.frames[0])

    @property
    def last(self) -> int:
        return int(self.track.frames[-1])

    def push(self, index: int, frame: np.ndarray, crop_scale: float) -> None:
        """The crop of frame ``index`` of the video, if the track covers it and still needs it."""
        if not self.first <= index <= self.last:
            return
        if self.lips.full:
            self.lips.push(None)
            return
        s, x, y = self.smooth[index - self.first]
        crop = crop_face(frame, s, x, y, crop_scale=crop_scale)
        self.lips.push(self.jpeg(crop) if self.jpeg is not None else crop)


class SyncNetEvaluator:
    """Loads SyncNet (and, for track mode, the face detector) once, lazily; ``evaluate`` any number of videos.

    ``syncnet`` / ``detector``: registry names or checkpoint paths (see :mod:`common.weights`).
    ``detector_across_cores``: the face detector's batches on all CPU cores at once (FaceDetector's
    ``across_cores``). ``syncnet_across_cores``: in float32 on a CPU, the lip tower's first layer from
    each batch's frames, on all cores (FoldedSyncNet's ``across_cores``). Not safe to call ``evaluate``
    from several threads at once.
    """

    def __init__(self, weights_dir: str | os.PathLike | None = None, device: str | None = None, *,
                 syncnet: str | os.PathLike = "syncnet_v2", detector: str | os.PathLike = "sfd_face",
                 detector_across_cores: bool = True, syncnet_across_cores: bool = True) -> None:
        self.weights_dir = weights_dir
        # the detector's batches on all CPU cores at once (see FaceDetector): faster, ~300 MB more
        self.detector_across_cores = detector_across_cores
        self.syncnet_across_cores = syncnet_across_cores
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self._syncnet_name = syncnet
        self._detector_name = detector
        self.syncnets: dict[torch.dtype, FoldedSyncNet] = {}  # loaded on first use, per number format
        self.detectors: dict[torch.dtype, FaceDetector] = {}
        self._lock = threading.Lock()

    def syncnet_for(self, dtype: torch.dtype = torch.float32) -> FoldedSyncNet:
        with self._lock:
            if dtype not in self.syncnets:
                model = load_syncnet(self._syncnet_name, device=self.device, weights_dir=self.weights_dir)
                net = FoldedSyncNet(model, across_cores=self.syncnet_across_cores).to(dtype)
                if net.shares_frames():
                    load_kernels()  # the compiled loops now, not in the first video's time
                self.syncnets[dtype] = net
                release_free_memory()
            return self.syncnets[dtype]

    def detector_for(self, dtype: torch.dtype = torch.float32) -> FaceDetector:
        with self._lock:
            if dtype not in self.detectors:
                # every frame is detected here, so the Winograd kernels' memory is worth their speed
                self.detectors[dtype] = load_detector(self._detector_name, "sfd_face", device=self.device,
                                                      weights_dir=self.weights_dir, winograd=DEFAULT_BLOCK,
                                                      dtype=dtype, across_cores=self.detector_across_cores)
            return self.detectors[dtype]

    @property
    def syncnet(self) -> FoldedSyncNet:
        """The float32 SyncNet (as published)."""
        return self.syncnet_for(torch.float32)

    @property
    def detector(self) -> FaceDetector:
        """The float32 face detector (as published)."""
        return self.detector_for(torch.float32)

    def evaluate(self, path: str | os.PathLike, options: EvalOptions | None = None, *,
                 progress: bool = True, should_stop: Callable[[], bool] | None = None) -> VideoResult:
        """Score one video (default options: the reference's); raises InputError / NoFaceError for the user.

        ``should_stop`` is asked every second of video in each pass; True raises Cancelled.
        """
        return _Scoring(self, Path(path), options or EvalOptions(), progress, should_stop).run()


class _Scoring:
    """One evaluation: the video's audio, then its tracks (or whole frames), embedded and scored."""

    def __init__(self, evaluator: SyncNetEvaluator, path: Path, options: EvalOptions, progress: bool,
                 should_stop: Callable[[], bool] | None = None) -> None:
        self.evaluator, self.options, self.progress = evaluator, options, progress
        self.should_stop = should_stop
        self.start = time.perf_counter()
        self.dtype = precision.resolve(options.precision, evaluator.device)
        self.video = VideoSource(path)
        self.info = self.video.info
        self.name = path.name
        self.messages: list[str] = []
        self.timings: dict[str, float] = {}

    def run(self) -> VideoResult:
        _check_video(self.info)
        if self.info.fps is not None and self.info.fps != VIDEO_FPS:
            note = (f"{self.name} is {float(self.info.fps):.3f} fps; converted to {VIDEO_FPS} fps as the reference "
                    "does (frames are repeated or dropped)")
            log.warning(note)
            self.messages.append(note)
        audio = self.load_audio()
        self.timings["audio"] = time.perf_counter() - self.start
        if self.options.mode == "whole-frame":
            tracks, n_frames = self.score_whole_frames(audio)
        else:
            tracks, n_frames = self.score_tracks(audio)
        # the track's declared length: the decoded samples may run on by the codec's padding
        audio_s = audio_duration(self.video.path, whole_file=False) or audio.size / AUDIO_RATE
        video_s = n_frames / VIDEO_FPS
        if abs(audio_s - video_s) >= 1 / VIDEO_FPS:
            self.messages.append(f"audio ({audio_s:.2f} s) and video ({video_s:.2f} s) differ in length; "
                                 "only the overlap is scored")
        self.timings["total"] = time.perf_counter() - self.start
        return VideoResult(
            path=self.video.path, mode=self.options.mode, jpeg_roundtrip=self.options.jpeg_roundtrip,
            tracks=tracks, lse_d=float(np.mean([t.lse_d for t in tracks])),
            lse_c=float(np.mean([t.lse_c for t in tracks])), offset=float(np.mean([t.offset for t in tracks])),
            n_frames=n_frames, source_fps=float(self.info.fps) if self.info.fps else None,
            messages=self.messages, timings=self.timings)

    def load_audio(self) -> np.ndarray:
        # every decoded sample, the last AAC frame's padding too, as the reference's ffmpeg extracts
        # them: the padding can add a window
        samples, _ = load_audio(self.video.path, sample_rate=AUDIO_RATE, mono=True, trim_padding=False)
        audio = to_int16(samples)
        if not audio.any():
            raise InputError(f"the audio of {self.name} is silent (every sample is zero): a lip-sync score "
                             "of silence is meaningless; score a video with speech")
        if audio.size // SAMPLES_PER_FRAME < MIN_FRAMES:
            raise InputError(f"{self.name} has only {audio.size / AUDIO_RATE:.2f} s of audio: SyncNet needs "
                             f"at least {MIN_FRAMES} frames ({MIN_FRAMES / VIDEO_FPS:.2f} s) of speech")
        return audio

    def progress_bar(self, frames: Iterable, desc: str) -> Iterable:
        """The video's frames at 25 fps, with a progress bar."""
        return counted(frames, total=_expected_frames(self.info), desc=desc, disable=not self.progress)

    def stoppable(self, frames: Iterable[T]) -> Iterator[T]:
        """``frames``, asking ``should_stop`` once a second of video (Cancelled when it says so)."""
        for index, frame in enumerate(frames):
            if self.should_stop is not None and index % VIDEO_FPS == 0 and self.should_stop():
                raise Cancelled(f"scoring {self.name} stopped at frame {index}")
            yield frame

    def lip_windows(self, limit: int) -> LipWindows:
        ev = self.evaluator
        return LipWindows(ev.syncnet_for(self.dtype), ev.device, self.options.batch_size, limit)

    # -- whole-frame mode ----------------------------------------------------------------------------
    def score_whole_frames(self, audio: np.ndarray) -> tuple[list[TrackResult], int]:
        tic = time.perf_counter()
        lips = self.lip_windows(audio.size // SAMPLES_PER_FRAME - WINDOW_FRAMES)
        jpeg = JpegRoundTrip() if self.options.jpeg_roundtrip else None
        n_frames = 0
        # the reference wrote the decoder's frames to JPEG, then resized what OpenCV read back
        frames = self.video.video_frames(fps=VIDEO_FPS) if jpeg is not None else self.video.frames(fps=VIDEO_FPS)
        for frame in self.progress_bar(self.stoppable(frames), "syncnet"):
            n_frames += 1
            if lips.full:  # the audio has ended: only count the frames
                lips.push(None)
                continue
            if jpeg is not None:
                frame = jpeg.decoded(*frame)
            lips.push(cv2.resize(frame, (CROP_SIZE, CROP_SIZE), interpolation=cv2.INTER_LINEAR))
        _check_length(self.name, n_frames)
        lip_feat = lips.finish()
        self.timings["decode_embed"] = time.perf_counter() - tic
        result = self.score(lip_feat, audio, 0, n_frames - 1)
        self.timings["score"] = time.perf_counter() - tic - self.timings["decode_embed"]
        return [result], n_frames

    # -- track mode ----------------------------------------------------------------------------------
    def score_tracks(self, audio: np.ndarray) -> tuple[list[TrackResult], int]:
        check_detectable(self.name, self.info.width, self.info.height, self.options.facedet_scale)
        tic = time.perf_counter()
        with Prefetch(self.video.frames(fps=VIDEO_FPS), depth=PREFETCH_FRAMES) as ahead:
            dets, scene_scores = detect_pass(self.stoppable(ahead), self.evaluator.detector_for(self.dtype),
                                             self.options, total=_expected_frames(self.info), progress=self.progress)
        n_frames = len(dets)
        _check_length(self.name, n_frames)
        # the detection's freed work space, kept in the C heaps (the workers' too), goes back before SyncNet runs
        release_free_memory()
        self.timings["decode_detect"] = time.perf_counter() - tic

        tic = time.perf_counter()
        tracks, notes = select_tracks(self.name, dets, scenes.detect_shots(scene_scores), self.options)
        self.messages += notes
        plans = self.track_plans(tracks, audio)
        self.timings["tracking"] = time.perf_counter() - tic

        tic = time.perf_counter()
        end = max(p.last for p in plans)
        with Prefetch(self.video.frames(fps=VIDEO_FPS), depth=PREFETCH_FRAMES) as ahead, \
                tqdm(total=end + 1, desc="syncnet", unit="frame", disable=not self.progress) as bar:
            for index, frame in enumerate(self.stoppable(ahead)):
                if index > end:
                    break
                for plan in plans:
                    plan.push(index, frame, self.options.crop_scale)
                bar.update()
        results = [self.score(p.lips.finish(), p.audio, p.first, p.last) for p in plans]
        self.timings["crop_embed_score"] = time.perf_counter() - tic
        return results, n_frames

    def track_plans(self, tracks: list[Track], audio: np.ndarray) -> list[_TrackPlan]:
        """The tracks the audio reaches, each with its audio segment and a lip-window embedder."""
        plans = []
        for track in tracks:
            first, last = int(track.frames[0]), int(track.frames[-1])
            segment = audio[first * SAMPLES_PER_FRAME:(last + 1) * SAMPLES_PER_FRAME]
            limit = window_count(len(track), segment.size)
            if limit == 0:
                self.messages.append(f"face track at frames {first}-{last} was not scored: the audio ends before it")
                continue
            plans.append(_TrackPlan(track, smooth_track(track.boxes), segment, self.lip_windows(limit),
                                    JpegRoundTrip() if self.options.jpeg_roundtrip else None))
        if not plans:
            raise InputError(f"the audio of {self.name} ends before any face track starts: nothing to score")
        return plans

    # -- scoring -------------------------------------------------------------------------------------
    def score(self, lip_feat: torch.Tensor, audio: np.ndarray, first: int, last: int) -> TrackResult:
        """Audio embeddings for the same windows, then distances and scores."""
        ev, options = self.evaluator, self.options
        aud_feat = audio_embeddings(ev.syncnet_for(self.dtype), audio, len(lip_feat), ev.device, options.batch_size)
        score = score_features(lip_feat, aud_feat, options.vshift)
        return TrackResult(first_frame=first, last_frame=last, n_windows=len(lip_feat), lse_d=score.min_dist,
                           lse_c=score.conf, offset=score.offset, confidence=score.fconfm, distances=score.mdist)


def _check_video(info: MediaInfo) -> None:
    name = info.path.name
    if info.is_image:
        raise InputError(f"{name} is a still image: SyncNet scores how lips move with speech, so give it a video "
                         "with sound")
    if not info.has_audio:
        raise InputError(f"{name} has no audio track: the lip-sync score compares the lips with the speech, so "
                         "the video needs its sound")


def _check_length(name: str, n_frames: int) -> None:
    if n_frames < MIN_FRAMES:
        raise InputError(f"{name} is too short to score: {n_frames} frames at {VIDEO_FPS} fps; SyncNet needs "
                         f"at least {MIN_FRAMES} ({MIN_FRAMES / VIDEO_FPS:.2f} s)")


def _expected_frames(info: MediaInfo) -> int | None:
    return round(info.duration * VIDEO_FPS) if info.duration else None


def evaluate(path: str | os.PathLike, options: EvalOptions | None = None, *,
             weights_dir: str | os.PathLike | None = None, device: str | None = None) -> VideoResult:
    """One-off convenience: build an evaluator and score one video (reuse a SyncNetEvaluator for many)."""
    return SyncNetEvaluator(weights_dir, device).evaluate(path, options)
