"""SyncNet evaluator end to end: planted offsets through the real pipeline, real clips, errors, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from common.errors import InputError, NoFaceError
from media.io import VideoWriter
from syncnet.evaluate import EvalOptions, SyncNetEvaluator, VideoResult

REPO = Path(__file__).resolve().parents[1]

# planted clip: a 120x120 "face" square whose brightness follows a random on/off pattern, on a
# 320x240 grey canvas; the audio is a tone that is on when the pattern (shifted) is on
CANVAS = 96
FACE_BOX = (100, 40, 220, 160)  # x1, y1, x2, y2: mean side 120 px > min_face_size 100
DIM, BRIGHT = 60, 200
# MFCC c0 is the log power of a 25 ms frame after pre-emphasis: about 20.5 for the tone, 15 for the noise
LOUD_LOG_ENERGY = 18.0


def pattern(n: int, seed: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2, n).astype(bool)


def planted_clip(path: Path, n_frames: int, audio_delay: int, *, seed: int = 5, fps_factor: int = 1,
                 audio_frames: int | None = None) -> Path:
    """FFV1 + FLAC (lossless, no AAC priming): video frame i shows p[i], audio frame j sounds p[j - audio_delay].

    Frames are at 25 fps, or at ``25 * fps_factor`` fps with each pattern step lasting ``fps_factor`` frames.
    """
    p = pattern(n_frames + 40, seed)
    rate = 16000
    t = np.arange(640) / rate
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    noise = 0.003 * np.random.default_rng(seed).standard_normal(640 * n_frames).astype(np.float32)
    audio = noise.copy()
    for j in range(n_frames):
        if p[j - audio_delay + 20]:  # p is offset by 20 so negative indices stay in the pattern
            audio[j * 640:(j + 1) * 640] += tone
    x1, y1, x2, y2 = FACE_BOX
    audio = audio[:640 * (audio_frames or n_frames)]
    with VideoWriter(path, 320, 240, Fraction(25 * fps_factor), audio=audio[None], audio_rate=rate) as writer:
        for i in range(n_frames * fps_factor):
            frame = np.full((240, 320, 3), CANVAS, np.uint8)
            frame[y1:y2, x1:x2] = BRIGHT if p[i // fps_factor + 20] else DIM
            writer.write(frame)
    return path


class BrightnessNet:
    """Stands in for SyncNet: lip window -> is the crop's centre bright, per frame; audio window ->
    is the 10 ms frame at the start of each video frame loud (MFCC c0 = log energy)."""

    def forward_lip(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, 5, 224, 224)
        centre = x[:, :, :, 96:128, 96:128].mean(dim=(1, 3, 4))  # (B, 5)
        return _embed(centre > (DIM + BRIGHT) / 2)

    def forward_aud(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, 13, 20)
        energy = x[:, 0, 0, 0::4]  # column 4k starts at video frame k of the window
        return _embed(energy > LOUD_LOG_ENERGY)


def _embed(bits: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(bits.shape[0], 1024)
    out[:, :5] = 10.0 * bits.float()
    return out


class FixedBoxDetector:
    """Stands in for S3FD: the planted face box on every frame from ``first`` on (frames arrive in order)."""

    def __init__(self, first: int = 0) -> None:
        self.first, self.seen = first, 0

    def detect(self, frames, *, scale: float = 1.0) -> list[np.ndarray]:
        out = []
        for _ in frames:
            found = self.seen >= self.first
            out.append(np.array([[*FACE_BOX, 0.99]], np.float32) if found else np.zeros((0, 5), np.float32))
            self.seen += 1
        return out


def planted_evaluator(first_face: int = 0) -> SyncNetEvaluator:
    ev = SyncNetEvaluator(device="cpu")
    ev.syncnets[torch.float32] = BrightnessNet()  # type: ignore[assignment]
    ev.detectors[torch.float32] = FixedBoxDetector(first_face)  # type: ignore[assignment]
    return ev


@pytest.fixture(scope="module")
def evaluator(weights_dir: Path) -> SyncNetEvaluator:
    return SyncNetEvaluator(weights_dir, device="cpu")


@pytest.fixture(scope="module")
def short_clip(tmp_path_factory, face_image_bgr, speech_wav) -> Path:
    """0.8 s of the astronaut clip (20 frames, 15 windows): enough for the real networks, and quick."""
    from tests.conftest import make_face_clip

    return make_face_clip(tmp_path_factory.mktemp("syncnet") / "short.mp4", face_image_bgr, speech_wav,
                          seconds=0.8)


# -- planted offsets through the whole pipeline -------------------------------------------------------

@pytest.mark.parametrize(("delay", "jpeg"), [(3, True), (-2, False), (0, True)])
def test_whole_frame_recovers_planted_offset(tmp_path: Path, delay: int, jpeg: bool):
    clip = planted_clip(tmp_path / "planted.mkv", 60, delay)
    result = planted_evaluator().evaluate(clip, EvalOptions(mode="whole-frame", jpeg_roundtrip=jpeg), progress=False)
    # the sound of frame i comes ``delay`` frames later: the audio lags, the reference reports -delay
    assert result.offset == -delay
    track = result.tracks[0]
    assert (track.first_frame, track.last_frame, track.n_windows) == (0, 59, 55)
    # windows whose partner falls into the zero padding at the ends add a little distance
    assert track.lse_d < (1.0 if delay else 1e-3) and track.lse_c > 5
    assert result.jpeg_roundtrip is jpeg and result.mode == "whole-frame"


def test_audio_shorter_than_video_limits_the_windows(tmp_path: Path):
    clip = planted_clip(tmp_path / "planted.mkv", 60, 1, audio_frames=40)
    result = planted_evaluator().evaluate(clip, EvalOptions(mode="whole-frame"), progress=False)
    assert result.n_frames == 60 and result.tracks[0].n_windows == 35 and result.offset == -1
    assert any("differ in length" in m for m in result.messages)


def test_other_frame_rates_are_converted_to_25_fps(tmp_path: Path):
    clip = planted_clip(tmp_path / "planted50.mkv", 40, 2, fps_factor=2)
    result = planted_evaluator().evaluate(clip, EvalOptions(mode="whole-frame"), progress=False)
    assert result.source_fps == 50.0 and result.n_frames == 40
    assert result.offset == -2
    assert any("converted to 25 fps" in m for m in result.messages)


def test_tracks_recover_planted_offset_with_audio_cut_to_the_track(tmp_path: Path):
    clip = planted_clip(tmp_path / "planted.mkv", 75, 2)
    # the face appears at frame 10: the track's audio must start at 10 * 640 samples
    result = planted_evaluator(first_face=10).evaluate(clip, EvalOptions(min_track=40), progress=False)
    assert len(result.tracks) == 1
    track = result.tracks[0]
    assert (track.first_frame, track.last_frame, track.n_windows) == (10, 74, 60)
    assert track.offset == -2 and result.offset == -2.0
    assert track.confidence.shape == (60,)
    assert track.lse_d < 1.0 and track.lse_c > 5


def test_detect_every_interpolates_boxes(tmp_path: Path):
    clip = planted_clip(tmp_path / "planted.mkv", 75, -1)
    ev = planted_evaluator()
    result = ev.evaluate(clip, EvalOptions(min_track=40, detect_every=5), progress=False)
    assert ev.detector.seen == 16  # type: ignore[union-attr]  # frames 0, 5, ..., 70 and the last, 74
    assert result.tracks[0].offset == 1
    # the track reaches the last frame, as with detection on every frame
    assert (result.tracks[0].first_frame, result.tracks[0].last_frame) == (0, 74)
    assert result.tracks[0].n_windows == 70


def test_heap_is_trimmed_between_detection_and_syncnet(tmp_path: Path, monkeypatch):
    """The detection's freed work space goes back to the system before SyncNet runs, so the two
    phases' peaks do not add up (a 60 s 720p reference run: 1450 -> 1297 MB)."""
    import syncnet.evaluate as evaluate_module

    clip = planted_clip(tmp_path / "planted.mkv", 75, 0)
    ev = planted_evaluator()
    events: list[str] = []
    detect, forward_lip = ev.detector.detect, ev.syncnet.forward_lip  # type: ignore[union-attr]
    monkeypatch.setattr(ev.detector, "detect", lambda *a, **k: events.append("detect") or detect(*a, **k))
    monkeypatch.setattr(ev.syncnet, "forward_lip", lambda x: events.append("lips") or forward_lip(x))
    monkeypatch.setattr(evaluate_module, "release_free_memory", lambda: events.append("trim") or True)
    ev.evaluate(clip, EvalOptions(min_track=40), progress=False)
    assert "trim" in events and "lips" in events
    first_lips = events.index("lips")
    assert "detect" not in events[first_lips:]
    assert "trim" in events[events.index("detect"):first_lips]


