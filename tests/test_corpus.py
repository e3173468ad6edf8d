"""Awkward media, generated here, through the CLI and the app: a valid output or a clear message, never a
traceback, no temporary files left, and the server keeps serving.

Every file is tiny (10 frames, 0.4 s) and made at run time with PyAV (media.io.VideoWriter), the
ffmpeg program (an argument list) or PIL/OpenCV. Faces are given a fixed box where finding the face is
not the point (the generated weights find none), and scoring uses whole frames. Each case names what it
must end in: "ok" (exit 0, a playable output of the expected size) or a pattern of the message (exit 2 /
gr.Error).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import soundfile
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

import app
from media.io import VideoWriter, probe
from tests.test_app import GENERIC, serve_app

N_FRAMES = 10
SECONDS = N_FRAMES / 25
RATE = 16000
FFMPEG = shutil.which("ffmpeg")


def frames(width: int, height: int, n: int = N_FRAMES) -> list[np.ndarray]:
    """Deterministic BGR frames: a gradient that shifts, with a bright square that moves."""
    y, x = np.mgrid[:height, :width]
    out = []
    for i in range(n):
        frame = np.stack([(x * 7 + i * 9) % 256, (y * 5 + i * 3) % 256, ((x + y) * 3) % 256], -1).astype(np.uint8)
        frame[(y // 4 + i) % 8 == 0] = 230
        out.append(np.ascontiguousarray(frame))
    return out


def tone(seconds: float = SECONDS, rate: int = RATE, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * 220 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    return np.stack([wave * (1 - 0.1 * c) for c in range(channels)]).astype(np.float32)


def written(path: Path, width: int, height: int) -> Path:
    """Video with a 0.4 s tone (.mp4: H.264 + AAC, padded to even sizes; .mkv: lossless, any size)."""
    with VideoWriter(path, width, height, Fraction(25), audio=tone(), audio_rate=RATE) as writer:
        for frame in frames(width, height):
            writer.write(frame)
    return path


def ffmpeg(path: Path, *args: str) -> Path:
    """The ffmpeg program with lavfi test sources: video and a 0.4 s tone, then ``args`` (codecs...)."""
    sources = ["-f", "lavfi", "-i", f"testsrc2=size=64x48:rate=25:duration={SECONDS}",
               "-f", "lavfi", "-i", f"sine=frequency=300:sample_rate={RATE}:duration={SECONDS}"]
    subprocess.run([FFMPEG, "-nostdin", "-v", "error", "-y", *sources, *args, str(path)], check=True)
    return path


def gapped(path: Path) -> Path:
    """Frames 0-4 at 0-0.16 s, then frames 5-9 from 0.8 s on: a 0.6 s hole in the timestamps."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.time_base = Fraction(1, 25)
        for i, image in enumerate(frames(64, 48)):
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            frame.pts = i if i < 5 else i + 15
            frame.time_base = Fraction(1, 25)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def gif(path: Path) -> Path:
    from PIL import Image

    images = [Image.fromarray(f[..., ::-1]) for f in frames(64, 48)]
    images[0].save(path, save_all=True, append_images=images[1:], duration=40, loop=0)
    return path


def cmyk_jpeg(path: Path) -> Path:
    from PIL import Image

    Image.fromarray(frames(64, 48)[3][..., ::-1]).convert("CMYK").save(path, quality=95)
    return path


def png16(path: Path) -> Path:
    cv2.imwrite(str(path), frames(64, 48)[3].astype(np.uint16) * 257)
    return path


def exif_rotated(path: Path) -> Path:
    """Stored 64x48 with EXIF orientation 6 (turn 90 degrees clockwise to show): shown 48x64."""
    from PIL import Image

    image = Image.fromarray(frames(64, 48)[3][..., ::-1])
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(path, exif=exif, quality=95)
    return path


def truncated(path: Path, source: Path, keep: float = 0.6) -> Path:
    data = source.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def wav(path: Path, rate: int = RATE, channels: int = 1, subtype: str = "PCM_16", seconds: float = SECONDS) -> Path:
    soundfile.write(path, tone(seconds, rate, channels).T, rate, subtype=subtype)
    return path


