"""Mel spectrogram and chunking against the golden arrays of the original audio.py / inference.py."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from common.errors import InputError
from lipsync import audio

LOGIC = json.loads((Path(__file__).parent / "data" / "golden" / "inference_logic.json").read_text())
EDGE_COLUMNS = [0, 1, 103, 104]  # columns the STFT padding reaches (2 hops each side)


def test_constants_derivation():
    assert audio.MEL_FPS == 80
    assert audio.MEL_STEP == 16
    assert audio.MIN_SAMPLES == 3000


def test_mel_basis_matches_golden(golden):
    basis = audio.mel_basis()
    np.testing.assert_allclose(basis, golden("wav2lip_mel")["mel_basis"], atol=1e-7)
    assert audio.mel_basis() is basis  # cached


def test_numpy_stft_and_filterbank_are_librosas_bit_for_bit():
    """The module reimplements what it used from librosa/scipy; the results are the same bits."""
    librosa = pytest.importorskip("librosa")
    import scipy.signal

    reference = librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600, htk=False, norm="slaney")
    np.testing.assert_array_equal(audio.mel_basis(), reference.astype(np.float32))
    np.testing.assert_array_equal(audio.hann_window(), scipy.signal.get_window("hann", 800, fftbins=True))
    rng = np.random.default_rng(7)
    for n in (3000, 16001, 3 * audio._STFT_BLOCK * audio.HOP + 77):  # the last one spans several blocks
        wav = (0.1 * rng.standard_normal(n)).astype(np.float32)
        emphasised = scipy.signal.lfilter([1.0, -audio.PREEMPHASIS], [1.0], wav)
        spectrum = librosa.stft(y=emphasised, n_fft=800, hop_length=200, win_length=800, window="hann",
                                center=True, pad_mode="reflect").astype(np.complex64)
        np.testing.assert_array_equal(audio.stft_magnitude(emphasised), np.abs(spectrum))
        expected = librosa_free_reference(wav, emphasised, np.abs(spectrum))
        np.testing.assert_array_equal(audio.melspectrogram(wav), expected)


def librosa_free_reference(wav: np.ndarray, emphasised: np.ndarray, magnitude: np.ndarray) -> np.ndarray:
    """The original's dB scaling and normalisation applied to librosa's spectrum."""
    mel = audio.mel_basis() @ magnitude
    db = 20.0 * np.log10(np.maximum(audio.MIN_AMPLITUDE, mel.astype(np.float64))) - audio.REF_LEVEL_DB
    norm = np.clip(2 * audio.MAX_ABS * ((db - audio.MIN_LEVEL_DB) / -audio.MIN_LEVEL_DB) - audio.MAX_ABS,
                   -audio.MAX_ABS, audio.MAX_ABS)
    return norm.astype(np.float32)


def test_mel_scale_is_slaneys():
    assert np.isclose(audio.hz_to_mel(1000.0), 15.0) and np.isclose(audio.MEL_BREAK, 15.0)
    assert np.isclose(audio.hz_to_mel(6400.0), 15 + 27)  # 27 mel per factor 6.4 above 1 kHz
    hz = np.array([0.0, 55.0, 999.0, 1000.0, 4000.0, 7600.0])
    np.testing.assert_allclose(audio.mel_to_hz(audio.hz_to_mel(hz)), hz, rtol=1e-12)


def test_melspectrogram_matches_golden(golden):
    g = golden("wav2lip_mel")
    mel = audio.melspectrogram(g["wav"])
    assert mel.shape == (80, 1 + len(g["wav"]) // audio.HOP) == (80, 105)
    assert mel.dtype == np.float32
    np.testing.assert_allclose(mel, g["mel"], atol=1e-4, rtol=0)


def test_melspectrogram_uses_reflect_padding_not_constant(golden):
    g = golden("wav2lip_mel")
    mel = audio.melspectrogram(g["wav"])
    interior = np.setdiff1d(np.arange(mel.shape[1]), EDGE_COLUMNS)
    # librosa >= 0.9's default (constant padding) agrees inside but not at the edges
    np.testing.assert_allclose(mel[:, interior], g["mel_constant_pad"][:, interior], atol=1e-4)
    assert np.abs(mel[:, EDGE_COLUMNS] - g["mel_constant_pad"][:, EDGE_COLUMNS]).max() > 0.1
    np.testing.assert_allclose(mel, g["mel_complex128_stft"], atol=1e-4)


@pytest.mark.parametrize("n", [3000, 3001, 3199, 3200, 16000])
def test_melspectrogram_shape(n):
    wav = np.random.default_rng(n).uniform(-0.5, 0.5, n).astype(np.float32)
    mel = audio.melspectrogram(wav)
    assert mel.shape == (80, 1 + n // 200)
    assert mel.min() >= -4 and mel.max() <= 4


def test_melspectrogram_too_short_says_how_long():
    with pytest.raises(InputError, match=r"at least 0\.1875 s"):
        audio.melspectrogram(np.zeros(2999, np.float32))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_melspectrogram_non_finite_raises(bad):
    wav = np.zeros(4000, np.float32)
    wav[100] = bad
    with pytest.raises(InputError, match="NaN or infinity"):
        audio.melspectrogram(wav)


@pytest.mark.parametrize("fps", sorted(LOGIC["mel_chunk_starts"]))
def test_mel_chunk_starts_golden(fps):
    expected = LOGIC["mel_chunk_starts"][fps]
    starts = audio.mel_chunk_starts(LOGIC["mel_num_frames"], float(fps))
    assert starts.tolist() == expected


def test_mel_chunk_starts_fps25_npz(golden):
    g = golden("wav2lip_mel")
    starts = audio.mel_chunk_starts(g["mel"].shape[1], 25)
    np.testing.assert_array_equal(starts, g["mel_chunk_starts_fps25"])


def reference_starts(n_mel: int, fps: float) -> list[int]:
    """inference.py's loop, written out."""
    starts, i, multiplier = [], 0, 80.0 / fps
    while True:
        start = int(i * multiplier)
        if start + 16 > n_mel:
            return starts + [n_mel - 16]
        starts.append(start)
        i += 1


