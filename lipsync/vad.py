"""Voice activity for ``silence="keep"``: which output frames have speech, and how much of the generated
mouth each frame shows.

silero-vad's model (it ships inside the silero-vad wheel, so nothing is downloaded) gives one speech
probability per 32 ms window of 16 kHz audio. Pure functions then turn the probabilities into one
bool per output frame and the frames into blend weights: 1 = the generated frame, 0 = the input frame
unchanged, with a short cross-fade where a silent stretch begins and ends.
"""

from __future__ import annotations

import math
import threading
import warnings

import numpy as np

from common.errors import DependencyError
from face_detection.boxes import true_runs
from lipsync.audio import MEL_FPS, MEL_STEP, SAMPLE_RATE

WINDOW = 512  # samples per call of silero's 16 kHz model (it takes no other size): 32 ms
WINDOW_SECONDS = WINDOW / SAMPLE_RATE
# silero's own defaults: speech starts above THRESHOLD and goes on until the probability falls below
# RELEASE (hysteresis, so a probability wavering around 0.5 inside a word does not split it)
THRESHOLD = 0.5
RELEASE = THRESHOLD - 0.15
# The generator draws frame i's mouth from the 0.2 s of audio starting at the frame's time (16 mel
# columns at 80 per second), so frame i has speech when any speech lies in that span: the mouth then
# starts opening as the generator would, just before the sound.
MOUTH_WINDOW_SECONDS = MEL_STEP / MEL_FPS  # 0.2
# Cross-fade from the generated mouth to the input frame (and back) over this long, inside the silent
# stretch: as long as the audio window each generated frame already spans (above), so the hand-over
# is no faster than the generated mouth itself can change; a one-frame cut shows the jump from the
# generated, slightly blurred lower face to the sharp original. 5 frames at 25 fps.
FADE_SECONDS = MOUTH_WINDOW_SECONDS
# Silences shorter than this (pauses between words and short breaths) keep the generated mouth: the
# two fades would leave at most 0.1 s of input frames, a flicker towards the original and back.
MIN_SILENCE_SECONDS = 2 * FADE_SECONDS + 0.1

VAD_THREADS = 1  # torch threads while the model runs (see speech_probabilities)

_model = None
_model_lock = threading.Lock()  # the model keeps state between windows: one audio at a time


def _load_model():
    """silero's model, loaded once per process (about 0.1 s)."""
    global _model
    if _model is None:
        import torch

        threads = torch.get_num_threads()
        try:
            import silero_vad
        except ImportError as exc:
            raise DependencyError(
                "silence='keep' needs the silero-vad package for voice activity detection: install it "
                "(pip install silero-vad), or use silence='animate'") from exc
        finally:
            torch.set_num_threads(threads)  # importing silero_vad sets torch to 1 thread for the whole process
        with warnings.catch_warnings():  # its loader uses importlib.resources.path and torch.jit.load
            warnings.simplefilter("ignore", DeprecationWarning)
            _model = silero_vad.load_silero_vad()
    return _model


def speech_probabilities(wav: np.ndarray) -> np.ndarray:
    """Speech probability of each whole 32 ms window of 16 kHz mono audio: (n,) -> (n // WINDOW,) float32."""
    import torch

    wav = np.asarray(wav, dtype=np.float32)
    n = len(wav) // WINDOW
    with _model_lock:
        model = _load_model()
        model.reset_states()
        samples = torch.from_numpy(np.ascontiguousarray(wav[:n * WINDOW]))
        threads = torch.get_num_threads()
        # one thread: each call is a few tiny ops, and keeping a second thread in step costs more than it
        # gives. 33.7 s of speech on this 2-core machine: 0.5-0.6 s on one thread whatever else ran;
        # on two, 0.4 s at a quiet moment but 6 s while other processes kept both cores busy.
        torch.set_num_threads(VAD_THREADS)
        try:
            with torch.inference_mode():
                probs = [float(model(samples[k * WINDOW:(k + 1) * WINDOW], SAMPLE_RATE)) for k in range(n)]
        finally:
            torch.set_num_threads(threads)
    return np.asarray(probs, dtype=np.float32)


def speech_windows(probs: np.ndarray, threshold: float = THRESHOLD, release: float = RELEASE) -> np.ndarray:
    """Probabilities -> speech flags with hysteresis: on at ``>= threshold``, off again below ``release``."""
    out = np.zeros(len(probs), bool)
    speaking = False
    for k, p in enumerate(np.asarray(probs, dtype=np.float64)):
        speaking = p >= threshold if not speaking else p >= release
        out[k] = speaking
    return out


def frames_with_speech(windows: np.ndarray, n_frames: int, fps: float, *,
                       window_seconds: float = WINDOW_SECONDS,
                       lookahead: float = MOUTH_WINDOW_SECONDS) -> np.ndarray:
    """Per-window speech flags -> (n_frames,) bool: frame i has speech when a speech window overlaps
    ``[i / fps, i / fps + lookahead)``. Frames past the audio's end look at its last windows."""
    windows = np.asarray(windows, dtype=bool)
    if n_frames <= 0:
        return np.zeros(0, bool)
    if len(windows) == 0:
        return np.zeros(n_frames, bool)
    counts = np.concatenate([[0], np.cumsum(windows)])  # speech windows before index k
    start = np.arange(n_frames) / fps
    # the 1e-9 keeps a window that only touches the span at one end (0.12 / 0.04 = 2.9999999999999996) out
    first = np.floor(start / window_seconds + 1e-9).astype(np.int64)
    stop = np.ceil((start + lookahead) / window_seconds - 1e-9).astype(np.int64)
    first = np.clip(first, 0, len(windows) - 1)
    stop = np.clip(stop, first + 1, len(windows))
    return counts[stop] > counts[first]


def blend_weights(speech: np.ndarray, fade: int, min_silence: int) -> np.ndarray:
    """Per-frame weight of the generated frame: 1 in speech, 0 inside silent stretches.

    Silent runs shorter than ``min_silence`` frames count as speech. In a longer run the weight falls
    over its first ``fade`` frames (fade/(fade+1), ..., 1/(fade+1)) and rises again over its last
    ``fade``, wherever speech is on that side: a run at the very start or end of the video has no fade
    there. Returns (n,) float32 in [0, 1].
    """
    speech = np.asarray(speech, dtype=bool)
    n = len(speech)
    weights = np.ones(n, np.float32)
    for first, last in true_runs(~speech):
        if last - first + 1 < min_silence:
            continue
        k = np.arange(first, last + 1)
        since = k - first + 1 if first > 0 else np.full(len(k), np.inf)  # frames since speech stopped
        until = last - k + 1 if last < n - 1 else np.full(len(k), np.inf)  # frames until speech starts
        weights[first:last + 1] = np.maximum(0.0, 1.0 - np.minimum(since, until) / (fade + 1))
    return weights


def frames_of(seconds: float, fps: float) -> int:
    """``seconds`` as a whole number of frames (at least 1)."""
    return max(1, math.floor(seconds * fps + 0.5))


def silence_weights(wav: np.ndarray, n_frames: int, fps: float) -> np.ndarray:
    """The blend weights of ``n_frames`` output frames for 16 kHz mono speech ``wav`` (runs the model)."""
    speech = frames_with_speech(speech_windows(speech_probabilities(wav)), n_frames, fps)
    return blend_weights(speech, frames_of(FADE_SECONDS, fps), frames_of(MIN_SILENCE_SECONDS, fps))
