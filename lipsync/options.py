"""Options of a lip-sync run: one frozen dataclass, validated in one place.

The CLI, the app and the tests all build this object. Defaults and meanings follow the original
``inference.py``; the options past ``fps`` are additions.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

from lipsync.errors import InputError

Box = tuple[int, int, int, int]  # (top, bottom, left, right), as inference.py's --box/--crop/--pads


@dataclass(frozen=True)
class LipSyncOptions:
    checkpoint: str = "wav2lip_gan"  # "wav2lip", "wav2lip_gan" or a checkpoint file path
    pads: Box = (0, 10, 0, 0)  # grow the detected box (top, bottom, left, right); bottom 10 takes in the chin
    resize_factor: int = 1  # shrink frames to (w // f, h // f) before anything else; the output has that size
    crop: Box = (0, -1, 0, -1)  # keep only rows top:bottom, cols left:right (-1 = to the edge), after resize/rotate
    box: Box | None = None  # fixed face box (top, bottom, left, right): skips detection
    rotate: bool = False  # turn frames 90 degrees clockwise (after resize)
    nosmooth: bool = False  # no temporal smoothing of boxes (T=5 window)
    static: bool = False  # use only the first frame (always on for a still image)
    fps: float = 25.0  # frame rate of the output for a still image
    face_det_batch_size: int = 16
    wav2lip_batch_size: int = 128
    # additions
    loop: Literal["forward", "pingpong"] = "forward"  # how frames repeat when the audio outlasts the video
    strict: bool = False  # stop with an error on any frame without a face, as the original did
    face_index: int = 0  # which face when there are several: 0 = largest, 1 = next largest...
    face_point: tuple[float, float] | None = None  # (x, y) in output-frame pixels: the face under/nearest it
    blend: Literal["none", "feather"] = "none"  # "none" is the original hard paste the published scores used
    detection: Literal["fast", "original"] = "fast"
    detect_every: int = 5  # fast mode: run the detector on every k-th frame, interpolate boxes between
    detect_size: int = 320  # fast mode: longest side of the frame the detector sees (pixels)
    max_gap: int = 25  # bridge up to this many frames without a face by interpolating boxes
    cache_detections: bool = True

    def __post_init__(self) -> None:
        def need(cond: bool, message: str) -> None:
            if not cond:
                raise InputError(message)

        for name in ("pads", "crop"):
            value = getattr(self, name)
            need(len(value) == 4, f"{name} needs four numbers: top bottom left right")
            object.__setattr__(self, name, tuple(int(v) for v in value))
        if self.box is not None:
            need(len(self.box) == 4, "box needs four numbers: top bottom left right")
            top, bottom, left, right = (int(v) for v in self.box)
            need(0 <= top < bottom and 0 <= left < right,
                 f"box {self.box} is empty: give top < bottom and left < right, in pixels")
            object.__setattr__(self, "box", (top, bottom, left, right))
        if self.face_point is not None:
            object.__setattr__(self, "face_point", (float(self.face_point[0]), float(self.face_point[1])))
        need(self.resize_factor >= 1, "resize_factor must be 1 or more")
        need(self.fps > 0, "fps must be positive")
        need(self.face_det_batch_size >= 1 and self.wav2lip_batch_size >= 1, "batch sizes must be 1 or more")
        need(self.loop in ("forward", "pingpong"), f"loop must be 'forward' or 'pingpong', not {self.loop!r}")
        need(self.blend in ("none", "feather"), f"blend must be 'none' or 'feather', not {self.blend!r}")
        need(self.detection in ("fast", "original"),
             f"detection must be 'fast' or 'original', not {self.detection!r}")
        need(self.face_index >= 0, "face_index counts from 0 (the largest face)")
        need(self.detect_every >= 1 and self.detect_size >= 64, "detect_every >= 1 and detect_size >= 64")
        need(self.max_gap >= 0, "max_gap must be 0 or more")

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]
