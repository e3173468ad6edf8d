"""Playable pieces of a video while it is being written, for streaming the result as it is made.

A :class:`Segments` object attached to a :class:`media.io.VideoWriter` cuts the H.264 output into
pieces of ``seconds`` seconds: the writer forces an IDR frame at every boundary, and the encoder's
packets, copied (not encoded again), go into the current piece as well as into the output file. A
piece is complete when the encoder emits the next IDR frame; it is then closed and handed to
``on_segment``. The encoder holds about 17 frames back (look-ahead and threads), so the first piece
has an encoder of its own with the same settings (hence the same parameter sets), flushed as soon as
its last frame is written: it goes out as soon as its frames are made. Each piece gets the matching
stretch of the audio from an AAC encoder of its own (audio encodes about a hundred times faster than
real time), so it plays on its own, sound included.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.frame import VideoFrame

from media import codecs


class Segments:
    """Pieces ``segment_0000.mp4``, ``segment_0001.mp4``... of ``seconds`` each, written into ``folder``;
    the first one lasts ``first_seconds`` (default ``seconds``): a short first piece goes out sooner.
    When the video is exactly as long as the first piece, that piece ends with the video's frames
    (audio past them is in the output file only)."""

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
        self._head: _Piece | None = None  # the first piece, with its own encoder, until it is complete
        self._piece: _Piece | None = None  # the piece taking the output encoder's packets
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
        self._head = _Piece(self._next_path(), 0, self, own_encoder=True)

    def is_boundary(self, frame_index: int) -> bool:
        """Whether this frame starts a piece (the writer makes it an IDR frame)."""
        return frame_index == 0 or (frame_index >= self._first and (frame_index - self._first) % self._every == 0)

    def frame(self, index: int, frame: VideoFrame) -> None:
        """A frame the writer has given its encoder (yuv420p, its pts the frame's index)."""
        if self._head is None or index >= self._first:
            return
        self._head.encode(frame)
        if index == self._first - 1:
            self._finish_head(end_frame=self._first, last=False)

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
        if frame < self._first:
            return  # the first piece's frames: encoded on their own
        if packet.is_keyframe and self.is_boundary(frame):
            self._finish(end_frame=frame)
            self._piece = _Piece(self._next_path(), frame, self)
        if self._piece is not None:
            self._piece.add(packet)

    def close(self, frames_written: int) -> None:
        """The output is complete: the last piece takes the rest (and all the remaining audio)."""
        if self._head is not None:
            self._finish_head(end_frame=frames_written, last=True)
        self._finish(end_frame=frames_written, last=True)

    def _next_path(self) -> Path:
        return self.folder / f"segment_{len(self.written):04d}.mp4"

    def _finish_head(self, end_frame: int, last: bool) -> None:
        head, self._head = self._head, None
        self._hand_over(head, end_frame, last)

    def _finish(self, end_frame: int, last: bool = False) -> None:
        if self._piece is not None:
            piece, self._piece = self._piece, None
            self._hand_over(piece, end_frame, last)

    def _hand_over(self, piece: _Piece, end_frame: int, last: bool) -> None:
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
    """One piece being written: its video packets as they come (from the output's encoder, or encoded
    here with the same settings), its audio when it closes."""

    def __init__(self, path: Path, start_frame: int, owner: Segments, *, own_encoder: bool = False) -> None:
        self.path, self.start_frame, self.owner = path, start_frame, owner
        self.container = av.open(str(path), "w", format="mp4", container_options={"movflags": "+faststart"})
        video = owner._video
        if own_encoder:
            self.stream = codecs.add_h264(self.container, owner._fps, video.width, video.height)
        else:
            # the output's stream parameters (SPS/PPS, size, colours), as its muxer has them once started;
            # an add_stream("h264") would open an encoder of its own, with other parameter sets
            self.stream = self.container.add_stream_from_template(video)
            self.stream.time_base = Fraction(1) / owner._fps
        self.own_encoder = own_encoder
        self.audio_stream = None
        if owner._audio is not None:
            self.audio_stream = codecs.add_aac(self.container, owner._audio_rate, owner._audio.shape[0])

    def encode(self, frame: VideoFrame) -> None:
        """One of this piece's frames, encoded here (the first piece's, which starts at frame 0)."""
        self.container.mux(self.stream.encode(frame))

    def add(self, packet: av.Packet) -> None:
        """A copied packet, its time moved to the piece's start."""
        shift = round(self.start_frame / (self.owner._fps * packet.time_base))  # in the packet's time base
        packet.pts, packet.dts = packet.pts - shift, packet.dts - shift
        packet.stream = self.stream
        self.container.mux(packet)

    def close(self, end_frame: int, last: bool) -> None:
        if self.own_encoder:
            self.container.mux(self.stream.encode(None))
        fps = self.owner._fps
        audio = self.owner.audio_between(self.start_frame / fps, None if last else end_frame / fps)
        if self.audio_stream is not None and audio is not None and audio.shape[1]:
            for frame in codecs.audio_frames(audio, self.owner._audio_rate):
                self.container.mux(self.audio_stream.encode(frame))
            self.container.mux(self.audio_stream.encode(None))
        self.container.close()