@dataclass(frozen=True)
class Case:
    face: str  # key into the corpus
    audio: str
    box: str | None  # top bottom left right, or None to detect
    expect: str  # "ok", or a pattern of the message
    size: tuple[int, int] | None = None  # (width, height) of a valid output


CASES = {
    "1x1 video": Case("1x1.mkv", "tone.wav", "0 1 0 1", "ok", (1, 1)),
    "3x2 video": Case("3x2.mkv", "tone.wav", "0 2 0 3", "ok", (3, 2)),
    "16x16 video": Case("16x16.mkv", "tone.wav", "0 16 0 16", "ok", (16, 16)),
    "16x12 video, faces to detect": Case("16x12.mkv", "tone.wav", None, r"16x12 px, too small .* 32 px"),
    "1920x8 strip": Case("1920x8.mp4", "tone.wav", "0 8 100 140", "ok", (1920, 8)),
    "1920x8 strip, faces to detect": Case("1920x8.mp4", "tone.wav", None, r"1920x8 px, too small"),
    "8x1024 column": Case("8x1024.mp4", "tone.wav", "500 540 0 8", "ok", (8, 1024)),
    "10-bit H.264": Case("10bit.mp4", "tone.wav", "4 40 10 50", "ok", (64, 48)),
    "4:4:4 H.264": Case("444.mp4", "tone.wav", "4 40 10 50", "ok", (64, 48)),
    "VP9 with alpha in WebM": Case("alpha.webm", "tone.wav", "4 40 10 50", "ok", (64, 48)),
    "two video streams": Case("two_streams.mkv", "tone.wav", "4 40 10 50", "ok", (64, 48)),
    "timestamp gap": Case("gap.mp4", "tone.wav", "4 40 10 50", "ok", (64, 48)),
    "animated GIF": Case("anim.gif", "tone.wav", "4 40 10 50", "ok", (64, 48)),
    "CMYK JPEG": Case("cmyk.jpg", "tone.wav", "4 40 10 50", "ok", (64, 48)),
    "16-bit PNG": Case("16bit.png", "tone.wav", "4 40 10 50", "ok", (64, 48)),
    "EXIF-rotated JPEG": Case("exif6.jpg", "tone.wav", "4 60 4 40", "ok", (48, 64)),
    "zero-byte video": Case("empty.mp4", "tone.wav", "4 40 10 50", r"empty.mp4 is not a video or image file"),
    "folder as the video": Case("folder.mp4", "tone.wav", "4 40 10 50", r"not a file"),
    "truncated MP4": Case("truncated.mp4", "tone.wav", "4 40 10 50", r"truncated \(only \d+% of it is there\)"),
    "truncated WebM": Case("truncated.webm", "tone.wav", "4 40 10 50", "ok", (64, 48)),
    "5.1-channel FLAC": Case("64x48.mkv", "surround.flac", "4 40 10 50", "ok", (64, 48)),
    "192 kHz WAV": Case("64x48.mkv", "192k.wav", "4 40 10 50", "ok", (64, 48)),
    "float WAV": Case("64x48.mkv", "float.wav", "4 40 10 50", "ok", (64, 48)),
    "zero-byte audio": Case("64x48.mkv", "empty.wav", "4 40 10 50", r"empty.wav is not an audio or video file"),
    "folder as the audio": Case("64x48.mkv", "folder.wav", "4 40 10 50", r"not a file"),
    "truncated WAV": Case("64x48.mkv", "truncated.wav", "4 40 10 50", "ok", (64, 48)),
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    assert FFMPEG, "the ffmpeg program is needed (bash tests/install.sh)"
    d = tmp_path_factory.mktemp("corpus")
    made = {name: written(d / name, w, h) for name, w, h in (
        ("1x1.mkv", 1, 1), ("3x2.mkv", 3, 2), ("16x16.mkv", 16, 16), ("16x12.mkv", 16, 12),
        ("1920x8.mp4", 1920, 8), ("8x1024.mp4", 8, 1024), ("64x48.mkv", 64, 48))}
    made["10bit.mp4"] = ffmpeg(d / "10bit.mp4", "-c:v", "libx264", "-pix_fmt", "yuv420p10le", "-c:a", "aac")
    made["444.mp4"] = ffmpeg(d / "444.mp4", "-c:v", "libx264", "-pix_fmt", "yuv444p", "-c:a", "aac")
    made["alpha.webm"] = ffmpeg(d / "alpha.webm", "-vf", "format=yuva420p", "-c:v", "libvpx-vp9", "-pix_fmt",
                                "yuva420p", "-c:a", "libopus")
    made["two_streams.mkv"] = ffmpeg(d / "two_streams.mkv", "-map", "0:v", "-map", "0:v", "-map", "1:a",
                                     "-c:v", "libx264", "-c:a", "flac")
    made["gap.mp4"] = gapped(d / "gap.mp4")
    made["anim.gif"] = gif(d / "anim.gif")
    made["cmyk.jpg"] = cmyk_jpeg(d / "cmyk.jpg")
    made["16bit.png"] = png16(d / "16bit.png")
    made["exif6.jpg"] = exif_rotated(d / "exif6.jpg")
    made["empty.mp4"] = d / "empty.mp4"
    made["empty.mp4"].touch()
    made["folder.mp4"] = d / "folder.mp4"
    made["folder.mp4"].mkdir()
    made["truncated.mp4"] = truncated(d / "truncated.mp4", written(d / "whole.mp4", 64, 48))
    made["truncated.webm"] = truncated(d / "truncated.webm", made["alpha.webm"])
    made["tone.wav"] = wav(d / "tone.wav")
    made["surround.flac"] = d / "surround.flac"
    soundfile.write(made["surround.flac"], tone(channels=6).T, RATE)
    made["192k.wav"] = wav(d / "192k.wav", rate=192000)
    made["float.wav"] = wav(d / "float.wav", subtype="FLOAT")
    made["empty.wav"] = d / "empty.wav"
    made["empty.wav"].touch()
    made["folder.wav"] = d / "folder.wav"
    made["folder.wav"].mkdir()
    made["truncated.wav"] = truncated(d / "truncated.wav", wav(d / "long.wav", seconds=1.0), keep=0.5)
    return made


@pytest.fixture(scope="module")
def private_tmp(tmp_path_factory):
    """A temporary folder for the CLI runs and this process (the app's server), checked for leftovers."""
    folder = tmp_path_factory.mktemp("tmp")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tempfile, "tempdir", str(folder))
        mp.setenv("TMPDIR", str(folder))
        mp.setenv("LIPSYNC_CACHE_DIR", str(folder / "detections"))
        yield folder


