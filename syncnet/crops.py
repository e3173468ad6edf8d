"""Face-track crop geometry of syncnet_python's run_pipeline (crop_video), as pure functions.

For every frame of a track the detection box gives a half-size ``s = max(w, h) / 2`` and a centre
``(x, y)``; the three series are median-filtered over the track (kernel 13, zero-padded ends as
``scipy.signal.medfilt`` does). The crop then reaches ``s`` above the centre and ``s * (1 + 2 *
crop_scale)`` below it (so it takes in the chin and some neck), and ``s * (1 + crop_scale)`` to
each side, in a frame padded by ``int(s * (1 + 2 * crop_scale))`` pixels of grey 110 so crops near
the border stay full size; it is resized to 224x224 (OpenCV bilinear).
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import av
import cv2
import numpy as np
from scipy.signal import medfilt

from media.io import Orientation
from syncnet.constants import CROP_SIZE, VIDEO_FPS

CROP_SCALE = 0.4
SMOOTH_KERNEL = 13
PAD_VALUE = 110


def smooth_track(boxes: np.ndarray, kernel: int = SMOOTH_KERNEL) -> np.ndarray:
    """(n, 3) float64 [s, x, y] per frame from (n, 4) x1,y1,x2,y2 boxes, each column median-filtered."""
    b = np.asarray(boxes, dtype=np.float64)
    s = np.maximum(b[:, 3] - b[:, 1], b[:, 2] - b[:, 0]) / 2
    x = (b[:, 0] + b[:, 2]) / 2
    y = (b[:, 1] + b[:, 3]) / 2
    return np.stack([medfilt(v, kernel_size=kernel) for v in (s, x, y)], axis=1)


def crop_window(s: float, x: float, y: float, crop_scale: float = CROP_SCALE) -> tuple[int, int, int, int, int]:
    """(pad, row0, row1, col0, col1): the reference's slice bounds in the frame padded by ``pad``."""
    pad = int(s * (1 + 2 * crop_scale))
    my, mx = y + pad, x + pad
    return (pad, int(my - s), int(my + s * (1 + 2 * crop_scale)),
            int(mx - s * (1 + crop_scale)), int(mx + s * (1 + crop_scale)))


def crop_face(frame: np.ndarray, s: float, x: float, y: float, *, crop_scale: float = CROP_SCALE,
              size: int = CROP_SIZE) -> np.ndarray:
    """(size, size, 3) uint8 crop of ``frame`` (H, W, 3), equal to padding the frame and slicing it.

    Only the crop is materialised: the part outside the frame is filled with the pad value.
    """
    h, w = frame.shape[:2]
    pad, r0, r1, c0, c1 = crop_window(s, x, y, crop_scale)
    # numpy slicing clips the bounds to the padded frame
    r0, r1 = np.clip([r0, r1], 0, h + 2 * pad)
    c0, c1 = np.clip([c0, c1], 0, w + 2 * pad)
    if r1 <= r0 or c1 <= c0:
        return np.full((size, size, 3), PAD_VALUE, np.uint8)
    out = np.full((r1 - r0, c1 - c0, 3), PAD_VALUE, np.uint8)
    # the same window in unpadded frame coordinates, intersected with the frame
    fr0, fr1 = max(r0 - pad, 0), min(r1 - pad, h)
    fc0, fc1 = max(c0 - pad, 0), min(c1 - pad, w)
    if fr1 > fr0 and fc1 > fc0:
        out[fr0 + pad - r0:fr1 + pad - r0, fc0 + pad - c0:fc1 + pad - c0] = frame[fr0:fr1, fc0:fc1]
    return cv2.resize(out, (size, size), interpolation=cv2.INTER_LINEAR)


# `ffmpeg -i crop.avi -f image2 %06d.jpg` without -q: libavcodec's default rate control at its default
# 200 kb/s over the stream's 25 fps, i.e. about 8000 bits per frame. The quantiser therefore starts
# low and climbs within the first ~20 frames (q 4.5 -> ~25 for 224x224 crops): every crop the
# reference scores went through this, and it moves LSE-D by about 1% compared with clean crops.
IMAGE2_BIT_RATE = 200_000


# The mjpeg encoder takes full-range ("J") YUV. The ffmpeg command line converts a decoder's
# limited-range 8-bit 4:2:0 frames to it plane by plane, without touching the chroma sampling:
# luma 16..235 and chroma 16..240 (centred on 128) are stretched to 0..255 and rounded half to
# even (swscale's result for every one of the 256 values, checked against ffmpeg 5.1).
LIMITED_LUMA = (16, 235)
LIMITED_CHROMA_HALF_RANGE = 112  # 240 - 128
_LEVELS = np.arange(256, dtype=np.float64)
_FULL_LUMA = np.clip(np.rint((_LEVELS - LIMITED_LUMA[0]) * 255 / (LIMITED_LUMA[1] - LIMITED_LUMA[0])),
                     0, 255).astype(np.uint8)
