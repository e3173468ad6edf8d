"""End to end: a real face (astronaut) with real speech (espeak-ng) and generated full-size weights."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from common.errors import InputError, NoFaceError
from face_detection.winograd import WinogradConv2d
from lipsync.options import LipSyncOptions
from lipsync.pipeline import LipSync
from media.io import iter_frames, load_audio, probe
from tests.conftest import make_face_clip

# Where tests/conftest.py's clip keeps the face: x in 40..220, y in 30..206 over the whole clip.
CLIP_BOX = (30, 206, 40, 220)  # top, bottom, left, right


class CanvasDetector:
    """Stands in for S3FD (random weights find nothing): the box of non-grey pixels on the grey canvas."""

    def __init__(self) -> None:
        self.calls = 0

    def detect(self, frames, scale: float = 1.0):
        out = []
        for frame in frames:
            self.calls += 1
            mask = np.abs(frame.astype(int) - 128).sum(axis=2) > 12
            ys, xs = np.nonzero(mask)
            if len(xs) < 50:
                out.append(np.zeros((0, 5), np.float32))
                continue
            out.append(np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1, 0.99]], np.float32))
        return out


@pytest.fixture(scope="module")
def engine(weights_dir):
    return LipSync(weights_dir=weights_dir)


@pytest.fixture
def planted(engine, monkeypatch):
    fake = CanvasDetector()
    monkeypatch.setattr(engine, "detector", lambda *_: fake)
    return fake


@pytest.fixture(autouse=True)
def private_tmp(tmp_path, monkeypatch):
    """A private temp folder (for this process and the CLI's) and detection cache, to check for leftovers."""
    monkeypatch.setenv("LIPSYNC_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def streams(path: Path) -> dict:
    with av.open(str(path)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        return {"vcodec": v.codec_context.name, "pix_fmt": v.codec_context.pix_fmt, "acodec": a.codec_context.name,
                "size": (v.codec_context.width, v.codec_context.height), "rate": v.average_rate,
                "duration": float(c.duration / av.time_base)}


def leftovers() -> list[str]:
    return [p.name for p in Path(tempfile.gettempdir()).iterdir()]


def test_real_face_with_speech_mp4(engine, planted, face_clip, speech_wav, tmp_path):
    out = tmp_path / "out.mp4"
    result = engine.run(face_clip, speech_wav, out)
    assert leftovers() == []
    s = streams(out)
    assert (s["vcodec"], s["pix_fmt"], s["acodec"]) == ("h264", "yuv420p", "aac")
    assert s["size"] == (320, 240) and s["rate"] == 25
    audio_seconds = len(load_audio(speech_wav, sample_rate=16000)[0]) / 16000
    assert abs(result.duration - audio_seconds) <= 1 / 25 + 1e-6
    assert abs(s["duration"] - audio_seconds) < 0.1
    assert result.no_face_ranges == []
    assert planted.calls > 0
    assert {"detect", "generate", "paste", "encode", "decode"} <= set(result.timings)

    src = list(iter_frames(face_clip))
    dst = list(iter_frames(out))
    assert len(dst) == result.n_frames
    changed_mouth, outside = [], []
    for i in range(min(len(src), len(dst))):
        a, b = src[i].astype(int), dst[i].astype(int)
        (x1, y1, x2, y2, _), = CanvasDetector().detect([src[i]])[0]
        x1, y1, x2, y2 = int(x1), int(y1), int(x2), int(y2)
        mask = np.ones(a.shape[:2], bool)
        mask[max(0, y1 - 4):y2 + 14, max(0, x1 - 4):x2 + 4] = False  # box + pads + codec bleed
        outside.append(np.abs(a - b)[mask].mean())
        mouth = (slice(y1 + (y2 - y1) * 2 // 3, y2), slice(x1 + (x2 - x1) // 4, x2 - (x2 - x1) // 4))
        changed_mouth.append(np.abs(a[mouth] - b[mouth]).mean())
    assert max(outside) < 2.0, "pixels outside the face box changed beyond codec noise"
    assert min(changed_mouth) > 5.0, "the mouth region was not regenerated"


@pytest.fixture(scope="module")
def boxed_mkv(engine, face_clip, speech_wav, tmp_path_factory):
    """One run with the fixed box to a lossless .mkv: ``(result, output)``."""
    out = tmp_path_factory.mktemp("boxed") / "out.mkv"
    return engine.run(face_clip, speech_wav, out, LipSyncOptions(box=CLIP_BOX)), out


def test_mkv_is_lossless_outside_the_box(boxed_mkv, face_clip):
    result, out = boxed_mkv
    top, bottom, left, right = CLIP_BOX
    s = streams(out)
    assert s["vcodec"] == "ffv1" and s["acodec"] in ("flac", "pcm_s16le")
    src = next(iter_frames(face_clip))
    dst = next(iter_frames(out))
    outside = np.ones(src.shape[:2], bool)
    outside[top:bottom, left:right] = False
    assert np.array_equal(src[outside], dst[outside])
    assert result.n_frames == len(list(iter_frames(out)))


def test_still_image_and_pingpong(engine, face_image_bgr, speech_wav, tmp_path, monkeypatch):
    import cv2

    from lipsync.model import Wav2Lip

    encoded, decoded = [], []
    encode, decode = Wav2Lip.encode_face, Wav2Lip.decode
    monkeypatch.setattr(Wav2Lip, "encode_face", lambda self, x: encoded.append(len(x)) or encode(self, x))
    monkeypatch.setattr(Wav2Lip, "decode", lambda self, a, f: decoded.append(len(a)) or decode(self, a, f))
    image = tmp_path / "face.png"
    cv2.imwrite(str(image), face_image_bgr)
    out = tmp_path / "still.mp4"
    result = engine.run(image, speech_wav, out, LipSyncOptions(box=(60, 300, 150, 360), fps=30))
    assert streams(out)["rate"] == 30 and streams(out)["size"] == (512, 512)
    assert result.n_frames == len(list(iter_frames(out)))
    # the photo's face is encoded once per batch of frames, and every frame gets its own mouth
    assert set(encoded) == {1} and len(encoded) == len(decoded) and sum(decoded) == result.n_frames


def test_audio_longer_than_video_loops(engine, planted, face_image_bgr, speech_wav, tmp_path):
    for loop, container in (("forward", "mp4"), ("pingpong", "mkv")):  # mkv: no frame count in the header
        short = make_face_clip(tmp_path / f"short.{container}", face_image_bgr, None, seconds=0.6)
        out = tmp_path / f"{loop}.mp4"
        result = engine.run(short, speech_wav, out, LipSyncOptions(loop=loop))
        assert result.n_frames > 15 and result.no_face_ranges == []
        assert len(list(iter_frames(out))) == result.n_frames


def test_fractional_rate_kept_exactly(engine, face_image_bgr, speech_wav, tmp_path):
    clip = make_face_clip(tmp_path / "ntsc.mp4", face_image_bgr, None, seconds=1.0, fps=Fraction(30000, 1001))
    out = tmp_path / "ntsc_out.mp4"
    engine.run(clip, speech_wav, out, LipSyncOptions(box=CLIP_BOX))
    assert streams(out)["rate"] == Fraction(30000, 1001)


def test_detections_are_cached(engine, planted, face_clip, speech_wav, tmp_path):
    engine.run(face_clip, speech_wav, tmp_path / "a.mp4")
    calls = planted.calls
    engine.run(face_clip, speech_wav, tmp_path / "b.mp4")
    assert planted.calls == calls


def test_frames_are_written_while_detection_goes_on(engine, planted, face_image_bgr, speech_wav, tmp_path,
                                                     monkeypatch):
    """The render pass starts after the first frames' boxes, not after the whole detection pass."""
    import soundfile

    from media import io as media

    clip = make_face_clip(tmp_path / "long.mp4", face_image_bgr, None, seconds=10.0)  # 250 frames
    wav, rate = load_audio(speech_wav, sample_rate=16000)
    speech = tmp_path / "long.wav"
    soundfile.write(speech, np.tile(wav, 4)[:10 * 16000], 16000)
    at_first_write: list[int] = []
    real_write = media.VideoWriter.write

    def write(self, frame):
        if not at_first_write:
            at_first_write.append(planted.calls)
        real_write(self, frame)

    monkeypatch.setattr(media.VideoWriter, "write", write)
    result = engine.run(clip, speech, tmp_path / "out.mp4", LipSyncOptions(cache_detections=False))
    assert result.n_frames == 250 and result.no_face_ranges == []
    assert 0 < at_first_write[0] < planted.calls / 2, (at_first_write, planted.calls)


def test_segments_are_handed_over_while_the_run_goes_on(engine, face_clip, speech_wav, tmp_path, monkeypatch):
    from media import io as media
    from media.segments import Segments

    written = [0]
    real_write = media.VideoWriter.write

    def write(self, frame):
        real_write(self, frame)
        written[0] += 1

    monkeypatch.setattr(media.VideoWriter, "write", write)
    pieces: list[tuple[Path, int]] = []
    folder = tmp_path / "pieces"
    folder.mkdir()
    segments = Segments(folder, 1.0, lambda path: pieces.append((path, written[0])))
    result = engine.run(face_clip, speech_wav, tmp_path / "out.mp4", LipSyncOptions(box=CLIP_BOX), segments=segments)
    assert len(pieces) == -(-result.n_frames // 25)
    assert pieces[0][1] == 24  # the first piece went out while its last frame was being written
    assert pieces[1][1] < result.n_frames  # and the next before the last frame was written
    frames = [f for path, _ in pieces for f in iter_frames(path)]
    assert len(frames) == result.n_frames
    whole = list(iter_frames(tmp_path / "out.mp4"))
    for got, want in zip(frames[25:], whole[25:], strict=True):  # the output's packets
        np.testing.assert_array_equal(got, want)
    # the first piece was encoded on its own with the same settings
    assert np.abs(np.stack(frames[:25]).astype(int) - np.stack(whole[:25])).mean() < 1.0


def test_decoding_ahead_and_encoding_behind_give_the_same_output(engine, face_clip, speech_wav, tmp_path,
                                                                 monkeypatch):
    """The decode-ahead and encode-behind threads change nothing in the output."""
    monkeypatch.setattr(engine, "overlap", False)
    engine.run(face_clip, speech_wav, tmp_path / "plain.mkv", LipSyncOptions(box=CLIP_BOX))
    monkeypatch.setattr(engine, "overlap", True)
    result = engine.run(face_clip, speech_wav, tmp_path / "overlap.mkv", LipSyncOptions(box=CLIP_BOX))
    frames = list(iter_frames(tmp_path / "overlap.mkv"))
    assert len(frames) == result.n_frames
    for got, want in zip(frames, iter_frames(tmp_path / "plain.mkv"), strict=True):
        np.testing.assert_array_equal(got, want)


def test_no_face_frames_pass_through_and_strict_stops(engine, planted, face_image_bgr, speech_wav, tmp_path):
    import cv2

    clip = tmp_path / "gap.mp4"
    grey = np.full((240, 320, 3), 128, np.uint8)
    face = cv2.resize(face_image_bgr[20:300, 130:380], (140, 156))
    from media.io import VideoWriter

    with VideoWriter(clip, 320, 240, Fraction(25)) as w:
        for i in range(50):
            frame = grey.copy()
            if not 20 <= i < 40:  # 20 faceless frames: more than max_gap 10
                frame[40:196, 60:200] = face
            w.write(frame)
    result = engine.run(clip, speech_wav, tmp_path / "gap_out.mp4", LipSyncOptions(max_gap=10))
    assert result.no_face_ranges and result.no_face_ranges[0][0] in range(18, 22)
    assert "left unchanged" in result.message
    with pytest.raises(NoFaceError, match=r"frames 2\d-\d\d .*strict"):
        engine.run(clip, speech_wav, tmp_path / "strict.mp4", LipSyncOptions(max_gap=10, strict=True))
    assert not (tmp_path / "strict.mp4").exists()


def test_no_face_anywhere_is_a_clear_error(engine, planted, speech_wav, tmp_path):
    from media.io import VideoWriter

    clip = tmp_path / "empty.mp4"
    with VideoWriter(clip, 64, 48, Fraction(25)) as w:
        for _ in range(10):
            w.write(np.full((48, 64, 3), 128, np.uint8))  # the canvas grey: no face
    with pytest.raises(NoFaceError, match="No face found in any of the 10 frames"):
        engine.run(clip, speech_wav, tmp_path / "x.mp4")
    assert not (tmp_path / "x.mp4").exists()


def run_cli(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lipsync", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def test_cli_bad_inputs_exit_2_without_traceback(weights_dir, face_clip, speech_wav, tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("just some text")
    silent_video = make_face_clip(tmp_path / "mute.mp4", np.full((300, 400, 3), 200, np.uint8), None, seconds=0.5)
    empty = tmp_path / "empty.wav"
    import soundfile

    soundfile.write(empty, np.zeros(0, np.float32), 16000)
    image = tmp_path / "pic.png"
    import cv2

    cv2.imwrite(str(image), np.zeros((20, 20, 3), np.uint8))
    cases = [(text, speech_wav), (face_clip, silent_video), (face_clip, empty), (face_clip, image),
             (face_clip, tmp_path / "missing.wav")]
    for face, audio in cases:
        out = tmp_path / "o.mp4"
        proc = run_cli(face, audio, "-o", out, "--box", *map(str, CLIP_BOX))
        assert proc.returncode == 2, (face, audio, proc.stderr)
        assert "Traceback" not in proc.stderr and "\nerror: " in "\n" + proc.stderr, proc.stderr
        assert not out.exists()
    assert leftovers() == []


def test_cli_odd_sizes_spaces_and_sample_rates(weights_dir, face_image_bgr, tmp_path):
    import soundfile

    weird = tmp_path / "dir with spaces; $(echo no) & 'quotes'"
    weird.mkdir()
    t = np.arange(int(1.0 * 48000)) / 48000
    tone = 0.3 * np.sin(2 * np.pi * 220 * t)
    for rate in (8000, 44100, 48000):
        n = int(rate * 1.0)
        soundfile.write(weird / f"a{rate}.wav", np.stack([tone[:n], tone[:n]], 1).astype(np.float32), rate)
    tiny = make_face_clip(weird / "one.mp4", face_image_bgr, None, seconds=0.2, size=(1, 1))
    odd = make_face_clip(weird / "odd.mp4", face_image_bgr, None, seconds=0.4, size=(321, 241))
    proc = run_cli(tiny, weird / "a8000.wav", "-o", weird / "t.mp4", "--box", "0", "1", "0", "1")
    assert proc.returncode == 0, proc.stderr
    assert (probe(weird / "t.mp4").width, probe(weird / "t.mp4").height) in ((1, 1), (2, 2))
    for rate in (8000, 44100, 48000):
        out = weird / f"odd {rate}.mp4"
        proc = run_cli(odd, weird / f"a{rate}.wav", "-o", out, "--box", "30", "200", "40", "220")
        assert proc.returncode == 0, proc.stderr
        info = probe(out)
        assert (info.width, info.height) in ((321, 241), (322, 242))
        assert info.has_audio


def test_parallel_runs_do_not_share_files(weights_dir, face_clip, speech_wav, tmp_path):
    outs = [tmp_path / f"p{i}.mp4" for i in range(2)]
    procs = [subprocess.Popen([sys.executable, "-m", "lipsync", str(face_clip), str(speech_wav), "-o", str(o),
                               "--box", *map(str, CLIP_BOX), "-q"], stderr=subprocess.PIPE, text=True)
             for o in outs]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    assert all(probe(o).has_audio for o in outs)


def test_rotated_phone_video_is_upright(engine, face_image_bgr, speech_wav, tmp_path):
    clip = make_face_clip(tmp_path / "flat.mp4", face_image_bgr, None, seconds=0.4, size=(320, 240))
    rotated = tmp_path / "rotated.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(clip), "-c", "copy", "-metadata:s:v", "rotate=90",
                    str(rotated)], check=True)
    info = probe(rotated)
    assert (info.width, info.height) == (240, 320)
    out = tmp_path / "rot_out.mp4"
    engine.run(rotated, speech_wav, out, LipSyncOptions(box=(10, 300, 10, 230)))
    assert streams(out)["size"] == (240, 320)


def test_options_reach_errors(engine, face_clip, speech_wav, tmp_path):
    with pytest.raises(InputError, match="crop"):
        engine.run(face_clip, speech_wav, tmp_path / "c.mp4", LipSyncOptions(crop=(500, -1, 0, -1), box=CLIP_BOX))


def test_silent_audio_is_a_documented_graceful_result(engine, face_clip, tmp_path, caplog):
    import soundfile

    silence = tmp_path / "silence.wav"
    soundfile.write(silence, np.zeros(16000, np.float32), 16000)
    result = engine.run(face_clip, silence, tmp_path / "quiet.mp4", LipSyncOptions(box=CLIP_BOX))
    assert result.n_frames == 25 and probe(result.output).has_audio
    assert any("silent" in r.getMessage() for r in caplog.records)


# -- silence="keep", a voice track, the one-frame preview ----------------------------------------------
def test_silence_keep_shows_the_input_frames_in_a_silent_stretch(engine, face_image_bgr, gapped_speech, tmp_path):
    audio, start, end = gapped_speech
    seconds = len(load_audio(audio, sample_rate=16000)[0]) / 16000
    clip = make_face_clip(tmp_path / "quiet face.mp4", face_image_bgr, None, seconds=seconds + 0.2)
    out = tmp_path / "kept.mkv"  # lossless: the kept frames come back bit for bit
    result = engine.run(clip, audio, out, LipSyncOptions(box=CLIP_BOX, silence="keep"))
    assert "voice activity" in result.timings
    src, dst = list(iter_frames(clip)), list(iter_frames(out))
    assert len(dst) == result.n_frames
    t = np.arange(len(dst)) / 25
    # past the fade (0.2 s) and the generator's 0.2 s look-ahead at the far end: the input, exactly
    silent = np.flatnonzero((t > start + 0.25) & (t < end - 0.45))
    assert len(silent) > 25
    for i in silent:
        assert np.array_equal(dst[i], src[i]), f"frame {i} ({t[i]:.2f} s) inside the silence was changed"
    wav = load_audio(audio, sample_rate=16000)[0]
    voiced = [i for i in range(len(dst)) if np.sqrt(np.mean(wav[i * 640:(i + 1) * 640] ** 2)) > 0.05]
    assert len(voiced) > 20
    top, bottom, left, right = CLIP_BOX
    for i in voiced:
        assert not np.array_equal(dst[i][top:bottom, left:right], src[i][top:bottom, left:right]), i


def test_silence_animate_is_the_default_and_runs_no_voice_activity(engine, face_clip, speech_wav):
    assert LipSyncOptions().silence == "animate"
    plan = engine.plan(face_clip, speech_wav, LipSyncOptions(box=CLIP_BOX))
    assert plan.weights is None and plan.weight(0) == 1.0 and "voice activity" not in plan.watch.totals


def _mix_with_tone(speech: Path, out: Path, *, trim: float = 0.0) -> Path:
    import soundfile

    wav, rate = load_audio(speech, sample_rate=None, mono=True)
    wav = wav[:len(wav) - round(trim * rate)]
    tone = 0.2 * np.sin(2 * np.pi * 440 * np.arange(len(wav)) / rate)
    soundfile.write(out, (0.5 * wav + tone).astype(np.float32), rate)
    return out


def test_voice_drives_the_lips_and_audio_is_what_plays(engine, face_clip, speech_wav, tmp_path):
    from lipsync.pipeline import load_speech

    mix = _mix_with_tone(speech_wav, tmp_path / "mix.wav")
    plan = engine.plan(face_clip, mix, LipSyncOptions(box=CLIP_BOX), voice=speech_wav)
    alone = load_speech(speech_wav, 25.0)
    np.testing.assert_array_equal(plan.speech.chunks, alone.chunks)
    np.testing.assert_array_equal(plan.speech.track, load_audio(mix, sample_rate=None, mono=False)[0])
    assert not np.array_equal(load_speech(mix, 25.0).chunks, alone.chunks)
    short = _mix_with_tone(speech_wav, tmp_path / "short.wav", trim=0.02)  # within a frame (0.04 s): fine
    assert engine.plan(face_clip, short, LipSyncOptions(box=CLIP_BOX), voice=speech_wav).n_out == plan.n_out


def test_voice_of_another_length_is_refused_with_the_difference(engine, face_clip, speech_wav, tmp_path):
    short = _mix_with_tone(speech_wav, tmp_path / "short.wav", trim=0.7)
    seconds = len(load_audio(speech_wav, sample_rate=16000)[0]) / 16000
    message = (rf"the voice track is {seconds:.2f} s, the audio {seconds - 0.7:.2f} s \(the voice track is 0.70 s "
               r"longer\): they must be the same length within 0.04 s; trim one of them")
    with pytest.raises(InputError, match=message):
        engine.run(face_clip, short, tmp_path / "x.mp4", LipSyncOptions(box=CLIP_BOX), voice=speech_wav)
    with pytest.raises(InputError, match=r"\(the audio is 0.70 s longer\)"):
        engine.plan(face_clip, speech_wav, LipSyncOptions(box=CLIP_BOX), voice=short)
    assert not (tmp_path / "x.mp4").exists()
    proc = run_cli(face_clip, short, "-o", tmp_path / "c.mp4", "--voice", speech_wav, "--box", *map(str, CLIP_BOX))
    assert proc.returncode == 2 and "error: the voice track is" in proc.stderr and "Traceback" not in proc.stderr


def box_outline(frame: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The pixels of the 1-px outline of ``box`` (x1 y1 x2 y2, exclusive ends)."""
    x1, y1, x2, y2 = box
    return np.concatenate([frame[y1, x1:x2], frame[y2 - 1, x1:x2], frame[y1:y2, x1], frame[y1:y2, x2 - 1]])


def test_preview_is_the_run_s_frame_with_the_box_drawn(engine, boxed_mkv, face_clip, speech_wav):
    from lipsync.pipeline import PREVIEW_BOX_BGR

    _, out = boxed_mkv
    top, bottom, left, right = CLIP_BOX
    for at in (0.0, 1.3):
        preview = engine.preview(face_clip, speech_wav, at, LipSyncOptions(box=CLIP_BOX))
        i = int(at * 25)
        frame = next(f for k, f in enumerate(iter_frames(out)) if k == i)
        assert preview.shape == frame.shape and preview.dtype == np.uint8
        assert (box_outline(preview, (left, top, right, bottom)) == PREVIEW_BOX_BGR).all()
        inner = (slice(top + 2, bottom - 2), slice(left + 2, right - 2))  # inside the 2-px lines
        # the run's own mouth: the run generates 16 faces a pass and the preview one, so the convolutions
        # sum in another order and a pixel may round one level apart
        assert np.abs(preview[inner].astype(int) - frame[inner]).max() <= 1
        outside = np.ones(frame.shape[:2], bool)
        outside[top:bottom, left:right] = False
        assert np.array_equal(preview[outside], frame[outside])


def test_preview_detects_on_its_frame_and_says_when_there_is_no_face(engine, planted, face_clip, speech_wav,
                                                                    tmp_path):
    from lipsync.pipeline import PREVIEW_BOX_BGR

    src = next(iter_frames(face_clip))
    (x1, y1, x2, y2, _), = CanvasDetector().detect([src])[0]
    preview = engine.preview(face_clip, speech_wav, 0.0, LipSyncOptions(pads=(0, 10, 0, 0), cache_detections=False))
    assert planted.calls == 1  # one frame detected, not the whole video
    padded = (int(x1), int(y1), int(x2), min(240, int(y2) + 10))
    assert (box_outline(preview, padded) == PREVIEW_BOX_BGR).all()
    from media.io import VideoWriter

    blank = tmp_path / "blank.mp4"
    with VideoWriter(blank, 64, 48, Fraction(25)) as w:
        for _ in range(10):
            w.write(np.full((48, 64, 3), 128, np.uint8))
    with pytest.raises(NoFaceError, match="No face found in the frame at 0.20 s of blank.mp4"):
        engine.preview(blank, speech_wav, 0.2)
    with pytest.raises(InputError, match="preview time"):
        engine.preview(face_clip, speech_wav, -1.0)

# -- frames too small for the face detector, degenerate boxes ---------------------------------------------

def plain_clip(path: Path, width: int, height: int, n: int = 10, value: int = 90) -> Path:
    from media.io import VideoWriter

    with VideoWriter(path, width, height, Fraction(25)) as w:
        for i in range(n):
            w.write(np.full((height, width, 3), (value + 7 * i) % 256, np.uint8))
    return path


@pytest.fixture(scope="module")
def short_speech(tmp_path_factory) -> Path:
    """0.4 s of a tone: ten output frames."""
    import soundfile

    path = tmp_path_factory.mktemp("short") / "tone.wav"
    t = np.arange(6400) / 16000
    soundfile.write(path, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000)
    return path


@pytest.mark.parametrize(("width", "height"), [(2, 2), (16, 12), (1920, 8), (30, 400)])
@pytest.mark.parametrize("detection", ["fast", "original"])
def test_frames_too_small_for_the_detector_say_so(engine, short_speech, tmp_path, width, height, detection):
    clip = plain_clip(tmp_path / "tiny.mp4", width, height)
    with pytest.raises(NoFaceError, match=rf"frames are {width}x{height} px, too small .* at least 32 px"):
        engine.run(clip, short_speech, tmp_path / "x.mp4", LipSyncOptions(detection=detection))
    assert not (tmp_path / "x.mp4").exists()
    # a fixed box needs no detector: the frames are lip-synced as they are
    result = engine.run(clip, short_speech, tmp_path / "boxed.mp4", LipSyncOptions(box=(0, height, 0, width)))
    assert (result.width, result.height) == (width, height) and result.n_frames == 10


def test_too_small_after_resize_names_the_options(engine, short_speech, tmp_path):
    clip = plain_clip(tmp_path / "small.mp4", 96, 60)
    with pytest.raises(NoFaceError, match="48x30 px after resize_factor"):
        engine.run(clip, short_speech, tmp_path / "x.mp4", LipSyncOptions(resize_factor=2))


def test_shrink_scale_keeps_the_short_side_detectable():
    from lipsync.detect import shrink_scale

    assert shrink_scale((240, 320), 320) == 1.0
    assert shrink_scale((1080, 1920), 320) == 1 / 6  # unchanged wherever the shrunk frame was usable
    assert shrink_scale((40, 1920), 320) == 0.8  # 1536x32, not 320x7
    assert shrink_scale((30, 1920), 320) == 1.0  # never enlarged: such frames are refused before


def test_extreme_aspect_ratio_reaches_the_real_detector(engine, short_speech, tmp_path, monkeypatch):
    """A 1920x40 strip: the fast preset hands S3FD 1536x32 frames, which it runs on (it crashed on 320x7)."""
    real = engine.detector()
    seen: list[tuple[int, ...]] = []

    class Recording:
        def detect(self, frames, **kwargs):
            seen.extend(f.shape for f in frames)
            return real.detect(frames, **kwargs)

    monkeypatch.setattr(engine, "detector", lambda *_: Recording())
    clip = plain_clip(tmp_path / "strip.mp4", 1920, 40)
    try:
        engine.run(clip, short_speech, tmp_path / "strip_out.mp4", LipSyncOptions(cache_detections=False))
    except NoFaceError as exc:  # random weights may or may not "see" a face in a flat strip
        assert "No face found in any of the 10 frames" in str(exc)
    assert seen and {s[:2] for s in seen} == {(32, 1536)}


class ThinBoxDetector:
    """A 'face' one pixel wide (and one pixel high at frame 3) on every frame."""

    def detect(self, frames, scale: float = 1.0):
        return [np.array([[50, 40, 51, 41 if i == 3 else 80, 0.99]], np.float32) for i, _ in enumerate(frames)]


def test_one_pixel_boxes_reach_the_generator(engine, short_speech, tmp_path, monkeypatch):
    """Detected and fixed boxes one pixel wide: the 96x96 crop is an upscaled column, pasted back into it."""
    monkeypatch.setattr(engine, "detector", lambda *_: ThinBoxDetector())
    clip = plain_clip(tmp_path / "plain.mp4", 160, 120)
    out = tmp_path / "thin.mkv"
    result = engine.run(clip, short_speech, out, LipSyncOptions(detection="original", nosmooth=True, pads=(0, 0, 0, 0),
                                                                cache_detections=False))
    assert result.no_face_ranges == [] and result.n_frames == 10
    src, dst = list(iter_frames(clip)), list(iter_frames(out))
    outside = np.ones((120, 160), bool)
    outside[40:80, 50:51] = False
    assert all(np.array_equal(a[outside], b[outside]) for a, b in zip(src, dst, strict=True))
    fixed = engine.run(clip, short_speech, tmp_path / "fixed.mkv", LipSyncOptions(box=(60, 61, 70, 71)))
    assert fixed.n_frames == 10


def test_should_stop_ends_the_run_between_batches_and_leaves_nothing(engine, face_clip, speech_wav, tmp_path):
    from common.errors import Cancelled

    asked = []

    def stop_at_third() -> bool:
        asked.append(1)
        return len(asked) == 3

    out = tmp_path / "stopped.mp4"
    with pytest.raises(Cancelled, match="output frame 32 of"):
        engine.run(face_clip, speech_wav, out, LipSyncOptions(box=CLIP_BOX, wav2lip_batch_size=16),
                   should_stop=stop_at_third)
    assert len(asked) == 3 and not out.exists() and leftovers() == []
    result = engine.run(face_clip, speech_wav, out, LipSyncOptions(box=CLIP_BOX), should_stop=lambda: False)
    assert result.n_frames > 0 and out.exists()


def test_detector_runs_winograd_layers_in_float32_on_cpu_only(engine):
    def winograd_layers(detector) -> int:
        return sum(isinstance(m, WinogradConv2d) for m in detector.net.modules())

    fp32 = engine.detector()  # the 9 wide layers and the 3 first ones that are Winograd on one thread only
    assert winograd_layers(fp32) == 12 and engine.detector(torch.float32) is fp32
    # where Winograd layers do not apply (16-bit formats, GPUs), the detector runs direct convolutions
    bf16 = engine.detector(torch.bfloat16)
    assert bf16 is not fp32 and winograd_layers(bf16) == 0 and engine.detector(torch.bfloat16) is bf16
