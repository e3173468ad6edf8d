"""Linking per-frame face detections into face tracks, as syncnet_python's ``run_pipeline.py`` (pure numpy).

``track_shot`` there is greedy: a track starts at the first unused detection (frame order, then
detector order), and takes, frame by frame, the first unused detection whose IoU with the track's
last box exceeds 0.5, as long as it comes at most ``num_failed_det`` frames after that last box.
Tracks with more than ``min_track`` detections are interpolated linearly over every frame of their
range and kept if their mean width or mean height exceeds ``min_face_size``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# run_pipeline.py defaults (at 25 fps): iouThres, --num_failed_det, --min_track, --min_face_size
TRACK_IOU_THRESHOLD = 0.5
MAX_MISSED_FRAMES = 25  # 1 s
MIN_TRACK_DETECTIONS = 100  # 4 s
MIN_FACE_SIZE = 100  # px


@dataclass(frozen=True, eq=False)
class Track:
    """One face through consecutive frames."""

    frames: np.ndarray  # (n,) int64, first..last frame, consecutive
    boxes: np.ndarray  # (n, 4) float64 x1, y1, x2, y2; rows between detections interpolated
    detected: np.ndarray | None = None  # (n,) bool, True where the detector found it (link_tracks sets it)

    def __len__(self) -> int:
        return len(self.frames)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of boxes (..., 4) x1, y1, x2, y2, broadcast; plain widths (no +1).

    ``iou(boxes[:, None], others[None])`` gives the pairwise matrix. Boxes without area give 0.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    w = np.maximum(0.0, np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]))
    h = np.maximum(0.0, np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]))
    inter = w * h
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def link_tracks(dets_per_frame: Sequence[np.ndarray], iou_threshold: float = TRACK_IOU_THRESHOLD,
                max_gap: int = MAX_MISSED_FRAMES, min_track: int = MIN_TRACK_DETECTIONS,
                min_face_size: float = MIN_FACE_SIZE, *, start_frame: int = 0) -> list[Track]:
    """Face tracks from per-frame detections ``dets_per_frame[i]`` (n_i, 4 or 5) of frame ``start_frame + i``.

    ``max_gap``: a detection may join a track up to this many frames after the track's last
    detection. A track is kept when it has MORE than ``min_track`` detections and
    ``max(mean width, mean height) > min_face_size`` over its interpolated boxes (the reference's
    "mean box side"). Tracks come in the order they were started (by first frame).

    One deliberate difference: the reference removes items from a list while iterating over it, so
    after a detection joins a track the next detection of that frame is not looked at in that pass.
    Here a track takes at most one detection per frame and every other one stays for later passes.
    Both agree whenever a frame's detections overlap each other by IoU <= ``iou_threshold`` (always
    after the detector's final NMS at 0.1).
    """
    frames = [_as_boxes(d) for d in dets_per_frame]
    unused = [np.ones(len(d), dtype=bool) for d in frames]
    tracks: list[Track] = []
    first = 0  # frames before this one have no unused detections left
    while True:
        while first < len(frames) and not unused[first].any():
            first += 1
        if first == len(frames):
            break
        j = int(np.flatnonzero(unused[first])[0])
        unused[first][j] = False
        members = [(first, frames[first][j])]
        for f in range(first + 1, len(frames)):
            last_frame, last_box = members[-1]
            if f - last_frame > max_gap:
                break
            candidates = np.flatnonzero(unused[f])
            if len(candidates) == 0:
                continue
            matches = candidates[iou(frames[f][candidates], last_box) > iou_threshold]
            if len(matches):
                unused[f][matches[0]] = False
                members.append((f, frames[f][matches[0]]))
        if len(members) <= min_track:
            continue
        track = _interpolate(members, start_frame)
        widths = track.boxes[:, 2] - track.boxes[:, 0]
        heights = track.boxes[:, 3] - track.boxes[:, 1]
        if max(widths.mean(), heights.mean()) > min_face_size:
            tracks.append(track)
    return tracks


def _as_boxes(dets: np.ndarray) -> np.ndarray:
    """(n, 4 or 5) detections, or an empty list, -> (n, 4) float64 boxes."""
    arr = np.asarray(dets, dtype=np.float64)
    return np.zeros((0, 4)) if arr.size == 0 else np.atleast_2d(arr)[:, :4]


def _interpolate(members: list[tuple[int, np.ndarray]], start_frame: int) -> Track:
    """Boxes for every frame from the first to the last detection, linear in between."""
    known = np.array([f for f, _ in members], dtype=np.int64)
    boxes = np.stack([b for _, b in members])
    frames = np.arange(known[0], known[-1] + 1)
    filled = np.stack([np.interp(frames, known, boxes[:, k]) for k in range(4)], axis=1)
    detected = np.zeros(len(frames), dtype=bool)
    detected[known - known[0]] = True
    return Track(frames=frames + start_frame, boxes=filled, detected=detected)