_FULL_CHROMA = np.clip(np.rint((_LEVELS - 128) * 127.5 / LIMITED_CHROMA_HALF_RANGE + 128), 0, 255).astype(np.uint8)
_YUV420 = ("yuv420p", "yuvj420p")
_JPEG_RANGE = 2  # AVCOL_RANGE_JPEG


def full_range_planes(frame: av.VideoFrame) -> list[np.ndarray] | None:
    """The Y, U, V planes of an 8-bit 4:2:0 frame in full range, as ffmpeg feeds them to mjpeg; None otherwise."""
    name = frame.format.name
    if name not in _YUV420:
        return None
    full = name == "yuvj420p" or frame.color_range == _JPEG_RANGE
    planes = []
    for index, plane in enumerate(frame.planes):
        rows = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[:, :plane.width]
        planes.append(rows.copy() if full else (_FULL_LUMA if index == 0 else _FULL_CHROMA)[rows])
    return planes


class JpegRoundTrip:
    """Frames through JPEG and back, as the reference's ``ffmpeg -threads 1 -f image2`` + ``cv2.imread``.

    Encodes with FFmpeg's mjpeg encoder in-process (PyAV) with the settings the ffmpeg command line
    uses (yuvj420p, 1/25 s time base, default bit-rate control, one thread) and decodes with OpenCV.
    One instance is one ffmpeg run: the rate control state carries from frame to frame, so use a
    fresh instance per sequence (a face track's crop video, or a whole video).

    ``decoded`` takes a decoder's frame, as ffmpeg does: for 8-bit 4:2:0 video (H.264, VP9...) the
    result is then the reference's JPEG pixel for pixel. ``__call__`` takes a BGR image (a face
    crop); converting it to YUV again moves pixels by ~2 levels from what ffmpeg would have written.
    """

    def __init__(self, fps: int = VIDEO_FPS) -> None:
        self._fps = fps
        self._encoder: av.VideoCodecContext | None = None
        self._index = 0

    def _open(self, width: int, height: int) -> av.VideoCodecContext:
        enc = av.CodecContext.create("mjpeg", "w")
        enc.width, enc.height = width, height
        enc.pix_fmt = "yuvj420p"
        enc.time_base = Fraction(1, self._fps)
        enc.bit_rate = IMAGE2_BIT_RATE
        enc.thread_count = 1
        enc.open()
        return enc

    def encode(self, frame_bgr: np.ndarray) -> bytes:
        """The JPEG file ffmpeg would write for this frame (the next one of the sequence)."""
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame_bgr), format="bgr24")
        return self._encode(frame.reformat(format="yuvj420p"))

    def encode_planes(self, planes: Sequence[np.ndarray]) -> bytes:
        """The JPEG of full-range Y, U, V planes (4:2:0), the next frame of the sequence."""
        y = planes[0]
        frame = av.VideoFrame(y.shape[1], y.shape[0], "yuvj420p")
        for plane, values in zip(frame.planes, planes, strict=True):
            rows = np.zeros((plane.height, plane.line_size), np.uint8)
            rows[:, :plane.width] = values
            plane.update(rows)
        return self._encode(frame)

    def decoded(self, frame: av.VideoFrame, orientation: Orientation) -> np.ndarray:
        """A decoder's frame, turned upright, as OpenCV reads back the JPEG ffmpeg writes for it."""
        planes = full_range_planes(frame)
        if planes is None:  # other pixel formats: from BGR, like a crop
            return self(orientation.apply(frame.to_ndarray(format="bgr24")))
        # ffmpeg turns a rotated video upright plane by plane before converting it
        return self._read(self.encode_planes([orientation.apply(p) for p in planes]))

    def _encode(self, frame: av.VideoFrame) -> bytes:
        w, h = frame.width, frame.height
        if self._encoder is None:
            self._encoder = self._open(w, h)
        elif (self._encoder.width, self._encoder.height) != (w, h):
            raise ValueError(f"frame size changed from {self._encoder.width}x{self._encoder.height} to {w}x{h}")
        frame.pts = self._index
        frame.time_base = Fraction(1, self._fps)
        self._index += 1
        packets = self._encoder.encode(frame)
        if len(packets) != 1:  # intra-only codec without delay: one packet per frame
            raise RuntimeError(f"mjpeg encoder returned {len(packets)} packets for one frame")
        return bytes(packets[0])

    def __call__(self, frame_bgr: np.ndarray) -> np.ndarray:
        """The frame as OpenCV reads back the JPEG ffmpeg would write for it."""
        return self._read(self.encode(frame_bgr))

    @staticmethod
    def _read(jpeg: bytes) -> np.ndarray:
        decoded = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        if decoded is None:
            raise RuntimeError("OpenCV could not decode a JPEG written by FFmpeg's mjpeg encoder")
        return decoded
