"""Shared fixtures: generated full-size weights, real speech, a real face and a short clip."""

from __future__ import annotations

import os
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from tests import weightgen

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All five checkpoints, full size, in the real layouts; also exported as LIPSYNC_WEIGHTS_DIR.

    Set LIPSYNC_TEST_WEIGHTS=/some/dir to keep them between test sessions.
    """
    folder = Path(os.environ.get("LIPSYNC_TEST_WEIGHTS") or tmp_path_factory.mktemp("weights"))
    weightgen.write_all(folder)
    os.environ["LIPSYNC_WEIGHTS_DIR"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def golden():
    def load(name: str) -> dict[str, np.ndarray]:
        with np.load(DATA / "golden" / f"{name}.npz") as data:
            return dict(data)

    return load


def speak(text: str, path: Path) -> Path:
    """Real speech from espeak-ng (22050 Hz mono WAV)."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise RuntimeError("espeak-ng is not installed: run `bash tests/install.sh` (Debian package espeak-ng)")
    subprocess.run([espeak, "-s", "150", "-w", str(path), text], check=True, capture_output=True)
    return path


def sox(*args: str | Path) -> None:
    """Run sox with an argument list (Debian package sox)."""
    program = shutil.which("sox")
    if program is None:
        raise RuntimeError("sox is not installed: run `bash tests/install.sh` (Debian package sox)")
    subprocess.run([program, *map(str, args)], check=True, capture_output=True)


SILENCE_SECONDS = 2.0


@pytest.fixture(scope="session")
def gapped_speech(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float, float]:
    """Speech, then 2 s of digital silence made by sox, then speech (16 kHz mono WAV).

    Returns ``(path, start, end)`` of the silence in seconds (espeak's own quiet lead-in and tail
    make the real pause a little longer).
    """
    folder = tmp_path_factory.mktemp("gapped")
    parts = []
    for name, text in (("first", "Hello there, my friend."), ("second", "And I speak again.")):
        speak(text, folder / f"{name}_22k.wav")
        sox(folder / f"{name}_22k.wav", "-r", "16000", folder / f"{name}.wav")
        parts.append(folder / f"{name}.wav")
    silence = folder / "silence.wav"
    sox("-n", "-r", "16000", "-c", "1", silence, "trim", "0.0", str(SILENCE_SECONDS))
    out = folder / "speech_silence_speech.wav"
    sox(parts[0], silence, parts[1], out)
    import soundfile

    start = soundfile.info(str(parts[0])).frames / 16000
    return out, start, start + SILENCE_SECONDS


@pytest.fixture(scope="session")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return speak("Hello there, this is a lip sync test.", tmp_path_factory.mktemp("speech") / "speech.wav")


@pytest.fixture(scope="session")
def face_image_bgr() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[..., ::-1])


def make_face_clip(path: Path, face_bgr: np.ndarray, audio_path: Path | None, *, seconds: float = 2.0,
                   size: tuple[int, int] = (320, 240), fps: Fraction = Fraction(25)) -> Path:
    """The astronaut's face drifting slowly on a grey canvas, with the given audio."""
    import cv2

    from media.io import VideoWriter, load_audio

    width, height = size
    # a 140x156 face on 320x240, scaled down for smaller canvases
    k = min(1.0, width / 320, height / 240)
    fw, fh = max(1, round(140 * k)), max(1, round(156 * k))
    face = cv2.resize(face_bgr[20:300, 130:380], (fw, fh), interpolation=cv2.INTER_AREA)
    audio = load_audio(audio_path, sample_rate=None, mono=False) if audio_path else None
    n = int(round(seconds * fps))
    with VideoWriter(path, width, height, fps, audio=audio[0] if audio else None,
                     audio_rate=audio[1] if audio else None) as writer:
        for i in range(n):
            canvas = np.full((height, width, 3), 128, np.uint8)
            x = round(k * (60 + 20 * np.sin(i / 10)))
            y = round(k * (40 + 10 * np.cos(i / 13)))
            canvas[y:y + fh, x:x + fw] = face[:height - y, :width - x]
            writer.write(canvas)
    return path


@pytest.fixture(scope="session")
def face_clip(tmp_path_factory, face_image_bgr, speech_wav) -> Path:
    return make_face_clip(tmp_path_factory.mktemp("clip") / "face clip.mp4", face_image_bgr, speech_wav)


@pytest.fixture
def torch_threads():
    """``torch_threads(n)`` sets torch's thread count for the test; the count before is set back after."""
    import torch

    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def path_without(programs: tuple[str, ...], folder: Path) -> str:
    """A PATH on which none of ``programs`` is found, as on a machine without them.

    Each folder of PATH that holds one of them is replaced by a folder in ``folder`` with links to
    everything else it holds; the other folders stay as they are.
    """
    parts = []
    for i, entry in enumerate(os.environ.get("PATH", "").split(os.pathsep)):
        where = Path(entry)
        if not entry or not any((where / name).exists() for name in programs):
            parts.append(entry)
            continue
        shadow = folder / f"path{i}"
        shadow.mkdir(parents=True)
        for item in where.iterdir():
            if item.name not in programs:
                (shadow / item.name).symlink_to(item)
        parts.append(str(shadow))
    path = os.pathsep.join(parts)
    assert not any(shutil.which(name, path=path) for name in programs)
    return path


FFMPEG_PROGRAMS = ("ffmpeg", "ffprobe")


@pytest.fixture
def without_ffmpeg(monkeypatch, tmp_path) -> str:
    """This process's PATH without FFmpeg's programs, for the test (tests/install.sh installs them)."""
    path = path_without(FFMPEG_PROGRAMS, tmp_path / "bin")
    monkeypatch.setenv("PATH", path)
    return path
