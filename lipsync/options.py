"""Options of a lip-sync run: one frozen dataclass, declared and validated in one place.

Each field carries its help, UI label, choices and bounds (see :mod:`common.optspec`); the CLI
flags, the app's Advanced panel and the ``/lipsync`` API parameters are derived from them. Defaults
and meanings follow the original ``inference.py``; the options past ``wav2lip_batch_size`` are additions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from common.errors import InputError
from common.optspec import check_bounds, option
from common.precision import Precision
from face_detection.boxes import WAV2LIP_PADS

Sides = tuple[int, int, int, int]  # (top, bottom, left, right), as inference.py's --box/--crop/--pads
SIDES = ("top", "bottom", "left", "right")

CHECKPOINTS = ("wav2lip_gan", "wav2lip")
FULL_FRAME: Sides = (0, -1, 0, -1)  # --crop default: -1 = to the edge
DEFAULT_FPS = 25.0  # inference.py --fps, the frame rate given to a still image
MAX_BATCH = 1024  # batch sizes above this only risk memory: they are halved on out-of-memory anyway


@dataclass(frozen=True)
class LipSyncOptions:
    checkpoint: str = option(
        "wav2lip_gan", "Generator weights: wav2lip_gan (sharper) or wav2lip (more accurate sync); the CLI also "
        "takes a checkpoint file.", "Checkpoint", choices=CHECKPOINTS, open_choices=True,
        flags=("--checkpoint_path",), group="model")
    pads: Sides = option(
        WAV2LIP_PADS, "Pixels to grow the detected face box by (top bottom left right); the bottom 10 take in "
        "the chin.", "Pad", parts=SIDES, stem="pad", group="pads")
    resize_factor: int = option(
        1, "Shrink frames to (width // f, height // f) before anything else; the output has that size.",
        "Resize factor", minimum=1, maximum=16, group="frames")
    crop: Sides = option(
        FULL_FRAME, "Keep only rows top:bottom and columns left:right (-1 = to the edge), after resize and "
        "rotate.", "Crop", parts=SIDES, minimum=-1, group="crop", advanced=True)
    box: Sides | None = option(
        None, "Fixed face box in pixels (top bottom left right): skips face detection.", "Fixed face box",
        minimum=0, parts=SIDES, group="box")
    rotate: bool = option(False, "Turn frames 90 degrees clockwise (after resize).", "Rotate 90° clockwise",
                          group="flags", advanced=True)
    nosmooth: bool = option(False, "Do not smooth face boxes over time (5-frame window).",
                            "No smoothing of face boxes", group="flags")
    static: bool = option(False, "Use only the first frame of the video (always on for a still image).",
                          "Static: first frame only", group="flags", advanced=True)
    fps: float = option(DEFAULT_FPS, "Frame rate of the output for a still image, in frames per second.",
                        "FPS for a photo", minimum=1, maximum=120, group="frames")
    face_det_batch_size: int = option(16, "Frames per face-detector batch (halved on out-of-memory).",
                                      "Detector batch", minimum=1, maximum=MAX_BATCH, group="frames")
    wav2lip_batch_size: int = option(128, "Faces per generator batch (halved on out-of-memory).",
                                     "Generator batch", minimum=1, maximum=MAX_BATCH, group="frames")
    loop: Literal["forward", "pingpong"] = option(
        "forward", "How frames repeat when the audio outlasts the video; pingpong hides the jump.", "Loop",
        group="look")
    strict: bool = option(False, "Stop with an error on any frame without a face, as the original did, "
                          "instead of leaving it unchanged.", "Strict: fail on frames without a face",
                          group="flags")
    face_index: int = option(0, "Which face when there are several: 0 = largest, 1 = next largest...",
                             "Face index", minimum=0, maximum=100, group="box")
    face_point: tuple[float, float] | None = option(
        None, "A pixel (x y) of the output frame: use the face under or nearest to it instead of face_index.",
        "Face point", minimum=0, parts=("x", "y"), group="box")
    blend: Literal["none", "feather"] = option(
        "none", "How the mouth is pasted: none (the original hard paste, used for the published scores) or "
        "feather (soft edges).", "Blend", group="look")
    precision: Precision = option(
        "auto", "Number format of the networks: fp32 runs the published models exactly; bf16/fp16 are faster "
        "where the hardware has them; auto picks bf16 (or fp16) on a GPU, bf16 on a CPU with native bf16, else fp32.",
        "Precision", group="model")
    detection: Literal["fast", "original"] = option(
        "fast", "fast: detect on shrunk key frames and interpolate; original: every frame at full size, "
        "as inference.py (slow).", "Face detection", group="model")
    detect_every: int = option(5, "Fast detection: run the detector on every k-th frame (and the last), "
                               "interpolating boxes in between.", "Detect every k frames", minimum=1,
                               group="detection", advanced=True)
    detect_size: int = option(320, "Fast detection: longest side in pixels of the frames the detector sees.",
                              "Detector frame size", minimum=64, group="detection", advanced=True)
    max_gap: int = option(25, "Bridge up to this many frames without a face by interpolating boxes.",
                          "Bridge gaps of up to (frames)", minimum=0, group="detection", advanced=True)
    cache_detections: bool = option(True, "Reuse face detections of the same video and settings, and store "
                                    "them.", "Cache face detections", negate="--no-cache",
                                    negate_help="Do not reuse or store face detections.", group="detection",
                                    advanced=True)
    silence: Literal["animate", "keep"] = option(
        "animate", "Where the speech is silent: animate (Wav2Lip on every frame, as the original) or keep (show "
        "the input frames unchanged, with a short cross-fade; found by voice activity detection).",
        "Silent stretches", group="look")

    def __post_init__(self) -> None:
        for name in ("pads", "crop", "box"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(int(v) for v in value))
        if self.face_point is not None:
            object.__setattr__(self, "face_point", tuple(float(v) for v in self.face_point))
        check_bounds(self)
        if self.box is not None:
            top, bottom, left, right = self.box
            if not (top < bottom and left < right):
                raise InputError(f"box {self.box} is empty: give top < bottom and left < right, in pixels")
