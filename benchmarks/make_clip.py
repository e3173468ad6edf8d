"""Make a deterministic 1280x720 25 fps H.264+AAC clip of a real face speaking, for the benchmarks.

The astronaut's head (``skimage.data.astronaut()``) glides smoothly over a mildly textured background
while espeak-ng reads sentences (repeated until the clip is long enough). Frames are written one at a
time through ``media.io.VideoWriter``: nothing grows with the clip's length.

Next to the clip goes ``<clip>.boxes.npy``: per frame, the x1 y1 x2 y2 box (clip pixels) of the face
where it was placed, so a benchmark can plant detections or a fixed box. Every frame also carries its
index as a small binary code in the bottom-left corner (see ``benchmarks/_common.py``).

    python -m benchmarks.make_clip OUT.mp4 --seconds 10
    python -m benchmarks.make_clip OUT.mp4 --seconds 60 --boxes-only   # just the .boxes.npy
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from benchmarks._common import CODE_CELL, FPS, HEIGHT, WIDTH, draw_index

# Head and shoulders cut from the 512x512 astronaut photo (rows, cols), scaled so the face is about
# 190x240 px, a usual size for a 720p talking head.
HEAD_ROWS, HEAD_COLS = (10, 250), (120, 330)
HEAD_SCALE = 1.8
# The face inside the photo (x1, y1, x2, y2: forehead to chin, ear to ear), read off the image.
PHOTO_FACE = (170.0, 45.0, 276.0, 180.0)
# Where the head's top-left corner wanders: centre and amplitude of a slow Lissajous figure. At most
# about 4 px per frame, so boxes five frames apart still overlap by IoU > 0.8, as a talking head does.
PATH_CENTRE = (450.0, 130.0)
PATH_AMPLITUDE = (250.0, 60.0)
PATH_PERIOD_S = (16.0, 10.0)
BOTTOM_MARGIN = 50  # the head stays this far above the bottom edge, clear of the frame-index code

SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "She sells sea shells by the sea shore, and the shells she sells are surely sea shells.",
    "Peter Piper picked a peck of pickled peppers.",
    "How much wood would a woodchuck chuck if a woodchuck could chuck wood?",
    "We measure how fast the lip sync runs, and how much memory it needs, on a long video.",
    "Bright morning light filled the quiet room while the kettle began to whistle.",
)
SPEECH_GAP_S = 0.3  # silence between sentences


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def astronaut() -> np.ndarray:
    """The 512x512 astronaut photo, BGR: from scikit-image, or where that is not installed (a bare GPU
    machine) the committed 256x256 example photo of it, enlarged (the timings do not depend on it)."""
    try:
        from skimage import data
    except ImportError:
        still = cv2.imread(str(EXAMPLES / "face_still.jpg"), cv2.IMREAD_COLOR)
        return cv2.resize(still, (512, 512), interpolation=cv2.INTER_CUBIC)
    return np.ascontiguousarray(data.astronaut()[..., ::-1])


def head_patch() -> tuple[np.ndarray, np.ndarray]:
    """``(patch (h, w, 3) float32 BGR, alpha (h, w, 1) float32)``: the scaled head with soft edges."""
    photo = astronaut()
    (r0, r1), (c0, c1) = HEAD_ROWS, HEAD_COLS
    head = photo[r0:r1, c0:c1]
    size = (round((c1 - c0) * HEAD_SCALE), round((r1 - r0) * HEAD_SCALE))
    patch = cv2.resize(head, size, interpolation=cv2.INTER_CUBIC).astype(np.float32)
    h, w = patch.shape[:2]
    # an ellipse fading out over its outer part hides the photo's rectangle without touching the face
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = np.hypot((xx - w / 2) / (w / 2), (yy - h / 2) / (h / 2))
    alpha = np.clip((1.05 - r) / 0.25, 0.0, 1.0)[..., None].astype(np.float32)
    return patch, alpha


def face_box_in_patch() -> np.ndarray:
    x1, y1, x2, y2 = PHOTO_FACE
    r0, c0 = HEAD_ROWS[0], HEAD_COLS[0]
    return np.array([(x1 - c0), (y1 - r0), (x2 - c0), (y2 - r0)], dtype=np.float32) * HEAD_SCALE


def background(seed: int = 0) -> np.ndarray:
    """A static, mildly textured backdrop: a soft colour gradient with low-contrast blotches and grain."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    base = np.stack([150 + 30 * xx / WIDTH, 140 + 20 * yy / HEIGHT, 120 + 25 * (1 - xx / WIDTH)], axis=-1)
    blotches = cv2.GaussianBlur(rng.normal(0, 1, (HEIGHT // 8, WIDTH // 8)).astype(np.float32), (0, 0), 3)
    blotches = cv2.resize(blotches, (WIDTH, HEIGHT), interpolation=cv2.INTER_CUBIC)
    grain = rng.normal(0, 3, (HEIGHT, WIDTH)).astype(np.float32)
    texture = 12 * blotches / (np.abs(blotches).max() + 1e-6) + grain
    return np.clip(base + texture[..., None], 0, 255).astype(np.uint8)


def head_positions(n_frames: int, patch_hw: tuple[int, int]) -> np.ndarray:
    """``(n, 2)`` integer top-left corners of the head, frame by frame."""
    t = np.arange(n_frames) / float(FPS)
    x = PATH_CENTRE[0] + PATH_AMPLITUDE[0] * np.sin(2 * np.pi * t / PATH_PERIOD_S[0])
    y = PATH_CENTRE[1] + PATH_AMPLITUDE[1] * np.sin(2 * np.pi * t / PATH_PERIOD_S[1] + 0.5)
    h, w = patch_hw
    x = np.clip(np.round(x), 0, WIDTH - w)
    y = np.clip(np.round(y), 0, HEIGHT - BOTTOM_MARGIN - h)
    return np.stack([x, y], axis=1).astype(np.int64)


def face_boxes(n_frames: int) -> np.ndarray:
    """``(n, 4)`` float32 x1 y1 x2 y2 of the face in every frame, in clip pixels."""
    patch, _ = head_patch()
    corners = head_positions(n_frames, patch.shape[:2]).astype(np.float32)
    return face_box_in_patch()[None, :] + np.concatenate([corners, corners], axis=1)


def frames(n_frames: int) -> Iterator[np.ndarray]:
    """The clip's BGR frames, one at a time."""
    patch, alpha = head_patch()
    h, w = patch.shape[:2]
    backdrop = background()
    assert HEIGHT - BOTTOM_MARGIN <= HEIGHT - CODE_CELL, "the head would cover the frame-index code"
    for i, (x, y) in enumerate(head_positions(n_frames, (h, w))):
        canvas = backdrop.copy()
        region = canvas[y:y + h, x:x + w].astype(np.float32)
        canvas[y:y + h, x:x + w] = (alpha * patch + (1 - alpha) * region).astype(np.uint8)
        draw_index(canvas, i)
        yield canvas


def speech(seconds: float, folder: Path) -> tuple[np.ndarray, int]:
    """``(audio (1, n) float32, rate)``: espeak-ng sentences back to back, cut to exactly ``seconds``
    (where espeak-ng is not installed, a bare GPU machine, the committed example speech repeated)."""
    from media.io import load_audio

    espeak = shutil.which("espeak-ng")
    pieces: list[np.ndarray] = []
    rate = 0
    if espeak is None:
        samples, rate = load_audio(EXAMPLES / "speech.wav", sample_rate=None, mono=True)
        pieces.append(samples)
    for k, sentence in enumerate(SENTENCES if espeak else ()):
        wav = folder / f"s{k}.wav"
        done = subprocess.run([espeak, "-s", "150", "-w", str(wav), sentence], capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"espeak-ng failed: {done.stderr.strip()}")
        samples, rate = load_audio(wav, sample_rate=None, mono=True)
        pieces.append(samples)
    gap = np.zeros(int(SPEECH_GAP_S * rate), np.float32)
    total = int(round(seconds * rate))
    out: list[np.ndarray] = []
    length = 0
    k = 0
    while length < total:
        for part in (pieces[k % len(pieces)], gap):
            out.append(part)
            length += len(part)
        k += 1
    audio = np.concatenate(out)[:total]
    fade = min(len(audio), int(0.02 * rate))  # no click where the cut falls inside a word
    audio[len(audio) - fade:] *= np.linspace(1, 0, fade, dtype=np.float32)
    return audio[None, :], rate


def make_clip(path: Path, seconds: float, *, boxes_path: Path | None = None, boxes_only: bool = False) -> Path:
    """Write the clip (unless ``boxes_only``) and its ground-truth face boxes; returns the clip's path."""
    path = Path(path)
    n_frames = int(round(seconds * FPS))
    boxes_path = Path(boxes_path) if boxes_path else path.with_suffix(".boxes.npy")
    np.save(boxes_path, face_boxes(n_frames))
    if boxes_only:
        return path
    from media.io import VideoWriter

    with tempfile.TemporaryDirectory(prefix="make-clip-") as tmp:
        audio, rate = speech(n_frames / float(FPS), Path(tmp))
    with VideoWriter(path, WIDTH, HEIGHT, FPS, audio=audio, audio_rate=rate) as writer:
        for frame in frames(n_frames):
            writer.write(frame)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=Path, help="the .mp4 to write")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--boxes", type=Path, help="where to write the per-frame face boxes (default OUT.boxes.npy)")
    parser.add_argument("--boxes-only", action="store_true", help="write only the boxes, no video")
    args = parser.parse_args()
    make_clip(args.output, args.seconds, boxes_path=args.boxes, boxes_only=args.boxes_only)
    print(args.output if not args.boxes_only else args.boxes or args.output.with_suffix(".boxes.npy"))


if __name__ == "__main__":
    main()
