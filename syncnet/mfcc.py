"""MFCC features exactly as syncnet_python computes them (python_speech_features.mfcc defaults).

SyncNet was trained on ``python_speech_features.mfcc(audio_int16, 16000)``: raw int16 sample values
(not scaled to [-1, 1]), pre-emphasis 0.97, 25 ms frames every 10 ms with no window function, a
512-point power spectrum, 26 triangular mel filters, DCT-II (orthonormal) to 13 coefficients,
sinusoidal liftering with L=22, and coefficient 0 replaced by the log of the frame's total power.
This module reimplements that, vectorised, so the library does not depend on the package.
"""

from __future__ import annotations

import numpy as np
from scipy.fft import dct

from syncnet.constants import AUDIO_RATE

WIN_LEN = 400  # 25 ms at 16 kHz
HOP = 160  # 10 ms at 16 kHz -> 100 MFCC frames per second, 4 per 25 fps video frame
N_FFT = 512
N_FILTERS = 26
N_CEPS = 13
CEP_LIFTER = 22
PREEMPHASIS = 0.97
# python_speech_features replaces exact zeros by float64 eps before taking logs
_EPS = np.finfo(np.float64).eps
_BLOCK = 1024  # MFCC frames per block (10 s of audio): bounds the temporary spectra to ~4 MB


def _hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(hz) / 700.0)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(n_filters: int = N_FILTERS, n_fft: int = N_FFT, sample_rate: int = AUDIO_RATE) -> np.ndarray:
    """(n_filters, n_fft//2+1) triangles between FFT bins floor((n_fft+1) * f / sr), 0 Hz .. sr/2."""
    mels = np.linspace(_hz_to_mel(0.0), _hz_to_mel(sample_rate / 2), n_filters + 2)
    edges = np.floor((n_fft + 1) * _mel_to_hz(mels) / sample_rate)
    bins = np.arange(n_fft // 2 + 1, dtype=np.float64)[None, :]
    left, centre, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    # rising edge on [left, centre), falling edge on [centre, right); bins are integers, the edges are
    # whole numbers too, so these masks select exactly the loop ranges of the original
    with np.errstate(divide="ignore", invalid="ignore"):
        rising = np.where((bins >= left) & (bins < centre), (bins - left) / (centre - left), 0.0)
        falling = np.where((bins >= centre) & (bins < right), (right - bins) / (right - centre), 0.0)
    return rising + falling


def frame_count(n_samples: int) -> int:
    """Number of MFCC frames for ``n_samples`` samples (the last frame is zero-padded)."""
    if n_samples <= WIN_LEN:
        return 1
    return 1 + -(-(n_samples - WIN_LEN) // HOP)


def mfcc(signal: np.ndarray, sample_rate: int = AUDIO_RATE) -> np.ndarray:
    """(T, 13) float64 MFCC of a mono signal (int16 values, as the reference reads a WAV), T = frame_count(n)."""
    if sample_rate != AUDIO_RATE:
        raise ValueError(f"SyncNet MFCC expects {AUDIO_RATE} Hz audio, got {sample_rate} Hz")
    x = np.asarray(signal)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"expected a non-empty mono signal, got shape {x.shape}")
    x = x.astype(np.float64)
    emphasised = np.empty_like(x)
    emphasised[0] = x[0]
    emphasised[1:] = x[1:] - PREEMPHASIS * x[:-1]

    n_frames = frame_count(x.size)
    padded = np.zeros((n_frames - 1) * HOP + WIN_LEN)
    padded[: x.size] = emphasised
    frames = np.lib.stride_tricks.sliding_window_view(padded, WIN_LEN)[::HOP]  # (T, 400) view, rectangular window
    fbank = mel_filterbank(N_FILTERS, N_FFT, sample_rate).T  # (257, 26)
    lift = 1.0 + (CEP_LIFTER / 2.0) * np.sin(np.pi * np.arange(N_CEPS) / CEP_LIFTER)
    out = np.empty((n_frames, N_CEPS))
    # frames are independent: a block at a time keeps the spectra small however long the audio is
    for lo in range(0, n_frames, _BLOCK):
        block = frames[lo:lo + _BLOCK]
        power = np.abs(np.fft.rfft(block, N_FFT)) ** 2 / N_FFT  # (b, 257)
        energy = power.sum(axis=1)
        energy = np.where(energy == 0, _EPS, energy)
        feats = power @ fbank
        feats = np.where(feats == 0, _EPS, feats)
        ceps = dct(np.log(feats), type=2, axis=1, norm="ortho")[:, :N_CEPS] * lift
        ceps[:, 0] = np.log(energy)
        out[lo:lo + _BLOCK] = ceps
    return out
