"""From per-frame detections to one face box per frame (pure functions, no files, no models).

Detections come as ``{frame_index: (n, 5) [x1, y1, x2, y2, score]}`` for the frames the detector saw
(every frame in the "original" preset, key frames in the fast one). The result is a ``(m, 4)`` float
array of x1, y1, x2, y2 with NaN rows where there is no face.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from common.errors import InputError
from face_detection.boxes import WAV2LIP_SMOOTH_WINDOW, choose_face, fill_gaps, pad_boxes, smooth_boxes, true_runs
from face_detection.tracking import iou
from lipsync.options import LipSyncOptions

# Below this overlap with the previous frame's box, a detection is taken to be another face (or the
# face has jumped, e.g. at a cut), and the face is chosen again by the user's rule.
SAME_FACE_IOU = 0.3


def needs_refinement(before: np.ndarray, after: np.ndarray) -> bool:
    """Whether the frames between two key frames must be detected too.

    They must when a face appears or disappears between them, or when no face of one key frame
    overlaps a face of the other by IoU 0.5 (it moved too far for a straight-line interpolation).
    """
    if len(before) == 0 or len(after) == 0:
        return len(before) != len(after)
    best = max(iou(a[:4], b[:4]) for a in before for b in after)
    return best < 0.5


def select_face(dets: Mapping[int, np.ndarray], n_frames: int, *, face_index: int = 0,
                face_point: tuple[float, float] | None = None, top_score: bool = False) -> np.ndarray:
    """One box per detected frame (NaN where none), following the chosen face through the video.

    The first frame with faces picks the face (``top_score``: the detector's best, as inference.py;
    otherwise by ``face_point`` or the ``face_index``-th largest). Later frames keep the detection
    overlapping the previous box most, and choose again by the same rule when none overlaps.
    """
    boxes = np.full((n_frames, 4), np.nan)
    previous: np.ndarray | None = None
    for i in sorted(dets):
        found = np.asarray(dets[i], dtype=np.float64).reshape(-1, 5)
        if len(found) == 0:
            continue
        box = None
        if top_score and face_point is None:
            box = found[0, :4]
        else:
            if previous is not None:
                overlaps = np.array([iou(previous, d[:4]) for d in found])
                if overlaps.max() >= SAME_FACE_IOU:
                    box = found[int(overlaps.argmax()), :4]
            if box is None:
                box = choose_face(found, index=face_index, point=face_point)
        if box is None:  # face_index larger than the number of faces here
            continue
        boxes[i] = box
        previous = np.asarray(box, dtype=np.float64)
    return boxes


def interpolate_undetected(boxes: np.ndarray, detected: Iterable[int]) -> np.ndarray:
    """Fill frames the detector did not look at by interpolating between the detected frames around them.

    Only where both neighbouring detected frames have a face; elsewhere the rows stay NaN.
    """
    out = boxes.copy()
    seen = np.array(sorted(detected), dtype=int)
    if len(seen) < 2:
        return out
    for a, b in zip(seen[:-1], seen[1:], strict=True):
        if b - a < 2 or np.isnan(boxes[a, 0]) or np.isnan(boxes[b, 0]):
            continue
        t = (np.arange(a + 1, b) - a)[:, None] / (b - a)
        out[a + 1:b] = boxes[a] * (1 - t) + boxes[b] * t
    return out


def finalize_boxes(boxes: np.ndarray, *, pads: tuple[int, int, int, int], frame_hw: tuple[int, int],
                   max_gap: int, smooth: bool) -> tuple[np.ndarray, np.ndarray]:
    """Bridge short gaps, pad, clamp and smooth, as inference.py does per face run.

    Returns ``(boxes (m, 4) int x1 y1 x2 y2, found (m,) bool)``; rows where ``found`` is False are 0.
    """
    filled, found = fill_gaps(boxes, max_gap)
    out = np.zeros((len(boxes), 4), dtype=np.int64)
    if not found.any():
        return out, found
    # inference.py pads the detector's integer rects and smooths the padded rects
    rects = np.zeros((len(boxes), 4), dtype=np.int64)
    rects[found] = pad_boxes(np.floor(np.maximum(filled[found], 0)).astype(np.int64), pads, frame_hw)
    for first, last in true_runs(found):  # runs of frames with a face
        run = rects[first:last + 1]
        out[first:last + 1] = smooth_boxes(run, WAV2LIP_SMOOTH_WINDOW) if smooth else run
    usable = (out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])
    return out, found & usable


def describe_ranges(ranges: list[tuple[int, int]], fps: float, limit: int = 5) -> str:
    """'frames 120-180 (4.8-7.2 s), frames 300-301 (12.0-12.0 s)' (at most ``limit``, then '... and N more')."""
    parts = [f"frames {a}-{b} ({a / fps:.1f}-{(b + 1) / fps:.1f} s)" for a, b in ranges[:limit]]
    if len(ranges) > limit:
        parts.append(f"and {len(ranges) - limit} more")
    return ", ".join(parts)


def fixed_boxes(box: tuple[int, int, int, int], frame_hw: tuple[int, int], n_frames: int) -> np.ndarray:
    """A user's fixed box (top, bottom, left, right) as ``(n_frames, 4)`` int x1 y1 x2 y2, clamped to the frame."""
    top, bottom, left, right = box
    h, w = frame_hw
    rect = np.array([min(left, w), min(top, h), min(right, w), min(bottom, h)], dtype=np.int64)
    if rect[2] <= rect[0] or rect[3] <= rect[1]:
        raise InputError(f"box {box} lies outside the {w}x{h} frame: give top bottom left right "
                         "in pixels of the (resized/cropped) frame")
    return np.tile(rect, (n_frames, 1))


