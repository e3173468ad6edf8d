"""Wav2Lip's mel spectrogram and the per-video-frame mel chunks the generator consumes.

Mirrors the original ``audio.py``/``hparams.py`` as run with librosa 0.7 (the version it was
trained with): pre-emphasis, a reflect-padded STFT with a periodic Hann window stored as complex64,
a slaney mel filterbank, dB scaling and a symmetric [-4, 4] normalisation. The STFT and the
filterbank are computed here with numpy, in the same order of operations as librosa, so the result
is bit-identical (tests/test_audio.py compares them with librosa itself); librosa's first call in
a process cost about 2 s of imports and compilation, this module's about a millisecond. Pure
functions over arrays: loading/resampling audio is ``media``'s job.
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction

import numpy as np

from common.errors import InputError

SAMPLE_RATE = 16000  # Hz; the generator was trained on 16 kHz audio
N_FFT = 800  # 50 ms window at 16 kHz
HOP = 200  # 12.5 ms between mel columns
WIN = 800  # Hann window as long as the FFT
NUM_MELS = 80
FMIN = 55  # Hz
FMAX = 7600  # Hz, just under Nyquist (8000 Hz)
PREEMPHASIS = 0.97  # y[n] = x[n] - 0.97 x[n-1]
REF_LEVEL_DB = 20
MIN_LEVEL_DB = -100
MAX_ABS = 4  # symmetric normalisation to [-MAX_ABS, MAX_ABS]
MIN_AMPLITUDE = 10 ** (MIN_LEVEL_DB / 20)  # 1e-5: floor before log10

MEL_FPS = SAMPLE_RATE // HOP  # 80 mel columns per second of audio
MEL_STEP = 16  # columns per generator input: 16 / 80 = 0.2 s of audio around each video frame

# center=True adds N_FFT // 2 on each side, so n samples give 1 + n // HOP columns; one chunk
# needs MEL_STEP columns, i.e. (MEL_STEP - 1) * HOP samples.
MIN_SAMPLES = (MEL_STEP - 1) * HOP  # 3000 samples = 0.1875 s


# Slaney's mel scale (librosa's htk=False): linear below 1 kHz at 3 mel per 200 Hz, logarithmic above,
# 27 mel per factor 6.4 in frequency.
MEL_LINEAR_HZ = 200.0 / 3  # Hz per mel below the break
MEL_BREAK_HZ = 1000.0
MEL_BREAK = MEL_BREAK_HZ / MEL_LINEAR_HZ  # 15 mel
MEL_LOG_STEP = math.log(6.4) / 27.0  # natural-log frequency per mel above the break


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    mel = hz / MEL_LINEAR_HZ
    above = hz >= MEL_BREAK_HZ
    return np.where(above, MEL_BREAK + np.log(np.where(above, hz, MEL_BREAK_HZ) / MEL_BREAK_HZ) / MEL_LOG_STEP, mel)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    hz = MEL_LINEAR_HZ * mel
    above = mel >= MEL_BREAK
    return np.where(above, MEL_BREAK_HZ * np.exp(MEL_LOG_STEP * (mel - MEL_BREAK)), hz)


@functools.lru_cache(maxsize=1)
def mel_basis() -> np.ndarray:
    """Slaney-normalised triangular mel filterbank (NUM_MELS, 1 + N_FFT // 2) float32, built once.

    NUM_MELS triangles with edges evenly spaced in mel from FMIN to FMAX; each is scaled by 2 / its
    width in Hz, so every band has about the same area (the original's htk=False, norm="slaney").
    """
    bins_hz = np.fft.rfftfreq(N_FFT, 1.0 / SAMPLE_RATE)  # (401,) centre of each FFT bin
    edges = mel_to_hz(np.linspace(hz_to_mel(FMIN), hz_to_mel(FMAX), NUM_MELS + 2))  # (82,)
    widths = np.diff(edges)
    offsets = edges[:, None] - bins_hz[None, :]  # (82, 401): edge minus bin frequency
    rising = -offsets[:-2] / widths[:-1, None]
    falling = offsets[2:] / widths[1:, None]
    triangles = np.maximum(0, np.minimum(rising, falling)).astype(np.float32)
    basis = (triangles * (2.0 / (edges[2:] - edges[:-2]))[:, None]).astype(np.float32)
    basis.flags.writeable = False  # shared by every caller through the cache
    return basis


@functools.lru_cache(maxsize=1)
def hann_window() -> np.ndarray:
    """The periodic Hann window of WIN samples (float64): 0.5 + 0.5 cos over WIN + 1 points from -pi
    to pi, the last one dropped (scipy's get_window("hann", WIN), as librosa uses it)."""
    phase = np.linspace(-np.pi, np.pi, WIN + 1)
    window = np.zeros(WIN + 1)
    window += 0.5 * np.cos(0 * phase)
    window += 0.5 * np.cos(phase)
    window = window[:-1]
    window.flags.writeable = False
    return window


def stft_magnitude(signal: np.ndarray) -> np.ndarray:
    """|STFT| (1 + N_FFT // 2, 1 + n // HOP) float32 of a float64 signal: frames centred on every HOP-th
    sample (the signal reflected by N_FFT // 2 at both ends), Hann-windowed, complex64 kept as librosa 0.7."""
    padded = np.pad(signal, N_FFT // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP]  # (T, N_FFT) view
    out = np.empty((N_FFT // 2 + 1, len(frames)), np.float32)
    for start in range(0, len(frames), _STFT_BLOCK):  # bounded temporaries for long audio
        block = frames[start:start + _STFT_BLOCK] * hann_window()
        out[:, start:start + _STFT_BLOCK] = np.abs(np.fft.rfft(block, axis=-1).astype(np.complex64)).T
    return out


_STFT_BLOCK = 4096  # STFT frames per block: 51 s of audio, 13 MB of complex128


def melspectrogram(wav: np.ndarray) -> np.ndarray:
    """Normalised log-mel spectrogram of 16 kHz mono audio: (n,) -> (NUM_MELS, 1 + n // HOP) float32.

    Raises InputError when the audio is too short for one generator chunk or is not finite.
    """
    wav = np.asarray(wav)
    if wav.ndim != 1:
        raise ValueError(f"expected mono audio of shape (n,), got {wav.shape}")
    if wav.shape[0] < MIN_SAMPLES:
        raise InputError(
            f"the audio is too short ({wav.shape[0] / SAMPLE_RATE:.3f} s): it must be at least "
            f"{MIN_SAMPLES / SAMPLE_RATE:.4f} s ({MIN_SAMPLES} samples at {SAMPLE_RATE} Hz); use a longer audio file"
        )
    if not np.isfinite(wav).all():
        raise InputError("the audio contains invalid samples (NaN or infinity); re-encode or replace the audio file")
    # y[n] = x[n] - 0.97 x[n-1] in float64 (the original's scipy.signal.lfilter([1, -0.97], [1], x))
    x = wav.astype(np.float64)
    emphasised = x.copy()
    emphasised[1:] += -PREEMPHASIS * x[:-1]
    # reflect padding, as librosa 0.7 (>= 0.9 defaults to "constant", which changes the first and
    # last two columns by up to 0.71)
    mel = mel_basis() @ stft_magnitude(emphasised)  # float32, (NUM_MELS, frames)
    db = 20.0 * np.log10(np.maximum(MIN_AMPLITUDE, mel.astype(np.float64))) - REF_LEVEL_DB
    normalised = np.clip(2 * MAX_ABS * ((db - MIN_LEVEL_DB) / -MIN_LEVEL_DB) - MAX_ABS, -MAX_ABS, MAX_ABS)
    if np.isnan(normalised).any():  # cannot happen for finite input; guards the generator anyway
        raise InputError("the mel spectrogram of the audio contains NaN; re-encode or replace the audio file")
    return normalised.astype(np.float32)


def mel_chunk_starts(n_mel: int, fps: float | Fraction) -> np.ndarray:
    """First mel column of the chunk for each output video frame, as the original inference.

    Frame i starts at ``int(i * (MEL_FPS / fps))`` while a whole chunk fits; then one last chunk
    ending at the final column is added (it may repeat or overlap the previous one). The number
    of starts is the number of frames generated.
    """
    fps = float(fps)
    if not np.isfinite(fps) or fps <= 0:
        raise InputError(f"invalid frame rate {fps}; give a positive fps (e.g. 25)")
    if n_mel < MEL_STEP:
        raise InputError(
            f"the audio is too short ({n_mel} mel columns = {n_mel / MEL_FPS:.3f} s): it must give at least "
            f"{MEL_STEP} columns, i.e. be at least {MIN_SAMPLES / SAMPLE_RATE:.4f} s long; use a longer audio file"
        )
    multiplier = MEL_FPS / fps  # computed first, as the original did, so float rounding matches
    # int(i * m) + MEL_STEP <= n_mel  <=>  i * m < n_mel - MEL_STEP + 1, so this covers every
    # fitting i with a margin for rounding; starts never decrease, so "while it fits" = "all that fit"
    n_candidates = int((n_mel - MEL_STEP + 1) / multiplier) + 2
    starts = (np.arange(n_candidates) * multiplier).astype(np.int64)  # truncation as int()
    starts = starts[starts + MEL_STEP <= n_mel]
    return np.append(starts, n_mel - MEL_STEP)


def mel_chunks(mel: np.ndarray, fps: float | Fraction) -> np.ndarray:
    """Generator audio inputs, one per output frame: (NUM_MELS, T) -> (N, NUM_MELS, MEL_STEP) float32."""
    mel = np.asarray(mel, dtype=np.float32)
    if mel.ndim != 2 or mel.shape[0] != NUM_MELS:
        raise ValueError(f"expected a mel spectrogram of shape ({NUM_MELS}, T), got {mel.shape}")
    if np.isnan(mel).any():
        raise InputError("the mel spectrogram contains NaN; the audio is corrupt, re-encode or replace it")
    starts = mel_chunk_starts(mel.shape[1], fps)
    columns = starts[:, None] + np.arange(MEL_STEP)  # (N, MEL_STEP)
    return np.ascontiguousarray(mel[:, columns].transpose(1, 0, 2))  # (80, N, 16) -> (N, 80, 16)
