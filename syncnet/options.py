"""How to score a video: one frozen dataclass, declared and validated in one place.

Each field carries its help, UI label and bounds (see :mod:`common.optspec`); the ``python -m
syncnet`` flags, the app's Evaluate tab, the ``/evaluate`` API parameters and the scoring options
of ``/lipsync`` are derived from them. The defaults reproduce syncnet_python's real-video pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from common.optspec import check_bounds, option
from common.precision import Precision
from face_detection.tracking import MAX_MISSED_FRAMES, MIN_FACE_SIZE, MIN_TRACK_DETECTIONS
from syncnet.constants import WINDOW_FRAMES
from syncnet.crops import CROP_SCALE

Mode = Literal["tracks", "whole-frame"]
MODES: tuple[str, ...] = ("tracks", "whole-frame")

MIN_TRACK = MIN_TRACK_DETECTIONS  # run_pipeline.py --min_track: 100 frames (4 s)
FACEDET_SCALE = 0.25  # run_pipeline.py --facedet_scale: frames are shrunk to a quarter before S3FD
# a track needs at least one window: 5 frames plus the one the reference leaves unused
MIN_FRAMES = WINDOW_FRAMES + 1
VSHIFT = 15  # run_syncnet.py --vshift: offsets tried, -15..+15 frames (±0.6 s)
SYNCNET_BATCH = 20  # run_syncnet.py --batch_size (the result does not depend on it)
DETECT_BATCH = 16  # frames handed to the face detector at once (it caps the batch by pixels on CPU)


@dataclass(frozen=True)
class EvalOptions:
    """How to score a video. The defaults reproduce the reference's real-video pipeline."""

    mode: Mode = option(
        "tracks", "tracks: detect and track faces, as syncnet_python's run_pipeline.py; whole-frame: the frames "
        "are already face crops, as the LRS2 script.", "Mode", group="main")
    min_track: int = option(
        MIN_TRACK, "Shots need at least, face tracks more than, this many frames at 25 fps (the reference's 100 = "
        "4 s); lower it for short clips (scores from under ~50 frames are noisy).",
        "Shortest scored face track (frames)", minimum=MIN_FRAMES - 1, group="main")
    detect_every: int = option(
        1, "Detect faces on every k-th frame (and the last) and interpolate the boxes: about k times faster "
        "detection; the reference is 1.", "Detect faces every k frames", minimum=1, maximum=MAX_MISSED_FRAMES,
        group="main")
    detect_at_face_size: bool = option(
        True, "With detect_every above 1: once a key frame has faces, shrink later key frames to the size those "
        "faces allow (32 px on their shorter side; a key frame that loses a face there is detected again at the "
        "detector scale): faster detection, boxes within a pixel or two. With detect_every 1 (the reference) "
        "every frame is detected at the detector scale.", "Detect at the faces' size (with k above 1)",
        negate="--no-detect-at-face-size", negate_help="With detect_every above 1, detect every key frame at "
        "the detector scale too.", group="more", advanced=True)
    facedet_scale: float = option(FACEDET_SCALE, "Scale of the frames the face detector sees (the reference's "
                                  "0.25).", "Detector scale", minimum=0.01, maximum=1, group="more", advanced=True)
    jpeg_roundtrip: bool = option(
        True, "Read frames back through JPEG as the reference pipeline does (comparable numbers); off scores "
        "the decoded frames directly, which changes the numbers slightly.",
        "JPEG round trip, as the reference (comparable numbers)", negate="--no-jpeg-roundtrip",
        negate_help="Score the decoded frames directly instead of through JPEG as the reference does (the "
        "numbers then differ slightly from published ones).", group="main")
    min_face_size: float = option(MIN_FACE_SIZE, "Mean face box side in pixels a track must exceed.",
                                  "Smallest face (px)", minimum=0, group="more", advanced=True)
    crop_scale: float = option(CROP_SCALE, "How far the lip crop reaches beyond the face box (the reference's "
                               "0.4).", "Crop scale", minimum=0, maximum=2, group="more", advanced=True)
    vshift: int = option(VSHIFT, "Largest audio-video offset tried, in frames either way.", "Offsets tried (±frames)",
                         minimum=1, maximum=100, group="more", advanced=True)
    precision: Precision = option(
        "fp32", "Number format of the networks: fp32 (default) gives numbers comparable with syncnet_python's; "
        "auto runs bf16/fp16 where the hardware has them (faster; moves the scores slightly, see the README).",
        "Precision", group="more", advanced=True)
    batch_size: int = option(SYNCNET_BATCH, "SyncNet windows per forward pass.", "SyncNet batch", minimum=1,
                             maximum=1024, group="batch", advanced=True)
    detect_batch_size: int = option(DETECT_BATCH, "Frames per face-detector batch.", "Detector batch", minimum=1,
                                    maximum=1024, group="batch", advanced=True)

    def __post_init__(self) -> None:
        check_bounds(self)

    @property
    def face_sized_key_frames(self) -> bool:
        """Whether key frames after the first with faces are detected at the faces' size: only when not
        every frame is detected (``detect_every`` above 1), the reference's every frame never is."""
        return self.detect_at_face_size and self.detect_every > 1


# The checkpoints a scoring command takes, flag: (default, help), for the single-video and the batch
# command alike (common.cli.add_model_arguments)
CHECKPOINTS = {"syncnet": ("syncnet_v2", "SyncNet checkpoint (syncnet_v2.model)"),
               "detector": ("sfd_face", "face detector checkpoint (sfd_face.pth)")}