@pytest.mark.parametrize("fps", [1, 12.5, 23.976, 29.97, 30000 / 1001, 50, 60, 80, 120, 240])
def test_mel_chunk_starts_matches_loop(fps):
    for n_mel in (16, 17, 40, 105, 333):
        assert audio.mel_chunk_starts(n_mel, fps).tolist() == reference_starts(n_mel, fps)


def test_mel_chunk_starts_accepts_fraction():
    rate = Fraction(30000, 1001)
    np.testing.assert_array_equal(audio.mel_chunk_starts(200, rate), audio.mel_chunk_starts(200, float(rate)))


def test_mel_chunks_content(golden):
    mel = golden("wav2lip_mel")["mel"]
    chunks = audio.mel_chunks(mel, 25)
    starts = audio.mel_chunk_starts(mel.shape[1], 25)
    assert chunks.shape == (len(starts), 80, 16) == (30, 80, 16)
    assert chunks.dtype == np.float32 and chunks.flags.c_contiguous
    for chunk, start in zip(chunks, starts, strict=True):
        np.testing.assert_array_equal(chunk, mel[:, start:start + 16])
    np.testing.assert_array_equal(chunks[-1], chunks[-2])  # fps 25, length 105: last chunk repeats


def test_mel_chunks_too_short_and_nan():
    with pytest.raises(InputError, match="at least"):
        audio.mel_chunks(np.zeros((80, 15), np.float32), 25)
    mel = np.zeros((80, 40), np.float32)
    mel[3, 7] = np.nan
    with pytest.raises(InputError, match="NaN"):
        audio.mel_chunks(mel, 25)


@pytest.mark.parametrize("fps", [0, -25, float("nan")])
def test_mel_chunk_starts_bad_fps(fps):
    with pytest.raises(InputError, match="fps"):
        audio.mel_chunk_starts(100, fps)
