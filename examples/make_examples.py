"""Regenerate the app's example inputs: ``python examples/make_examples.py``.

Everything comes from material already on the machine, no network: the face is scikit-image's
``astronaut`` portrait (public domain, NASA) and the speech is synthesised by espeak-ng.

- ``face_clip.mp4``: 4.4 s, 25 fps, 256x256 H.264 + AAC; the portrait drifts and zooms slightly (so face
  detection and tracking have real work) while saying one sentence.
- ``face_still.jpg``: the middle view of the same face, for the photo input.
- ``speech.wav``: another sentence (4.7 s), 16 kHz mono, to lip-sync onto either.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import soundfile as sf

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run as a script from anywhere

from media.io import VideoWriter, load_audio  # noqa: E402

SIZE = 256  # output frames are SIZE x SIZE
FPS = Fraction(25)
# Long enough for the evaluator's default minimum face track (more than 100 frames at 25 fps, as
# syncnet_python), so the examples get scores with the default settings; the speech is as long.
SECONDS = 4.4
SAMPLE_RATE = 16000  # what Wav2Lip and SyncNet resample to anyway; keeps the wav small
# The window of the 512x512 portrait that is shown: the head and shoulders, face in the upper middle.
CENTRE = (225, 150)  # x, y in the portrait
HALF = 130  # half the window's side, in portrait pixels
CLIP_TEXT = "Hello, I am an astronaut. This is my voice, and I like to talk."
SPEECH_TEXT = "Lip sync makes any face speak the words you choose, in any voice you like."
JPEG_QUALITY = 90


def speak(text: str, path: Path, seconds: float | None = None) -> np.ndarray:
    """espeak-ng speech at SAMPLE_RATE, mono float32, optionally padded/trimmed to ``seconds``."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        sys.exit("espeak-ng is needed: apt-get install espeak-ng")
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "speech.wav"
        done = subprocess.run([espeak, "-s", "160", "-w", str(raw), text], capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"espeak-ng failed: {done.stderr.strip()}")
        wav, _ = load_audio(raw, sample_rate=SAMPLE_RATE, mono=True)
    if seconds is not None:
        n = int(seconds * SAMPLE_RATE)
        wav = np.pad(wav, (0, max(0, n - len(wav))))[:n]
    sf.write(path, wav, SAMPLE_RATE, subtype="PCM_16")
    return wav


def view(portrait_bgr: np.ndarray, t: float) -> np.ndarray:
    """The face window at time ``t`` (0..1): a slow drift of a few pixels and a slight zoom."""
    dx = 8 * np.sin(2 * np.pi * t)
    dy = 5 * np.sin(4 * np.pi * t + 1.0)
    half = HALF * (1 - 0.04 * np.sin(np.pi * t))
    x, y = CENTRE[0] + dx, CENTRE[1] + dy
    # affine map from the window to SIZE x SIZE, sub-pixel so the motion is smooth
    scale = SIZE / (2 * half)
    matrix = np.array([[scale, 0, -(x - half) * scale], [0, scale, -(y - half) * scale]], np.float32)
    return cv2.warpAffine(portrait_bgr, matrix, (SIZE, SIZE), flags=cv2.INTER_AREA,
                          borderMode=cv2.BORDER_REFLECT)


def main() -> None:
    from skimage import data

    portrait = np.ascontiguousarray(data.astronaut()[..., ::-1])  # RGB -> BGR
    n_frames = round(SECONDS * FPS)

    speak(SPEECH_TEXT, HERE / "speech.wav")
    with tempfile.TemporaryDirectory() as tmp:
        clip_audio = speak(CLIP_TEXT, Path(tmp) / "clip.wav", seconds=SECONDS)
    with VideoWriter(HERE / "face_clip.mp4", SIZE, SIZE, FPS, audio=clip_audio[None, :],
                     audio_rate=SAMPLE_RATE) as writer:
        for i in range(n_frames):
            writer.write(view(portrait, i / n_frames))
    cv2.imwrite(str(HERE / "face_still.jpg"), view(portrait, 0.5), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    for name in ("face_clip.mp4", "face_still.jpg", "speech.wav"):
        print(f"{HERE / name}: {(HERE / name).stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
