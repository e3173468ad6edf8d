"""media.io: probing, decoding (rotation, retiming), audio loading, writing, and bad inputs.

Test media is made here: with numpy/soundfile, with our own writer, and with the ffmpeg program
(argument lists, test generation only) as an independent reference for rotation and retiming.
"""

from __future__ import annotations

import inspect
import shutil
import struct
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import soundfile

from common.errors import InputError
from media.io import (
    MediaInfo,
    VideoWriter,
    frame_at,
    iter_frames,
    load_audio,
    orientation_from_matrix,
    probe,
    resample_by_time,
)

NTSC = Fraction(30000, 1001)


def ffmpeg(*args: str | Path) -> bytes:
    """Run the ffmpeg program (test media only) and return its stdout."""
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise RuntimeError("the ffmpeg program makes the test media: install the Debian package ffmpeg")
    done = subprocess.run([exe, "-nostdin", "-v", "error", "-y", *map(str, args)], capture_output=True)
    if done.returncode:
        raise RuntimeError(f"ffmpeg failed: {done.stderr.decode(errors='replace')}")
    return done.stdout


def ffmpeg_frames(path: Path, width: int, height: int, *args: str) -> np.ndarray:
    """Frames decoded by the ffmpeg program as BGR (n, height, width, 3), e.g. autorotated."""
    raw = ffmpeg("-i", path, *args, "-f", "rawvideo", "-pix_fmt", "bgr24", "-")
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)


def tone(rate: int, seconds: float, freqs=(440.0,), amplitude: float = 0.5) -> np.ndarray:
    """(channels, n) float32 sines, one frequency per channel."""
    t = np.arange(round(rate * seconds)) / rate
    return np.stack([amplitude * np.sin(2 * np.pi * f * t) for f in freqs]).astype(np.float32)