def test_short_track_error_says_how_long_and_what_to_change(tmp_path: Path):
    clip = planted_clip(tmp_path / "planted.mkv", 75, 0)
    with pytest.raises(NoFaceError) as err:
        planted_evaluator().evaluate(clip, EvalOptions(), progress=False)
    message = str(err.value)
    assert "75 frames" in message and "--min-track" in message and "100" in message


def test_small_face_error_mentions_face_size(tmp_path: Path):
    clip = planted_clip(tmp_path / "planted.mkv", 75, 0)
    with pytest.raises(NoFaceError, match="--min-face-size"):
        planted_evaluator().evaluate(clip, EvalOptions(min_track=40, min_face_size=150), progress=False)


# -- real networks (generated weights) ---------------------------------------------------------------

def test_whole_frame_on_a_real_clip(evaluator: SyncNetEvaluator, short_clip: Path):
    result = evaluator.evaluate(short_clip, EvalOptions(mode="whole-frame"), progress=False)
    assert isinstance(result, VideoResult)
    assert result.n_frames == 20 and result.tracks[0].n_windows == 15
    assert np.isfinite([result.lse_d, result.lse_c]).all() and result.lse_c >= 0
    assert -15 <= result.offset <= 15
    assert any("differ in length" in m for m in result.messages)  # the speech outlasts the 0.8 s clip
    json.dumps(result.to_dict())
    direct = evaluator.evaluate(short_clip, EvalOptions(mode="whole-frame", jpeg_roundtrip=False), progress=False)
    assert direct.lse_d != result.lse_d and not direct.jpeg_roundtrip


