"""Face tracks of a video as syncnet_python's run_pipeline.py finds them, streamed.

:func:`detect_pass` decodes the video once at 25 fps and keeps, per frame, the face detections (on
every frame, or on key frames only) and the shot-change score. :func:`select_tracks` links the
detections into tracks within each shot and keeps those the reference would score, saying why
the others were not.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from common.errors import NoFaceError
from common.progress import counted
from face_detection.detector import MIN_SIDE, FaceDetector, scaled_size
from face_detection.keyframes import face_sized_reduction, lost_faces, mark_key_frames
from face_detection.tracking import MAX_MISSED_FRAMES, Track, link_tracks
from syncnet import scenes
from syncnet.constants import VIDEO_FPS
from syncnet.options import MIN_FRAMES, EvalOptions


def check_detectable(name: str, width: int, height: int, scale: float) -> None:
    """NoFaceError, saying what to change, when frames this size shrink below what the detector runs on."""
    least = MIN_SIDE["sfd_face"]
    seen = scaled_size(width, height, scale)
    if min(seen) >= least:
        return
    if min(width, height) < least:
        fix = "score the whole frames with --mode whole-frame instead"
    else:
        # the smallest scale (in hundredths, as the option is usually given) that keeps `least` px
        needed = next(k / 100 for k in range(1, 101) if min(scaled_size(width, height, k / 100)) >= least)
        fix = f"set --facedet-scale to at least {needed:g}, or score the whole frames with --mode whole-frame"
    raise NoFaceError(
        f"no face can be found in {name}: its frames are {width}x{height} px, {seen[0]}x{seen[1]} px at the "
        f"detector scale {scale:g}, and the face detector needs at least {least} px on each side: {fix}")


def detect_pass(frames: Iterable[np.ndarray], detector: FaceDetector, options: EvalOptions, *,
                total: int | None = None, progress: bool = True) -> tuple[list[np.ndarray], list[float]]:
    """Faces on every ``detect_every``-th frame (and the last) and the scene-change score of every frame.

    With ``options.face_sized_key_frames``, key frames after the first with faces are shrunk further, as
    far as its faces allow (``face_detection.keyframes.face_sized_reduction``); one that lost a face there
    (``face_detection.keyframes.lost_faces``) is detected again at ``facedet_scale``.
    """
    empty = np.zeros((0, 5), np.float32)
    dets: list[np.ndarray] = []
    scene_scores: list[float] = []
    pending: list[tuple[int, np.ndarray]] = []
    scorer: scenes.ContentScorer | None = None
    # the key frames' further shrink: 1 without face-sized key frames, None until a key frame has faces
    reduce: float | None = None if options.face_sized_key_frames else 1.0
    before = 0  # faces on the key frame before the pending ones

    def flush() -> None:
        nonlocal reduce, before
        images = [f for _, f in pending]
        found = detector.detect(images, scale=options.facedet_scale * (reduce or 1.0))
        if reduce is not None and reduce < 1:
            again = lost_faces(found, before)
            for k, d in zip(again, detector.detect([images[k] for k in again], scale=options.facedet_scale),
                            strict=True):
                found[k] = d
        for (i, _), d in zip(pending, found, strict=True):
            dets[i] = d
        if reduce is None:
            height, width = images[-1].shape[:2]
            small_hw = scaled_size(width, height, options.facedet_scale)[::-1]
            reduce = face_sized_reduction(found[-1], options.facedet_scale, small_hw)
        before = len(found[-1])
        pending.clear()

    frames = counted(frames, total=total, desc="face detection", disable=not progress)
    for index, frame, is_key in mark_key_frames(frames, options.detect_every):
        if scorer is None:
            scorer = scenes.ContentScorer(frame.shape[1])
        scene_scores.append(scorer(frame))
        dets.append(empty)
        if is_key:
            pending.append((index, frame))
            # one at a time until a key frame has faces: they set the size of the later ones
            if len(pending) >= options.detect_batch_size or reduce is None:
                flush()
    if pending:
        flush()
    return dets, scene_scores


def select_tracks(name: str, dets: list[np.ndarray], shots: list[tuple[int, int]],
                  options: EvalOptions) -> tuple[list[Track], list[str]]:
    """The tracks the reference scores, and a note for each track of 6+ frames that was dropped.

    Raises NoFaceError with what to change when no track qualifies.
    """
    k = options.detect_every
    kept: list[Track] = []
    dropped: list[tuple[Track, str]] = []
    for first, stop in shots:
        # linking does not depend on the length/size filters, so link everything and filter after,
        # which also tells the user why a track was not scored
        for track in link_tracks(dets[first:stop], max_gap=MAX_MISSED_FRAMES, min_track=0,
                                 min_face_size=0, start_frame=first):
            why = _why_dropped(track, stop - first, k, options)
            if why:
                dropped.append((track, why))
            else:
                kept.append(track)
    if not kept and not dropped:
        raise NoFaceError(f"no face found in any frame of {name}. If the frames are already face "
                          "crops (as in LRS2), score them with --mode whole-frame")
    if not kept:
        longest, why = max(dropped, key=lambda d: len(d[0]))
        raise NoFaceError(
            f"no face track in {name} is long enough to score: the longest is {len(longest)} frames "
            f"({len(longest) / VIDEO_FPS:.1f} s, frames {longest.frames[0]}-{longest.frames[-1]}; {why}). "
            f"The reference only scores shots and tracks longer than {options.min_track} frames "
            f"({options.min_track / VIDEO_FPS:.1f} s) with faces over {options.min_face_size:g} px: lower "
            "--min-track (e.g. --min-track 25; shorter tracks give noisier scores) or --min-face-size")
    notes = [f"face track at frames {t.frames[0]}-{t.frames[-1]} not scored: {why}"
             for t, why in dropped if len(t) >= MIN_FRAMES]
    return kept, notes


def _why_dropped(track: Track, shot_length: int, detect_every: int, options: EvalOptions) -> str:
    """Why the reference would not score ``track`` ("" when it would)."""
    n_detected = int(track.detected.sum()) if len(track.detected) else len(track)
    side = max(np.mean(track.boxes[:, 2] - track.boxes[:, 0]), np.mean(track.boxes[:, 3] - track.boxes[:, 1]))
    if shot_length < options.min_track:
        return f"its shot is {shot_length} frames, not at least {options.min_track}"
    if n_detected * detect_every <= options.min_track:
        return f"{n_detected * detect_every} frames with a face, not more than {options.min_track}"
    if side <= options.min_face_size:
        return f"the face is {side:.0f} px, not more than {options.min_face_size:g} px"
    return ""