def pattern(height: int, width: int, index: int = 0) -> np.ndarray:
    """A smooth picture with a distinct corner, so orientation and codecs are easy to check."""
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1),
                      np.full_like(x, (index * 37) % 256)], axis=-1).astype(np.uint8)
    image[: max(height // 4, 1), : max(width // 4, 1)] = (0, 0, 255)
    return image


def write_clip(path: Path, n: int, size=(64, 48), fps: Fraction = Fraction(25), audio=None,
               audio_rate=None, frames=None) -> Path:
    width, height = size
    with VideoWriter(path, width, height, fps, audio=audio, audio_rate=audio_rate) as writer:
        for i in range(n):
            writer.write(frames[i] if frames is not None else pattern(height, width, i))
    return path


def top_level_boxes(path: Path) -> list[str]:
    """The top-level MP4 box types, in file order."""
    names = []
    with open(path, "rb") as f:
        while header := f.read(8):
            size, kind = struct.unpack(">I4s", header)
            if size == 1:
                size = struct.unpack(">Q", f.read(8))[0] - 8
            names.append(kind.decode("latin-1"))
            f.seek(size - 8, 1)
    return names


@pytest.fixture(scope="module")
def wav_22k(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """1 s of 16-bit stereo at 22050 Hz and the exact float values stored in it."""
    audio = tone(22050, 1.0, (300.0, 500.0))
    path = tmp_path_factory.mktemp("wav") / "tone.wav"
    soundfile.write(path, audio.T, 22050, subtype="PCM_16")
    stored, _ = soundfile.read(path, dtype="float32", always_2d=True)
    return path, stored.T


# --- round trips -------------------------------------------------------------------------------


def test_mp4_round_trip_ntsc(tmp_path):
    n = 30
    audio = tone(48000, n / NTSC, (440.0, 660.0))  # stereo, exactly as long as the video
    path = write_clip(tmp_path / "out.mp4", n, size=(64, 48), fps=NTSC, audio=audio, audio_rate=48000)

    info = probe(path)
    assert isinstance(info, MediaInfo)
    assert (info.width, info.height, info.fps, info.n_frames) == (64, 48, NTSC, n)
    assert info.fps == NTSC and isinstance(info.fps, Fraction)
    assert not info.is_image and info.has_video and info.has_audio and info.rotation == 0
    assert (info.audio_sample_rate, info.audio_channels) == (48000, 2)
    assert info.duration == pytest.approx(float(n / NTSC), abs=1e-6)
    with av.open(str(path)) as container:
        video, sound = container.streams.video[0], container.streams.audio[0]
        assert video.codec_context.name == "h264" and video.codec_context.pix_fmt == "yuv420p"
        assert sound.codec_context.name == "aac" and sound.codec_context.layout.nb_channels == 2
        audio_seconds = float(sound.duration * sound.time_base)
        assert container.duration / av.time_base == pytest.approx(audio_seconds, abs=1 / 48000 * 2)
    assert abs(audio_seconds - info.duration) <= float(1 / NTSC)
    assert top_level_boxes(path).index("moov") < top_level_boxes(path).index("mdat")  # +faststart

    frames = list(iter_frames(path))
    assert len(frames) == n
    assert all(f.shape == (48, 64, 3) and f.dtype == np.uint8 and f.flags.c_contiguous for f in frames)
    assert np.abs(frames[5].astype(int) - pattern(48, 64, 5)).mean() < 4  # lossy but close

    decoded, rate = load_audio(path, sample_rate=None, mono=False)
    assert rate == 48000 and decoded.shape == audio.shape  # priming and padding trimmed
    assert np.abs(decoded - audio).mean() < 0.01


def test_mkv_round_trip_is_lossless(tmp_path, wav_22k):
    wav, stored = wav_22k
    audio, rate = load_audio(wav, sample_rate=None, mono=False)
    n = round(audio.shape[1] / rate * 30000 / 1001)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (n, 41, 53, 3), dtype=np.uint8)  # noise and odd sizes: worst case
    path = write_clip(tmp_path / "out.mkv", n, size=(53, 41), fps=NTSC, audio=audio, audio_rate=rate,
                      frames=frames)

    info = probe(path)
    assert (info.width, info.height, info.fps, info.n_frames) == (53, 41, NTSC, n)
    assert info.duration == pytest.approx(float(n / NTSC), abs=1e-3)  # Matroska counts milliseconds
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name == "ffv1"
        assert container.streams.video[0].codec_context.pix_fmt == "bgr0"
        assert container.streams.audio[0].codec_context.name == "flac"
    decoded = np.stack(list(iter_frames(path)))
    np.testing.assert_array_equal(decoded, frames)
    back, back_rate = load_audio(path, sample_rate=None, mono=False)
    assert back_rate == 22050
    np.testing.assert_array_equal(back, stored)  # 16-bit audio survives FLAC exactly


def test_mp4_colours_are_not_shifted_and_decode_like_ffmpeg(tmp_path):
    colours = [(128, 128, 128), (0, 0, 0), (255, 255, 255), (40, 60, 200), (60, 180, 70), (200, 90, 30),
               (90, 140, 190)]  # BGR: grey, black, white, red, green, blue, skin
    frame = np.concatenate([np.tile(np.array(c, np.uint8), (32, 32, 1)) for c in colours], axis=1)
    path = write_clip(tmp_path / "patches.mp4", 3, size=(frame.shape[1], 32), frames=[frame] * 3)
    decoded = next(iter_frames(path))
    centre = decoded[8:24].reshape(16, len(colours), 32, 3)[:, :, 8:24].astype(int)
    errors = centre - np.array(colours)[None, :, None]
    assert (centre[:, 0] == 128).all()  # mid-grey stays exactly grey
    assert np.abs(errors).mean() < 1.5 and abs(errors.mean()) < 1.0
    # the bytes FFmpeg's own yuv -> bgr conversion gives (as cv2.VideoCapture does too)
    np.testing.assert_array_equal(decoded, ffmpeg_frames(path, frame.shape[1], 32)[0])


def test_odd_size_is_padded_with_the_last_row_and_column(tmp_path):
    frame = pattern(241, 321)
    path = write_clip(tmp_path / "odd.mp4", 3, size=(321, 241), frames=[frame] * 3)
    info = probe(path)
    assert (info.width, info.height) == (322, 242)
    out = next(iter_frames(path)).astype(int)
    assert np.abs(out[:241, :321] - frame).mean() < 3
    assert np.abs(out[241] - out[240]).mean() < 2 and np.abs(out[:, 321] - out[:, 320]).mean() < 2


def test_one_by_one_video(tmp_path):
    mp4 = write_clip(tmp_path / "dot.mp4", 3, size=(1, 1), frames=[np.full((1, 1, 3), 200, np.uint8)] * 3)
    assert (probe(mp4).width, probe(mp4).height) == (2, 2)
    made = tmp_path / "dot.mkv"
    ffmpeg("-f", "lavfi", "-i", "color=c=red:size=16x16:rate=25", "-vf", "scale=1:1", "-frames:v", "3",
           "-c:v", "ffv1", made)
    info = probe(made)
    assert (info.width, info.height, info.fps) == (1, 1, 25)
    frames = list(iter_frames(made))
    assert len(frames) == 3 and frames[0].shape == (1, 1, 3)
    assert abs(int(frames[0][0, 0, 2]) - 254) <= 2 and frames[0][0, 0, 0] <= 2  # red in BGR


def test_odd_sized_input_video(tmp_path):
    path = tmp_path / "odd.mkv"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=321x241:rate=25", "-frames:v", "4", "-c:v", "ffv1", path)
    info = probe(path)
    assert (info.width, info.height, info.n_frames) == (321, 241, 4)
    frames = list(iter_frames(path))
    assert len(frames) == 4 and frames[0].shape == (241, 321, 3)
    expected = ffmpeg_frames(path, 321, 241)
    assert np.abs(np.stack(frames).astype(int) - expected).mean() < 1.5  # same pixels, other swscale


def test_audio_at_an_aac_unfriendly_rate_is_resampled(tmp_path):
    audio = tone(37800, 0.5)
    path = write_clip(tmp_path / "odd rate.mp4", 12, fps=Fraction(24), audio=audio, audio_rate=37800)
    info = probe(path)
    assert info.audio_sample_rate == 44100 and info.audio_channels == 1
    back, rate = load_audio(path, sample_rate=None)
    assert rate == 44100 and abs(len(back) - 0.5 * 44100) <= 2


def test_mov_output_and_a_path_with_shell_characters(tmp_path):
    folder = tmp_path / "my clips; $(rm -rf x) 'q' \"dq\" & more"
    folder.mkdir()
    path = write_clip(folder / "out:1 |2| *.mov", 5, audio=tone(16000, 0.2), audio_rate=16000)
    assert path.exists() and probe(path).n_frames == 5 and probe(path).has_audio
    assert len(list(iter_frames(path))) == 5


# --- the writer's failure handling -------------------------------------------------------------


def test_exception_inside_the_writer_removes_the_file(tmp_path):
    path = tmp_path / "broken.mp4"
    with pytest.raises(KeyError), VideoWriter(path, 64, 48, 25) as writer:
        writer.write(pattern(48, 64))
        raise KeyError("boom")
    assert not path.exists()


def test_wrong_frame_and_no_frames_remove_the_file(tmp_path):
    path = tmp_path / "bad.mkv"
    with pytest.raises(ValueError, match="shape"), VideoWriter(path, 64, 48, 25) as writer:
        writer.write(np.zeros((48, 65, 3), np.uint8))
    assert not path.exists()
    writer = VideoWriter(path, 64, 48, 25)
    with pytest.raises(ValueError, match="no frames"):
        writer.close()
    assert not path.exists()


def test_writer_rejects_unknown_extensions_and_missing_folders(tmp_path):
    with pytest.raises(InputError, match=".mp4"):
        VideoWriter(tmp_path / "x.avi", 64, 48, 25)
    with pytest.raises(InputError, match="folder"):
        VideoWriter(tmp_path / "missing" / "x.mp4", 64, 48, 25)


# --- rotation ----------------------------------------------------------------------------------


@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_rotation_metadata_is_applied(tmp_path, degrees):
    plain = write_clip(tmp_path / "plain.mp4", 2, size=(64, 48))
    rotated = tmp_path / f"rotated {degrees}.mp4"
    # FFmpeg 5.1 turns the legacy "rotate" tag into a display matrix (newer: -display_rotation).
    ffmpeg("-i", plain, "-c", "copy", "-metadata:s:v", f"rotate={degrees}", rotated)

    info = probe(rotated)
    upright = np.stack(list(iter_frames(rotated)))
    sideways = degrees in (90, 270)
    assert (info.width, info.height) == ((48, 64) if sideways else (64, 48))
    assert upright.shape[1:3] == (info.height, info.width)
    reference = ffmpeg_frames(rotated, info.width, info.height)  # ffmpeg autorotates by default
    assert np.abs(upright.astype(int) - reference).mean() < 1.5
    stored = np.stack(list(iter_frames(plain)))
    np.testing.assert_array_equal(upright, np.rot90(stored, info.rotation // 90, axes=(1, 2)))


def test_display_matrix_with_mirror(tmp_path):
    path = tmp_path / "mirror.mkv"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "bgr0"
        stream.set_display_rotation(90, hflip=True)
        frame = av.VideoFrame.from_ndarray(pattern(48, 64), format="bgr24").reformat(format="bgr0")
        frame.pts = 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    ours = next(iter_frames(path))
    np.testing.assert_array_equal(ours, ffmpeg_frames(path, 48, 64)[0])


def _matrix(a, b, c, d):
    one = 1 << 16
    return np.array([a * one, b * one, 0, c * one, d * one, 0, 0, 0, 1 << 30], np.int32)


def test_orientation_from_planted_matrices():
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    identity = orientation_from_matrix(_matrix(1, 0, 0, 1))
    assert identity.rotation == 0 and identity.apply(image) is image
    ccw = orientation_from_matrix(_matrix(0, -1, 1, 0))  # x' = y, y' = -x: a quarter turn left
    assert ccw.rotation == 90
    np.testing.assert_array_equal(ccw.apply(image), np.rot90(image, 1))
    half = orientation_from_matrix(_matrix(-1, 0, 0, -1))
    assert half.rotation == 180
    np.testing.assert_array_equal(half.apply(image), np.rot90(image, 2))
    mirror = orientation_from_matrix(_matrix(-1, 0, 0, 1))
    np.testing.assert_array_equal(mirror.apply(image), image[:, ::-1])
    assert orientation_from_matrix(np.zeros(9, np.int32)).apply(image) is image


# --- frame rates and retiming ------------------------------------------------------------------


def test_resample_by_time_with_planted_timestamps():
    def items(rate, n):
        return [(Fraction(i) / rate, Fraction(i + 1) / rate, i) for i in range(n)]

    assert list(resample_by_time(items(25, 5), Fraction(25))) == [0, 1, 2, 3, 4]
    # 50 -> 25: every other frame; 30 -> 25: one in six dropped
    assert list(resample_by_time(items(50, 8), Fraction(25))) == [0, 2, 4, 6]
    assert list(resample_by_time(items(30, 12), Fraction(25))) == [0, 1, 2, 4, 5, 6, 7, 8, 10, 11]
    # 12.5 -> 25: each frame twice; the start offset does not matter
    shifted = [(s + 7, e + 7, i) for s, e, i in items(Fraction(25, 2), 3)]
    assert list(resample_by_time(shifted, Fraction(25))) == [0, 0, 1, 1, 2, 2]
    # a single short frame still comes out once
    assert list(resample_by_time([(Fraction(0), Fraction(1, 100), "a")], Fraction(25))) == ["a"]
    assert list(resample_by_time([], Fraction(25))) == []


@pytest.mark.parametrize(("source_fps", "suffix"), [(Fraction(30), ".mkv"), (Fraction(24), ".mkv"),
                                                     (NTSC, ".mkv"), (Fraction(15), ".mkv"), (NTSC, ".mp4")])
def test_iter_frames_at_25_fps_matches_ffmpeg_fps_filter(tmp_path, source_fps, suffix):
    n = 20
    frames = [np.full((16, 16, 3), 10 * i, np.uint8) for i in range(n)]  # the index, readable back
    path = write_clip(tmp_path / f"count{suffix}", n, size=(16, 16), fps=source_fps, frames=frames)
    ours = [round(f[8, 8, 0] / 10) for f in iter_frames(path, fps=25)]
    reference = [round(v / 10) for v in ffmpeg_frames(path, 16, 16, "-vf", "fps=25")[:, 8, 8, 0]]
    assert ours == reference
    # ffmpeg -r 25 would drop later (it lets the picture lag up to 1.1 frames): not what we do
    assert len(ours) == round(n / source_fps * 25)


def test_repeated_frames_are_separate_arrays(tmp_path):
    path = write_clip(tmp_path / "slow.mp4", 3, fps=Fraction(10))
    frames = list(iter_frames(path, fps=25))
    assert len(frames) == round(3 / 10 * 25)
    frames[0][:] = 0  # drawing on one frame must not touch the repeats
    assert frames[1].any()


def test_frame_at_seeks_to_the_frame_iter_frames_gives(tmp_path):
    plain = write_clip(tmp_path / "plain.mp4", 60)
    short_gop = tmp_path / "gop 12.mp4"  # key frames every 12 frames, so seeking lands before the target
    ffmpeg("-i", plain, "-c:v", "libx264", "-g", "12", "-bf", "2", short_gop)
    rotated = tmp_path / "rotated.mp4"
    ffmpeg("-i", short_gop, "-c", "copy", "-metadata:s:v", "rotate=90", rotated)
    ntsc = write_clip(tmp_path / "ntsc.mkv", 40, fps=NTSC)
    for path, fps in ((short_gop, 25), (rotated, 25), (ntsc, float(NTSC))):
        frames = list(iter_frames(path))
        for j in (0, 1, 11, 12, 13, 30, len(frames) - 1):
            np.testing.assert_array_equal(frame_at(path, (j + 0.5) / fps), frames[j], err_msg=f"{path.name} {j}")
        np.testing.assert_array_equal(frame_at(path, 1000.0), frames[-1])  # past the end: the last frame
    image = tmp_path / "still.png"
    cv2.imwrite(str(image), pattern(30, 40))
    np.testing.assert_array_equal(frame_at(image, 3.0), pattern(30, 40))


def test_iter_frames_is_a_lazy_generator(tmp_path):
    path = write_clip(tmp_path / "lazy.mp4", 10)
    frames = iter_frames(path)
    assert inspect.isgenerator(frames)
    assert next(frames).shape == (48, 64, 3)
    frames.close()  # stops early and closes the file


# --- images ------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp"])
def test_images_are_one_frame(tmp_path, suffix):
    path = tmp_path / f"face{suffix}"
    image = pattern(40, 30)
    assert cv2.imwrite(str(path), image)
    info = probe(path)
    assert info.is_image and (info.width, info.height, info.n_frames) == (30, 40, 1)
    assert info.fps is None and info.duration is None and not info.has_audio
    frames = list(iter_frames(path, fps=25))
    assert len(frames) == 1 and frames[0].shape == (40, 30, 3)


def test_image_without_its_usual_name_and_exif_orientation(tmp_path):
    from PIL import Image

    image = pattern(40, 30)
    misnamed = tmp_path / "photo.bin"
    assert cv2.imwrite(str(tmp_path / "p.png"), image)
    (tmp_path / "p.png").rename(misnamed)
    info = probe(misnamed)
    assert info.is_image and (info.width, info.height) == (30, 40)
    np.testing.assert_array_equal(next(iter_frames(misnamed)), image)

    exif = Image.Exif()
    exif[0x0112] = 6  # EXIF Orientation 6: the camera was turned, show rotated 90 degrees clockwise
    photo = tmp_path / "phone.jpg"
    Image.fromarray(image[..., ::-1]).save(photo, exif=exif, quality=95)
    assert (probe(photo).width, probe(photo).height) == (40, 30)
    upright = next(iter_frames(photo))
    assert np.abs(upright.astype(int) - np.rot90(image, -1)).mean() < 6


def test_one_frame_video_counts_as_an_image(tmp_path):
    path = write_clip(tmp_path / "still.mp4", 1, fps=Fraction(5))
    info = probe(path)
    assert info.is_image and info.n_frames == 1 and info.fps is None
    assert len(list(iter_frames(path))) == 1
    assert len(list(iter_frames(path, fps=25))) == 1


# --- audio -------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [8000, 44100, 48000])
def test_stereo_wav_at_common_rates(tmp_path, rate):
    left, right = tone(rate, 0.5, (440.0,), 0.6)[0], tone(rate, 0.5, (440.0,), 0.2)[0]
    path = tmp_path / f"stereo {rate}.wav"
    soundfile.write(path, np.stack([left, right], axis=1), rate, subtype="PCM_16")

    mono, got_rate = load_audio(path)
    assert got_rate == 16000 and mono.dtype == np.float32 and mono.ndim == 1
    assert abs(len(mono) - 8000) <= 1
    expected = tone(16000, 0.5, (440.0,), 0.4)[0]  # the mean of the channels
    assert np.abs(mono[100:-100] - expected[100:-100]).max() < 0.01

    native, native_rate = load_audio(path, sample_rate=None, mono=False)
    assert native_rate == rate and native.shape == (2, len(left))
    np.testing.assert_allclose(native[0], left, atol=1 / 32768)


@pytest.mark.parametrize(("suffix", "codec"), [(".mp3", "libmp3lame"), (".m4a", "aac"), (".ogg", "libopus"),
                                               (".flac", "flac"), (".opus", "libopus")])
def test_compressed_audio_formats(tmp_path, wav_22k, suffix, codec):
    wav, stored = wav_22k
    path = tmp_path / f"speech{suffix}"
    ffmpeg("-i", wav, "-c:a", codec, path)
    samples, rate = load_audio(path)
    assert rate == 16000 and samples.dtype == np.float32
    assert abs(len(samples) - 16000) <= 0.03 * 16000  # encoders may pad a few ms
    assert np.abs(samples).max() <= 1.0
    reference, _ = load_audio(wav)
    n = min(len(samples), len(reference))
    correlation = np.corrcoef(samples[:n], reference[:n])[0, 1]
    assert correlation > 0.95


def test_audio_from_a_video(tmp_path, speech_wav):
    speech, rate = load_audio(speech_wav, sample_rate=None, mono=False)
    n = int(speech.shape[1] / rate * 25)
    path = write_clip(tmp_path / "talk.mp4", n, audio=speech, audio_rate=rate)
    samples, got = load_audio(path)
    reference, _ = load_audio(speech_wav)
    assert got == 16000 and abs(len(samples) - len(reference)) <= 1
    assert np.corrcoef(samples[: len(reference)], reference[: len(samples)])[0, 1] > 0.95


# --- bad inputs --------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.mp4"
    for call in (probe, load_audio, lambda p: next(iter_frames(p))):
        with pytest.raises(InputError, match="does not exist"):
            call(missing)


def test_text_file_renamed_mp4(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("these are my notes, not a video\n" * 20)
    with pytest.raises(InputError, match="not a video or image file"):
        probe(path)
    with pytest.raises(InputError, match="not a video or image file"):
        next(iter_frames(path))
    with pytest.raises(InputError, match="not an audio or video file"):
        load_audio(path)


def test_truncated_videos(tmp_path):
    n = 50
    whole = write_clip(tmp_path / "whole.mp4", n, size=(64, 48))  # index first (+faststart)
    half = tmp_path / "half.mp4"
    half.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(InputError, match="truncated"):
        probe(half)
    with pytest.raises(InputError, match="truncated"):
        list(iter_frames(half))

    index_last = tmp_path / "index last.mp4"  # as cameras write it: the index at the very end
    ffmpeg("-i", whole, "-c", "copy", "-movflags", "-faststart", index_last)
    assert top_level_boxes(index_last)[-1] == "moov"
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(index_last.read_bytes()[: index_last.stat().st_size // 2])
    with pytest.raises(InputError, match="damaged"):
        probe(cut)


def test_damage_mid_stream_names_the_frame(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (40, 48, 64, 3), dtype=np.uint8)
    path = write_clip(tmp_path / "scratched.mkv", 40, frames=frames)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 2000] = rng.integers(0, 256, 2000, dtype=np.uint8).tobytes()
    path.write_bytes(data)
    assert probe(path).n_frames == 40  # the start is fine
    with pytest.raises(InputError, match=r"damaged: decoding stopped at frame \d+ \(\d+\.\d\d s\)"):
        list(iter_frames(path))


def test_audio_only_file_as_video(wav_22k):
    with pytest.raises(InputError, match="no picture"):
        probe(wav_22k[0])


def test_video_without_audio_used_as_audio(tmp_path):
    path = write_clip(tmp_path / "silent film.mp4", 5)
    assert not probe(path).has_audio
    with pytest.raises(InputError, match="has no audio track: upload a file with speech"):
        load_audio(path)


def test_empty_wav(tmp_path):
    path = tmp_path / "empty.wav"
    soundfile.write(path, np.zeros((0, 1), np.float32), 16000, subtype="PCM_16")
    with pytest.raises(InputError, match="is empty"):
        load_audio(path)


def test_image_used_as_audio(tmp_path):
    photo = tmp_path / "face.png"
    assert cv2.imwrite(str(photo), pattern(40, 30))
    with pytest.raises(InputError, match="is an image"):
        load_audio(photo)
    disguised = tmp_path / "face.wav"
    disguised.write_bytes(photo.read_bytes())
    with pytest.raises(InputError, match="is an image"):
        load_audio(disguised)


def test_count_frames_is_exact_without_a_header_count(tmp_path):
    from fractions import Fraction

    from media.io import VideoWriter, count_frames, iter_frames

    for name in ("c.mkv", "c.mp4"):
        path = tmp_path / name
        with VideoWriter(path, 32, 24, Fraction(30000, 1001)) as w:
            for i in range(37):
                w.write(np.full((24, 32, 3), i * 5, np.uint8))
        assert count_frames(path) == len(list(iter_frames(path))) == 37


# --- segments for streaming ---------------------------------------------------------------------------


def test_segments_play_on_their_own_and_add_up_to_the_output(tmp_path):
    from media.segments import Segments

    n, fps = 70, Fraction(25)  # 2.8 s: pieces of 1 s, 1 s and 0.8 s
    audio = tone(16000, 3.0)  # the audio outlasts the picture: the last piece takes the rest
    done: list[Path] = []
    segments = Segments(tmp_path, 1.0, done.append)
    out = tmp_path / "out.mp4"
    with VideoWriter(out, 64, 48, fps, audio=audio, audio_rate=16000, segments=segments) as writer:
        for i in range(n):
            writer.write(pattern(48, 64, i))
            if i == 24:  # the first piece has its own encoder: out as soon as its last frame is written
                assert [p.name for p in done] == ["segment_0000.mp4"]
            if i == 40:  # later pieces are handed over once the encoder has emitted them
                assert [p.name for p in done] == ["segment_0000.mp4"]
    assert [p.name for p in done] == ["segment_0000.mp4", "segment_0001.mp4", "segment_0002.mp4"]
    whole = list(iter_frames(out))
    pieces = [list(iter_frames(p)) for p in done]
    assert [len(p) for p in pieces] == [25, 25, 20]
    # the later pieces hold the output's encoded packets: decoded alone, exactly the output's frames
    for got, want in zip([f for p in pieces[1:] for f in p], whole[25:], strict=True):
        np.testing.assert_array_equal(got, want)
    # the first was encoded again with the same settings: the same picture within the codec's error
    diff = np.abs(np.stack(pieces[0]).astype(int) - np.stack(whole[:25]))
    assert diff.mean() < 1.0 and np.percentile(diff, 99) <= 8, (diff.mean(), np.percentile(diff, 99))
    # and the same parameter sets (SPS/PPS), so that the pieces play on as one stream
    extradata = []
    for piece in done:
        with av.open(str(piece)) as container:
            extradata.append(container.streams.video[0].codec_context.extradata)
    assert extradata[0] and extradata[0] == extradata[1] == extradata[2]
    seconds = []
    for piece in done:
        with av.open(str(piece)) as container:
            assert container.streams.video[0].codec_context.name == "h264"
            sound = container.streams.audio[0]
            assert sound.codec_context.name == "aac"
            seconds.append(float(sound.duration * sound.time_base))
    assert seconds[0] == pytest.approx(1.0, abs=0.07) and seconds[1] == pytest.approx(1.0, abs=0.07)
    assert seconds[2] == pytest.approx(1.0, abs=0.07)  # 0.8 s of picture, the last 1.0 s of the audio


def _write_in_pieces(folder: Path, n_frames: int, audio_seconds: float, first_seconds: float) -> list[Path]:
    """Pieces of 1 s after a first one of ``first_seconds``, of a 64x48 25 fps video with a tone."""
    from media.segments import Segments

    done: list[Path] = []
    with VideoWriter(folder / "out.mp4", 64, 48, 25, audio=tone(16000, audio_seconds), audio_rate=16000,
                     segments=Segments(folder, 1.0, done.append, first_seconds=first_seconds)) as writer:
        for i in range(n_frames):
            writer.write(pattern(48, 64, i))
            assert done == [] or i >= round(first_seconds * 25) - 1  # nothing before the first piece is made
    return done


def _sound_seconds(path: Path) -> float:
    with av.open(str(path)) as container:
        sound = container.streams.audio[0]
        return float(sound.duration * sound.time_base)


def test_a_short_first_segment(tmp_path):
    """first_seconds: the first piece is shorter (out sooner), the rest keep their length."""
    done = _write_in_pieces(tmp_path, 70, 2.8, first_seconds=0.4)
    assert [sum(1 for _ in iter_frames(p)) for p in done] == [10, 25, 25, 10]
    assert _sound_seconds(done[0]) == pytest.approx(0.4, abs=0.07)


def test_a_video_shorter_than_the_first_segment_is_one_piece_with_all_its_sound(tmp_path):
    done = _write_in_pieces(tmp_path, 12, 0.6, first_seconds=0.8)  # complete only when the output is
    assert [sum(1 for _ in iter_frames(p)) for p in done] == [12]
    assert _sound_seconds(done[0]) == pytest.approx(0.6, abs=0.07)


def test_segments_need_h264(tmp_path):
    from media.segments import Segments

    with pytest.raises(ValueError, match="H.264"):
        VideoWriter(tmp_path / "out.mkv", 64, 48, 25, segments=Segments(tmp_path, 1.0, print))