def chosen_boxes(dets: Mapping[int, np.ndarray], n_frames: int, options: LipSyncOptions) -> np.ndarray:
    """The chosen face's detected box per frame, interpolated between key frames (fast preset): ``(n, 4)``
    float, NaN where there is no face. Frame i depends only on the detections up to the next one seen."""
    boxes = select_face(dets, n_frames, face_index=options.face_index, face_point=options.face_point,
                        top_score=options.detection == "original" and options.face_index == 0)
    if options.detection == "fast":
        boxes = interpolate_undetected(boxes, dets.keys())
    return boxes


def boxes_from_detections(dets: Mapping[int, np.ndarray], n_frames: int, options: LipSyncOptions,
                          frame_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The chosen face's box in every frame: ``(boxes (n, 4) int x1 y1 x2 y2, found (n,) bool)``.

    Picks the face by the options' rule, interpolates the frames the fast preset did not look at,
    then bridges, pads and smooths as ``finalize_boxes``.
    """
    return finalize_boxes(chosen_boxes(dets, n_frames, options), pads=options.pads, frame_hw=frame_hw,
                          max_gap=options.max_gap, smooth=not options.nosmooth)


def smooth_window(options: LipSyncOptions) -> int:
    """How many frames one output box averages (Wav2Lip's forward smoothing; 1 without it)."""
    return 1 if options.nosmooth else WAV2LIP_SMOOTH_WINDOW


def lookahead(options: LipSyncOptions) -> int:
    """How many frames past frame i the detections must reach before i's box is final, when every frame
    has a face: to the next key frame (interpolation, fast preset) and the rest of the smoothing window.
    A gap without a face at the end of the detected frames holds more back (see ``prefix_boxes``)."""
    interpolation = options.detect_every if options.detection == "fast" else 0
    return interpolation + smooth_window(options) - 1


def prefix_boxes(dets: Mapping[int, np.ndarray], detected: int, n_frames: int, options: LipSyncOptions,
                 frame_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, int]:
    """Boxes from the detections of the first ``detected`` of ``n_frames`` frames (the frames the
    detector saw among them, up to the last): ``(boxes, found, final)``, where the first ``final`` rows
    are what ``boxes_from_detections`` gives for the whole video, whatever the later frames hold.

    Frame i's chosen box depends only on frames up to i (face choice) and the next frame seen
    (interpolation), so every frame of the prefix has its final chosen box. Gap bridging then decides a
    run of frames without a face once the run has ended, or is known to start at frame 0, or is longer
    than ``max_gap``: only a trailing run not yet decided is open. Smoothing averages each box with the
    ``smooth_window - 1`` next ones of its run, so a box is final once those are.
    """
    detected = min(detected, n_frames)
    part = {i: d for i, d in dets.items() if i < detected}
    chosen = chosen_boxes(part, detected, options)
    boxes, found = finalize_boxes(chosen, pads=options.pads, frame_hw=frame_hw, max_gap=options.max_gap,
                                  smooth=not options.nosmooth)
    if detected >= n_frames:
        return boxes, found, n_frames
    decided = detected
    missing = np.isnan(chosen[:, 0])
    if detected and missing[-1]:
        first = true_runs(missing)[-1][0]
        if first > 0 and detected - first <= options.max_gap:
            decided = first
    return boxes, found, max(0, decided - smooth_window(options) + 1)
