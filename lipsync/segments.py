"""Playable pieces of a video while it is being written, for streaming the result as it is made.

A :class:`Segments` object attached to a :class:`lipsync.media.VideoWriter` cuts the H.264 output into
pieces of ``seconds`` seconds: the writer forces an IDR frame at every boundary, and the encoder's
packets, copied (not encoded again), go into the current piece as well as into the output file. Each
piece gets the matching stretch of the audio from an AAC encoder of its own (audio encodes about a
hundred times faster than real time), so it plays on its own, sound included. A piece is complete
when the encoder emits the next IDR frame; it is then closed and handed to ``on_segment``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.audio.frame import AudioFrame

# Audio goes to each piece's encoder in chunks of at most this many samples.
_AUDIO_CHUNK = 1 << 16
_LAYOUTS = {1: "mono", 2: "stereo"}
AAC_BIT_RATE_PER_CHANNEL = 96_000


def aac_rate(rate: int) -> int:
    """The nearest sample rate AAC supports, preferring rates above ``rate`` (no lost treble)."""
    supported = sorted(av.codec.Codec("aac", "w").audio_rates or (rate,))
    return next((r for r in supported if r >= rate), supported[-1])


class Segments:
    """Pieces ``segment_0000.mp4``, ``segment_0001.mp4``... of ``seconds`` each, written into ``folder``;
    the first one lasts ``first_seconds`` (default ``seconds``): a short first piece goes out sooner."""

    def __init__(self, folder: Path, seconds: float, on_segment: Callable[[Path], None],
                 first_seconds: float | None = None) -> None:
        first_seconds = seconds if first_seconds is None else first_seconds
        if min(seconds, first_seconds) <= 0:
            raise ValueError(f"segment lengths must be positive, got {first_seconds} then {seconds}")
        self.folder, self.seconds, self.first_seconds = Path(folder), seconds, first_seconds
        self.on_segment = on_segment
        self.written: list[Path] = []
        self._fps: Fraction | None = None
        self._every = 0  # frames per piece
        self._first = 0  # frames of the first piece
        self._piece: _Piece | None = None
        self._video: av.video.stream.VideoStream | None = None
        self._audio: np.ndarray | None = None  # (channels, n) float32, the whole track
        self._audio_rate = 0

    def start(self, video: av.video.stream.VideoStream, fps: Fraction, audio: np.ndarray | None,
              audio_rate: int) -> None:
        """Called by the writer: its video stream (for the codec's parameters), rate and whole audio
        (planar float32 at ``audio_rate``; the pieces' AAC encoders resample it as the writer's does)."""
        self._video, self._fps, self._audio, self._audio_rate = video, fps, audio, audio_rate
        self._every = max(1, round(self.seconds * fps))
        self._first = max(1, round(self.first_seconds * fps))

    def is_boundary(self, frame_index: int) -> bool:
        """Whether this frame starts a piece (the writer makes it an IDR frame)."""
        return frame_index == 0 or (frame_index >= self._first and (frame_index - self._first) % self._every == 0)

    @staticmethod
    def copy(packet: av.Packet) -> av.Packet:
        """A copy of an encoded packet, taken before the writer's muxer consumes it."""
        copy = av.Packet(bytes(packet))
        copy.pts, copy.dts, copy.time_base, copy.is_keyframe = (packet.pts, packet.dts, packet.time_base,
                                                               packet.is_keyframe)
        return copy

    def packet(self, packet: av.Packet) -> None:
        """A copy of an encoded video packet (decode order) the writer has muxed into the output."""
        frame = round(packet.pts * packet.time_base * self._fps) if packet.pts is not None else -1
        if packet.is_keyframe and frame >= 0 and self.is_boundary(frame):
            self._finish(end_frame=frame)
            self._piece = _Piece(self.folder / f"segment_{len(self.written):04d}.mp4", frame, self)
        if self._piece is not None:
            self._piece.add(packet)

    def close(self, frames_written: int) -> None:
        """The output is complete: the last piece takes the rest (and all the remaining audio)."""
        self._finish(end_frame=frames_written, last=True)

    def _finish(self, end_frame: int, last: bool = False) -> None:
        if self._piece is None:
            return
        piece, self._piece = self._piece, None
        piece.close(end_frame, last)
        self.written.append(piece.path)
        self.on_segment(piece.path)

    def audio_between(self, start: Fraction, stop: Fraction | None) -> np.ndarray | None:
        """The audio from ``start`` to ``stop`` seconds (None: to its end)."""
        if self._audio is None:
            return None
        first = math.ceil(start * self._audio_rate)
        last = self._audio.shape[1] if stop is None else min(self._audio.shape[1], math.ceil(stop * self._audio_rate))
        return self._audio[:, first:max(first, last)]


class _Piece:
    """One piece being written: the video packets as they come, its audio when it closes."""

    def __init__(self, path: Path, start_frame: int, owner: Segments) -> None:
        self.path, self.start_frame, self.owner = path, start_frame, owner
        self.container = av.open(str(path), "w", format="mp4", container_options={"movflags": "+faststart"})
        # the output's stream parameters (SPS/PPS, size, colours), as its muxer has them once started; an
        # add_stream("h264") would open an encoder of its own, with other parameter sets
        self.stream = self.container.add_stream_from_template(owner._video)
        self.stream.time_base = Fraction(1) / owner._fps
        self.audio_stream = None
        if owner._audio is not None:
            channels = owner._audio.shape[0]
            self.audio_stream = self.container.add_stream("aac", rate=aac_rate(owner._audio_rate))
            self.audio_stream.layout = _LAYOUTS[channels]
            self.audio_stream.bit_rate = AAC_BIT_RATE_PER_CHANNEL * channels
            self.audio_stream.time_base = Fraction(1, owner._audio_rate)

    def add(self, packet: av.Packet) -> None:
        """A copied packet, its time moved to the piece's start."""
        shift = round(self.start_frame / (self.owner._fps * packet.time_base))  # in the packet's time base
        packet.pts, packet.dts = packet.pts - shift, packet.dts - shift
        packet.stream = self.stream
        self.container.mux(packet)

    def close(self, end_frame: int, last: bool) -> None:
        fps = self.owner._fps
        audio = self.owner.audio_between(self.start_frame / fps, None if last else end_frame / fps)
        if self.audio_stream is not None and audio is not None and audio.shape[1]:
            layout, rate = _LAYOUTS[audio.shape[0]], self.owner._audio_rate
            for start in range(0, audio.shape[1], _AUDIO_CHUNK):
                frame = AudioFrame.from_ndarray(np.ascontiguousarray(audio[:, start:start + _AUDIO_CHUNK]),
                                                format="fltp", layout=layout)
                frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
                self.container.mux(self.audio_stream.encode(frame))
            self.container.mux(self.audio_stream.encode(None))
        self.container.close()
