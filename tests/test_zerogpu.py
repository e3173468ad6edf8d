"""The app as it runs on ZeroGPU, with a stand-in for the ``spaces`` package that keeps its rules.

Outside ZeroGPU ``spaces.GPU`` returns the function unchanged, so the real package cannot show what
ZeroGPU does. The stand-in reports ZeroGPU hardware and wraps each GPU function as ZeroGPU does, as far
as this app can tell: it asks the duration callable with the call's own arguments; arguments, each
yield and the result cross a process boundary (they are pickled, and the worker's changes to memory
do not come back: the call runs on copies); an exception other than gr.Error reaches the caller as its
class name only. The app module is reloaded with it, and reloaded again without it afterwards.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import pickle
import sys
import types
from pathlib import Path

import gradio as gr
import numpy as np
import pytest

import app as app_module
from lipsync.options import CHECKPOINTS, LipSyncOptions
from media.io import VideoWriter, audio_duration, probe
from tests.test_app import CLIP, FAST, SPEECH


class StandInSpaces(types.ModuleType):
    def __init__(self) -> None:
        super().__init__("spaces")
        self.config = types.SimpleNamespace(Config=types.SimpleNamespace(zero_gpu=True))
        self.calls: list[tuple[str, int]] = []  # (function, seconds asked for), per GPU call

    def GPU(self, task=None, *, duration=None, size=None):  # noqa: N802 - the package's name
        def wrap(fn):
            def ask(args, kwargs):
                seconds = duration(*args, **kwargs) if callable(duration) else duration
                self.calls.append((fn.__name__, seconds))
                return pickle.loads(pickle.dumps((args, kwargs)))

            def worker_error(exc: Exception) -> gr.Error:
                return gr.Error(type(exc).__name__, title="ZeroGPU worker error")

            if inspect.isgeneratorfunction(fn):
                @functools.wraps(fn)
                def generator(*args, **kwargs):
                    args, kwargs = ask(args, kwargs)
                    try:
                        for item in fn(*args, **kwargs):
                            yield pickle.loads(pickle.dumps(item))
                    except gr.Error:
                        raise
                    except Exception as exc:
                        raise worker_error(exc) from None
                return generator

            @functools.wraps(fn)
            def function(*args, **kwargs):
                args, kwargs = ask(args, kwargs)
                try:
                    return pickle.loads(pickle.dumps(fn(*args, **kwargs)))
                except gr.Error:
                    raise
                except Exception as exc:
                    raise worker_error(exc) from None
            return function

        return wrap if task is None else wrap(task)


@pytest.fixture
def zero(monkeypatch, weights_dir):
    """The app module as on ZeroGPU, and the stand-in (its ``calls``)."""
    spaces = StandInSpaces()
    monkeypatch.setitem(sys.modules, "spaces", spaces)
    module = importlib.reload(app_module)
    # a process of its own, as a Space's: no models loaded and no scores kept by earlier tests
    monkeypatch.setattr(module.Models, "_shared", None)
    yield module, spaces
    monkeypatch.undo()
    importlib.reload(app_module)


def quiet(*args, **kwargs) -> None:
    """A progress callback for direct calls."""


def test_a_lip_sync_request_is_one_gpu_call_asking_for_its_length(zero):
    app, spaces = zero
    video, summary, details = app.run_lipsync(face_video=str(CLIP), audio=str(SPEECH), progress=quiet, **FAST)
    assert Path(video).is_file() and "LSE-D" in summary
    assert details["output"]["lse_d"] is not None and details["input"]["lse_d"] is not None
    # the lip sync, the output's and the input's scoring: one call, asking for the time of all three
    speech, face = audio_duration(SPEECH), probe(CLIP).duration
    assert spaces.calls == [("_lipsync_on_device", app.gpu_seconds(speech, speech + face))]
    first = spaces.calls[0][1]
    # the input's score was kept on this side of the GPU call: the same face video again is not rescored
    video, _, again = app.run_lipsync(face_video=str(CLIP), audio=str(SPEECH), progress=quiet, **FAST)
    assert again["input"]["lse_d"] == details["input"]["lse_d"]
    assert len(spaces.calls) == 2 and spaces.calls[1][1] < first


def test_streaming_is_one_gpu_call_too(zero):
    app, spaces = zero
    updates = list(app.run_lipsync_stream(face_image=str(app.EXAMPLES / "face_still.jpg"), audio=str(SPEECH),
                                          score_input=False, progress=quiet, **FAST))
    pieces = [u[0] for u in updates if isinstance(u[0], str)]
    assert len(pieces) == 4 and all(Path(p).is_file() for p in pieces)
    assert Path(updates[-1][1]).is_file()
    assert [name for name, _ in spaces.calls] == ["_lipsync_on_device"]


def test_an_input_over_the_gpu_time_limit_is_refused_before_any_work(zero, monkeypatch):
    app, spaces = zero
    monkeypatch.setenv("LIPSYNC_GPU_MAX_SECONDS", "16")
    before = set((Path(app.get_upload_folder()) / app.OUTPUT_DIR_NAME).glob("*"))
    with pytest.raises(gr.Error, match=r"needs about \d+ s of GPU time .* up to 16 s per request: trim the audio"):
        app.run_lipsync(face_video=str(CLIP), audio=str(SPEECH), progress=quiet, **FAST)
    assert spaces.calls == []
    assert set((Path(app.get_upload_folder()) / app.OUTPUT_DIR_NAME).glob("*")) == before


def test_the_engines_messages_survive_the_gpu_worker(zero, tmp_path):
    """ZeroGPU would hand over only "InputError"; the app raises gr.Error inside the GPU call."""
    app, spaces = zero
    silent = tmp_path / "silent.mp4"
    with VideoWriter(silent, 64, 64, 25) as writer:
        for _ in range(30):
            writer.write(np.full((64, 64, 3), 128, np.uint8))
    with pytest.raises(gr.Error, match=r"box") as err:
        app.run_lipsync(face_video=str(CLIP), audio=str(SPEECH), progress=quiet,
                        **{**FAST, "box": "300 400 300 400"})
    assert "ZeroGPU worker error" not in str(err.value.title)
    with pytest.raises(gr.Error, match=r"box"):
        app.run_preview(face_video=str(CLIP), audio=str(SPEECH), box="300 400 300 400", progress=quiet)
    # a video that cannot be scored: the evaluator's reason, not its class name
    _, _, summary = app.run_evaluate(video=str(CLIP), reference_video=str(silent), mode="whole-frame",
                                     progress=quiet)
    assert "not scored" in summary and "audio" in summary, summary
    assert [name for name, _ in spaces.calls].count("_score_or_message") == 2


def test_launch_loads_every_model_first(zero, monkeypatch):
    app, _ = zero
    loaded = []
    monkeypatch.setattr(app.Models, "preload", lambda self: loaded.append(self))
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kwargs: (None, "http://local", None))
    app.launch(app.demo, app.Settings(), block=False)
    assert loaded == [app.Models.shared()]
    assert "ZeroGPU" in app._device_note()


def test_preload_loads_both_checkpoints_and_every_network(weights_dir):
    models = app_module.Models(weights_dir=str(weights_dir), device="cpu")
    models.preload()
    engine, evaluator = models.engine(), models.evaluator()
    assert {key[0] for key in engine._generators} == set(CHECKPOINTS)
    loaded = dict(engine._generators)
    for chosen in ("fp32", "auto"):  # what a request asks for is already there: nothing new is loaded
        for checkpoint in CHECKPOINTS:
            options = LipSyncOptions(checkpoint=checkpoint, precision=chosen)
            assert any(engine.generator_for(options) is model for model in loaded.values())
    assert engine._generators == loaded
    assert engine._detectors and evaluator.syncnets and evaluator.detectors


def test_outside_zerogpu_the_gpu_functions_are_plain_calls():
    """With the real package installed and no ZeroGPU, spaces.GPU returns each function itself."""
    pytest.importorskip("spaces")
    assert app_module.spaces is not None and not app_module._on_zero_gpu()
    assert app_module._lipsync_on_gpu is app_module._lipsync_on_device
    assert app_module._score_on_gpu is app_module._score_or_message