def _output_size(path: Path) -> tuple[int, int]:
    info = probe(path)
    assert info.has_video and info.has_audio and info.n_frames, info
    return info.width, info.height


def _size_ok(seen: tuple[int, int], expected: tuple[int, int] | None, container: str) -> bool:
    # H.264 gets even sizes: an odd side gains a repeated row or column
    return expected is None or seen == expected or (container == "mp4" and seen == tuple(v + v % 2 for v in expected))


# -- the CLI -----------------------------------------------------------------------------------------------
def run_cli(case: Case, corpus: dict[str, Path], out: Path, weights_dir: Path) -> subprocess.CompletedProcess:
    box = ["--box", *case.box.split()] if case.box else []
    return subprocess.run([sys.executable, "-m", "lipsync", str(corpus[case.face]), str(corpus[case.audio]), "-o",
                           str(out), *box, "--weights-dir", str(weights_dir), "-q"],
                          capture_output=True, text=True, timeout=600)


def test_cli_on_the_corpus(corpus, private_tmp, weights_dir, tmp_path):
    names = sorted(CASES)
    outs = {name: tmp_path / f"{i:02d}.mp4" for i, name in enumerate(names)}
    with ThreadPoolExecutor(2) as pool:  # each run spends seconds importing torch: two at a time
        procs = dict(zip(names, pool.map(lambda n: run_cli(CASES[n], corpus, outs[n], weights_dir), names),
                         strict=True))
    failures = []
    for name in names:
        case, proc, out = CASES[name], procs[name], outs[name]
        if "Traceback" in proc.stderr:
            failures.append(f"{name}: traceback\n{proc.stderr}")
        elif case.expect == "ok":
            if proc.returncode != 0 or not out.exists():
                failures.append(f"{name}: exit {proc.returncode}: {proc.stderr.strip()}")
            elif not _size_ok(_output_size(out), case.size, "mp4"):
                failures.append(f"{name}: output is {_output_size(out)}, expected {case.size}")
        else:
            message = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
            if proc.returncode != 2 or not message.startswith("error: ") or not re.search(case.expect, message):
                failures.append(f"{name}: exit {proc.returncode}, {message!r}, expected {case.expect!r}")
            if out.exists():
                failures.append(f"{name}: a failed run left {out.name}")
    assert not failures, "\n".join(failures)
    assert [p.name for p in private_tmp.iterdir() if p.name != "detections"] == []