GOLDEN_LSE = json.loads((REPO / "tests" / "data" / "golden" / "lse_whole_frame.json").read_text())


@pytest.mark.parametrize("name", sorted(GOLDEN_LSE["videos"]))
def test_whole_frame_scores_match_the_reference_script(evaluator: SyncNetEvaluator, name: str):
    """The LRS2 script's numbers for lip-synced outputs of a still photo and of a moving video (golden README §3)."""
    expected = GOLDEN_LSE["videos"][name]
    video = REPO / "tests" / "data" / "golden" / "lse_whole_frame" / name
    from common.hashing import file_sha256

    assert file_sha256(video) == expected["sha256"]
    assert file_sha256(evaluator.weights_dir / "syncnet_v2.model") == GOLDEN_LSE["weights_sha256"]
    result = evaluator.evaluate(video, EvalOptions(mode="whole-frame"), progress=False)
    track, = result.tracks
    assert result.n_frames == expected["jpeg_frames"]
    # min(frames, audio samples // 640) - 5: the AAC padding the reference decodes adds a window here
    assert track.n_windows == min(expected["jpeg_frames"], expected["audio_samples"] // 640) - 5
    assert track.offset == expected["offset"]
    assert track.lse_d == pytest.approx(expected["lse_d"], rel=1e-5)
    assert track.lse_c == pytest.approx(expected["lse_c"], abs=1e-3)
    assert result.messages == []  # the decoded padding is not taken for a longer audio track


def test_tracks_with_random_detector_weights_find_no_face(evaluator: SyncNetEvaluator, short_clip: Path):
    with pytest.raises(NoFaceError, match="whole-frame"):
        evaluator.evaluate(short_clip, progress=False)


# -- inputs that cannot be scored ---------------------------------------------------------------------

def _silent_or_mute_clip(path: Path, audio: np.ndarray | None, n_frames: int = 20) -> Path:
    with VideoWriter(path, 64, 64, Fraction(25), audio=audio, audio_rate=16000 if audio is not None else None) as w:
        for i in range(n_frames):
            w.write(np.full((64, 64, 3), 10 * i, np.uint8))
    return path


def test_unscorable_inputs(evaluator: SyncNetEvaluator, tmp_path: Path, face_image_bgr: np.ndarray):
    import cv2

    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n")
    with pytest.raises(InputError, match="notes.mp4"):
        evaluator.evaluate(text, progress=False)
    with pytest.raises(InputError, match="no audio"):
        evaluator.evaluate(_silent_or_mute_clip(tmp_path / "mute.mkv", None), progress=False)
    with pytest.raises(InputError, match="silent"):
        evaluator.evaluate(_silent_or_mute_clip(tmp_path / "silent.mkv", np.zeros((1, 16000), np.float32)),
                           progress=False)
    short_audio = 0.1 * np.ones((1, 2000), np.float32)
    with pytest.raises(InputError, match="at least 6 frames"):
        evaluator.evaluate(_silent_or_mute_clip(tmp_path / "short.mkv", short_audio), progress=False)
    photo = tmp_path / "face.png"
    cv2.imwrite(str(photo), face_image_bgr)
    with pytest.raises(InputError, match="still image"):
        evaluator.evaluate(photo, progress=False)
    with pytest.raises(InputError, match="does not exist"):
        evaluator.evaluate(tmp_path / "missing.mp4", progress=False)


def test_video_shorter_than_a_window(evaluator: SyncNetEvaluator, tmp_path: Path):
    clip = _silent_or_mute_clip(tmp_path / "tiny.mkv", 0.1 * np.ones((1, 16000), np.float32), n_frames=4)
    with pytest.raises(InputError, match="too short"):
        evaluator.evaluate(clip, EvalOptions(mode="whole-frame"), progress=False)


# -- command line ------------------------------------------------------------------------------------

def run_cli(*args: str, cwd: Path, weights_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "LIPSYNC_WEIGHTS_DIR": str(weights_dir), "PYTHONPATH": str(REPO), "TMPDIR": str(cwd)}
    return subprocess.run([sys.executable, "-m", "syncnet", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_cli_scores_the_face_clip(face_clip: Path, short_clip: Path, weights_dir: Path, tmp_path: Path):
    proc = run_cli(str(face_clip), "--mode", "whole-frame", "--json", "-q", cwd=tmp_path, weights_dir=weights_dir)
    assert proc.returncode == 0, proc.stderr
    (record,) = json.loads(proc.stdout)
    assert record["mode"] == "whole-frame" and record["jpeg_roundtrip"] is True
    assert record["tracks"][0]["n_windows"] == 45  # 2 s = 50 frames -> 45 windows
    assert len(record["tracks"][0]["confidence"]) == 45
    table = run_cli(str(short_clip), "--mode", "whole-frame", "--no-jpeg-roundtrip", "-q", cwd=tmp_path,
                    weights_dir=weights_dir)
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()
    assert header.split() == ["video", "track", "frames", "LSE-D", "LSE-C", "offset"]
    assert row.split()[:3] == ["short.mp4", "0", "0-19"]
    assert list(tmp_path.iterdir()) == []


def test_cli_errors_exit_2_without_traceback_or_temp_files(tmp_path: Path, weights_dir: Path):
    work = tmp_path / "work"
    work.mkdir()
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    fake = inputs / "fake.mp4"
    fake.write_text("hello\n")
    mute = _silent_or_mute_clip(inputs / "mute.mkv", None)
    before = sorted(inputs.iterdir())
    proc = run_cli(str(fake), str(mute), cwd=work, weights_dir=weights_dir)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and "fake.mp4" in errors[0] and "no audio" in errors[1]
    bad_option = run_cli(str(fake), "--min-track", "1", cwd=work, weights_dir=weights_dir)
    assert bad_option.returncode == 2 and "min_track" in bad_option.stderr and "Traceback" not in bad_option.stderr
    assert list(work.iterdir()) == [] and sorted(inputs.iterdir()) == before


def test_evaluator_detector_is_sfd_face_with_winograd_and_checks_the_file(weights_dir: Path):
    from common.errors import WeightsError
    from face_detection.winograd import WinogradConv2d

    det = SyncNetEvaluator(weights_dir, device="cpu").detector
    assert det.variant == "sfd_face"
    layers = [m for m in det.net.modules() if isinstance(m, WinogradConv2d)]
    assert len(layers) == 12 and sum(m.compiled_only for m in layers) == 3  # see face_detection.winograd
    with pytest.raises(WeightsError, match=r"s3fd.pth: sfd_face checkpoint does not fit"):
        SyncNetEvaluator(weights_dir, device="cpu", detector=weights_dir / "s3fd.pth").detector  # noqa: B018


# -- frames too small for the detector, degenerate crops ---------------------------------------------------

def sized_clip(path: Path, width: int, height: int, n_frames: int = 20) -> Path:
    t = np.arange(640 * n_frames) / 16000
    audio = (0.3 * np.sin(2 * np.pi * 220 * t) * (np.sin(2 * np.pi * 3 * t) > 0)).astype(np.float32)[None]
    with VideoWriter(path, width, height, Fraction(25), audio=audio, audio_rate=16000) as w:
        for i in range(n_frames):
            w.write(np.full((height, width, 3), 40 + 9 * i, np.uint8))
    return path


@pytest.mark.parametrize(("width", "height", "fix"), [(2, 2, "--mode whole-frame instead"),
                                                      (100, 100, "--facedet-scale to at least 0.28"),
                                                      (1920, 8, "--mode whole-frame instead"),
                                                      (640, 104, "--facedet-scale to at least 0.27")])
def test_tracks_on_frames_too_small_for_the_detector(evaluator: SyncNetEvaluator, tmp_path: Path, width: int,
                                                     height: int, fix: str):
    clip = sized_clip(tmp_path / "small.mkv", width, height)
    with pytest.raises(NoFaceError, match=rf"frames are {width}x{height} px, .* at least 28 px .*{fix}"):
        evaluator.evaluate(clip, EvalOptions(min_track=10), progress=False)


def test_tracks_at_the_smallest_detectable_size_run_the_detector(evaluator: SyncNetEvaluator, tmp_path: Path):
    clip = sized_clip(tmp_path / "least.mkv", 112, 112)  # 28x28 at scale 0.25
    with pytest.raises(NoFaceError, match="no face found in any frame"):  # random weights: no face
        evaluator.evaluate(clip, EvalOptions(min_track=10), progress=False)
    # the scale the message suggests is enough
    with pytest.raises(NoFaceError, match="no face found in any frame"):
        evaluator.evaluate(sized_clip(tmp_path / "s.mkv", 100, 100), EvalOptions(min_track=10, facedet_scale=0.28),
                           progress=False)


@pytest.mark.parametrize(("width", "height"), [(1, 1), (2, 2), (1920, 8)])
def test_whole_frame_scores_tiny_frames(evaluator: SyncNetEvaluator, tmp_path: Path, width: int, height: int):
    """Whole-frame mode resizes every frame to 224x224, however small (the JPEG path too)."""
    for container in ("mp4", "mkv"):
        result = evaluator.evaluate(sized_clip(tmp_path / f"tiny.{container}", width, height),
                                    EvalOptions(mode="whole-frame"), progress=False)
        assert result.tracks[0].n_windows == 15 and np.isfinite(result.lse_d)


@pytest.mark.parametrize("box", [(50, 50, 50, 50), (50, 50, 51, 90), (50, 50, 50.4, 50.4), (-500, -500, -400, -400),
                                 (0, 0, 1, 1)])
def test_degenerate_track_boxes_give_full_size_crops(box):
    from syncnet.crops import CROP_SIZE, crop_face, smooth_track

    frame = np.random.default_rng(3).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    for s, x, y in smooth_track(np.array([box] * 20, np.float64)):
        assert crop_face(frame, s, x, y).shape == (CROP_SIZE, CROP_SIZE, 3)


@pytest.mark.parametrize(("mode", "stop_after", "where"), [("whole-frame", 1, 0), ("whole-frame", 5, 100),
                                                      ("tracks", 1, 0), ("tracks", 7, 25)])
def test_should_stop_ends_each_pass(tmp_path: Path, mode: str, stop_after: int, where: int):
    """Asked once a second of video (25 frames) in every pass: tracks mode's 7th question is at frame 25 of
    its second pass (the detection pass over 120 frames asks 5 times)."""
    from common.errors import Cancelled

    clip = planted_clip(tmp_path / "planted.mkv", 120, 2)
    options = EvalOptions(mode=mode, min_track=20)
    asked = []

    def should_stop() -> bool:
        asked.append(1)
        return len(asked) >= stop_after

    with pytest.raises(Cancelled, match=f"stopped at frame {where}$"):
        planted_evaluator().evaluate(clip, options, progress=False, should_stop=should_stop)
    assert planted_evaluator().evaluate(clip, options, progress=False, should_stop=lambda: False).offset == -2
