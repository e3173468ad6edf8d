"""Wav2Lip's mel spectrogram and the per-video-frame mel chunks the generator consumes.

Mirrors the original ``audio.py``/``hparams.py`` as run with librosa 0.7 (the version it was
trained with): reflect-padded STFT stored as complex64, slaney mel filterbank, dB scaling and a
symmetric [-4, 4] normalisation. Newer librosa changed two defaults (see the comments below), so
both are passed explicitly. Pure functions over arrays: loading/resampling audio is ``media``'s job.
"""

from __future__ import annotations

import functools
from fractions import Fraction

import librosa
import numpy as np
import scipy.signal

from lipsync.errors import InputError

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


@functools.lru_cache(maxsize=1)
def mel_basis() -> np.ndarray:
    """Slaney-style mel filterbank (NUM_MELS, 1 + N_FFT // 2) float32, built once."""
    # librosa >= 0.10 made these arguments keyword-only; htk=False / norm="slaney" are the defaults
    # the original relied on, spelled out so a future default change cannot alter the result.
    basis = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=NUM_MELS, fmin=FMIN, fmax=FMAX,
                                htk=False, norm="slaney").astype(np.float32)
    basis.flags.writeable = False  # shared by every caller through the cache
    return basis


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
    emphasised = scipy.signal.lfilter([1.0, -PREEMPHASIS], [1.0], wav)  # float64, as the original
    # pad_mode: librosa 0.7 padded with "reflect"; >= 0.9 defaults to "constant", which changes the
    # first and last two columns by up to 0.71. complex64: what librosa 0.7 returned.
    spectrum = librosa.stft(y=emphasised, n_fft=N_FFT, hop_length=HOP, win_length=WIN, window="hann",
                            center=True, pad_mode="reflect").astype(np.complex64)
    mel = mel_basis() @ np.abs(spectrum)  # float32, (NUM_MELS, frames)
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
