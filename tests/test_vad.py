"""Voice activity for silence="keep": the pure mask -> weights functions on planted arrays, and the real
silero model on espeak speech around 2 s of sox silence."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from common.errors import DependencyError
from lipsync import vad
from media.io import load_audio


def test_fade_and_minimum_silence_in_frames_at_25_fps():
    assert vad.frames_of(vad.FADE_SECONDS, 25) == 5
    assert vad.frames_of(vad.MIN_SILENCE_SECONDS, 25) == 13
    assert vad.frames_of(0.001, 25) == 1


def test_weights_fade_out_and_back_in_inside_the_silence():
    speech = np.array([1] * 4 + [0] * 10 + [1] * 4, bool)
    weights = vad.blend_weights(speech, fade=3, min_silence=4)
    assert weights.dtype == np.float32
    np.testing.assert_allclose(weights[:4], 1)
    np.testing.assert_allclose(weights[4:14], [0.75, 0.5, 0.25, 0, 0, 0, 0, 0.25, 0.5, 0.75])
    np.testing.assert_allclose(weights[14:], 1)
    assert (weights[7:11] == 0).all()  # exactly 0: those frames are the input's, not generated


def test_short_pauses_keep_the_generated_mouth():
    speech = np.array([1, 1, 0, 0, 0, 1, 1, 0, 0, 0, 0, 1], bool)
    weights = vad.blend_weights(speech, fade=2, min_silence=4)
    np.testing.assert_allclose(weights, [1] * 7 + [2 / 3, 1 / 3, 1 / 3, 2 / 3, 1])
    np.testing.assert_array_equal(vad.blend_weights(speech, fade=2, min_silence=5), np.ones(12))


def test_no_fade_at_the_ends_of_the_video():
    speech = np.array([0] * 6 + [1] * 2 + [0] * 5, bool)
    weights = vad.blend_weights(speech, fade=2, min_silence=3)
    np.testing.assert_allclose(weights, [0, 0, 0, 0, 1 / 3, 2 / 3, 1, 1, 2 / 3, 1 / 3, 0, 0, 0])
    np.testing.assert_array_equal(vad.blend_weights(np.zeros(7, bool), fade=2, min_silence=3), np.zeros(7))
    np.testing.assert_array_equal(vad.blend_weights(np.ones(7, bool), fade=2, min_silence=3), np.ones(7))
    assert vad.blend_weights(np.zeros(0, bool), fade=2, min_silence=3).shape == (0,)


def test_a_silence_shorter_than_two_fades_dips_without_reaching_zero():
    speech = np.array([1] + [0] * 4 + [1], bool)
    weights = vad.blend_weights(speech, fade=3, min_silence=2)
    np.testing.assert_allclose(weights, [1, 0.75, 0.5, 0.5, 0.75, 1])


def test_hysteresis():
    probs = np.array([0.1, 0.6, 0.4, 0.36, 0.3, 0.45, 0.5, 0.2])
    np.testing.assert_array_equal(vad.speech_windows(probs), [0, 1, 1, 1, 0, 0, 1, 0])
    np.testing.assert_array_equal(vad.speech_windows(probs, threshold=0.7, release=0.7), np.zeros(8))


def test_a_frame_has_speech_when_its_mouth_window_does():
    # 40 ms windows at 25 fps: window k covers frame k's first 40 ms; frame i looks at [0.04 i, 0.04 i + 0.2)
    windows = np.zeros(30, bool)
    windows[10] = True  # 0.40-0.44 s
    frames = vad.frames_with_speech(windows, 30, 25, window_seconds=0.04, lookahead=0.2)
    np.testing.assert_array_equal(np.flatnonzero(frames), [6, 7, 8, 9, 10])


def test_frames_with_speech_matches_interval_overlap():
    rng = np.random.default_rng(3)
    for fps in (25, 30000 / 1001, 24, 60):
        windows = rng.random(200) < 0.2
        n_frames = int(200 * vad.WINDOW_SECONDS * fps) + 3  # a few frames past the audio's end
        got = vad.frames_with_speech(windows, n_frames, fps)
        for i in range(n_frames):
            start = min(i / fps, (len(windows) - 1) * vad.WINDOW_SECONDS)  # past the end: the last window
            end = start + vad.MOUTH_WINDOW_SECONDS
            k = np.arange(len(windows))
            overlapping = (k * vad.WINDOW_SECONDS < end - 1e-9) & ((k + 1) * vad.WINDOW_SECONDS > start + 1e-9)
            assert got[i] == windows[overlapping].any(), (fps, i)
    assert not vad.frames_with_speech(np.zeros(0, bool), 4, 25).any()


def test_the_model_finds_the_silence_between_two_sentences(gapped_speech):
    path, start, end = gapped_speech
    wav, _ = load_audio(path, sample_rate=16000)
    probs = vad.speech_probabilities(wav)
    assert len(probs) == len(wav) // vad.WINDOW
    t = (np.arange(len(probs)) + 0.5) * vad.WINDOW_SECONDS
    assert (probs[(t > start) & (t < end)] < vad.RELEASE).all()
    loud = np.array([np.sqrt(np.mean(wav[k * vad.WINDOW:(k + 1) * vad.WINDOW] ** 2)) > 0.03 for k in range(len(probs))])
    assert np.mean(probs[loud] >= vad.THRESHOLD) > 0.9
    weights = vad.silence_weights(wav, int(len(wav) / 16000 * 25), 25)
    frame_t = np.arange(len(weights)) / 25
    assert (weights[(frame_t > start + 0.25) & (frame_t < end - 0.45)] == 0).all()
    assert weights[frame_t < start - 0.5].min() == 1


def test_missing_package_says_what_to_do(monkeypatch):
    import torch

    threads = torch.get_num_threads()
    monkeypatch.setattr(vad, "_model", None)
    monkeypatch.setitem(sys.modules, "silero_vad", None)  # import fails as if it were not installed
    with pytest.raises(DependencyError, match=r"silence='keep' needs the silero-vad package.*silence='animate'"):
        vad.speech_probabilities(np.zeros(16000, np.float32))
    assert torch.get_num_threads() == threads


def test_loading_the_model_keeps_torch_threads():
    import torch

    threads = torch.get_num_threads()
    vad.speech_probabilities(np.zeros(2048, np.float32))
    assert torch.get_num_threads() == threads