# -- the app -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served(weights_dir, private_tmp):
    with serve_app() as url:
        yield url


def request_folders() -> set[Path]:
    root = Path(app.get_upload_folder()) / app.OUTPUT_DIR_NAME
    return set(root.iterdir()) if root.exists() else set()


def _app_inputs(case: Case, corpus: dict[str, Path]) -> dict:
    face = corpus[case.face]
    is_image = face.suffix in (".jpg", ".png")
    return {"face_image" if is_image else "face_video": handle_file(str(face)),
            "audio": handle_file(str(corpus[case.audio])), "box": case.box or "", "score_input": False,
            "score_mode": "whole-frame", "wav2lip_batch_size": 16}


def test_app_on_the_corpus(served, corpus, private_tmp, tmp_path):
    client = Client(served, verbose=False, download_files=str(tmp_path))
    failures = []
    for name in sorted(CASES):
        case = CASES[name]
        if "folder" in case.face or "folder" in case.audio:
            continue  # see test_app_refuses_folders: gradio_client cannot upload a folder
        before = request_folders()
        try:
            video, _, details = client.predict(**_app_inputs(case, corpus), api_name="/lipsync")
        except AppError as exc:
            if case.expect == "ok" or GENERIC in str(exc) or not re.search(case.expect, str(exc)):
                failures.append(f"{name}: {exc}")
            if request_folders() != before:
                failures.append(f"{name}: the failed request left a folder")
            continue
        if case.expect != "ok":
            failures.append(f"{name}: gave a video, expected {case.expect!r}")
        elif not _size_ok(_output_size(Path(video)), case.size, "mp4"):
            failures.append(f"{name}: output is {_output_size(Path(video))}, expected {case.size}")
        elif details["output"]["lse_d"] is None:
            failures.append(f"{name}: the output was not scored: {details['output']['messages']}")
    assert not failures, "\n".join(failures)
    # the server keeps serving, and kept no work folders
    video, _, _ = client.predict(**_app_inputs(CASES["16x16 video"], corpus), api_name="/lipsync")
    assert _output_size(Path(video)) == (16, 16)
    assert not list(private_tmp.glob("lipsync-*"))


# what /evaluate says about the corpus files it cannot score (every other one gets scores)
UNSCORABLE = {"16bit.png": "is a still image", "cmyk.jpg": "is a still image", "exif6.jpg": "is a still image",
              "anim.gif": "has no audio track", "gap.mp4": "has no audio track",
              "empty.mp4": "is not a video or image file", "truncated.mp4": "is truncated",
              "truncated.webm": r"has only 0.\d+ s of audio: SyncNet needs at least 6 frames"}


def test_app_scores_the_corpus_videos(served, corpus, tmp_path):
    """/evaluate in whole-frame mode: every video with sound gets scores, the others a message."""
    client = Client(served, verbose=False, download_files=str(tmp_path))
    failures = []
    for face in sorted({c.face for c in CASES.values()} - {"folder.mp4"}):
        try:
            _, _, summary = client.predict(video=handle_file(str(corpus[face])), mode="whole-frame",
                                           api_name="/evaluate")
            if face in UNSCORABLE or "LSE-D" not in summary:
                failures.append(f"{face}: {summary}")
        except AppError as exc:
            if face not in UNSCORABLE or GENERIC in str(exc) or not re.search(UNSCORABLE[face], str(exc)):
                failures.append(f"{face}: {exc}")
    assert not failures, "\n".join(failures)


def test_app_refuses_folders(served, corpus):
    """A folder never reaches the app: gradio_client refuses it before uploading, as a missing file."""
    client = Client(served, verbose=False)
    with pytest.raises((ValueError, FileNotFoundError, IsADirectoryError, PermissionError)):
        client.predict(face_video=handle_file(str(corpus["folder.mp4"])), audio=handle_file(str(corpus["tone.wav"])),
                       api_name="/lipsync")
