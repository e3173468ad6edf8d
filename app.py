"""The Space: a Gradio UI over the lip-sync engine (``lipsync``) and the SyncNet evaluator (``syncnet``).

This is the only file that imports gradio; what the app needs besides the page (settings and limits,
the shared models, the score cache, request folders, ZeroGPU's budget) is in ``service``. Handlers
(``run_lipsync``, ``run_lipsync_stream``, ``run_preview``, ``run_evaluate``) are plain functions of their
inputs: the UI, the named API endpoints ``/lipsync``, ``/lipsync_stream``, ``/preview`` and ``/evaluate``
and the tests all call the same code. Importing this module loads and downloads nothing: models load
once, on first use, and are shared by every request of the process; weights are fetched in a background
thread when the app is built, and the page shows their status.

Run: ``python app.py [--host HOST] [--port PORT] [--share] [--no-mcp]``. Environment: see ``service.settings.Settings``.
"""

from __future__ import annotations

import argparse
import contextvars
import dataclasses
import importlib.util
import inspect
import logging
import queue
import shutil
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import pandas as pd
import torch
from gradio.utils import get_upload_folder

from common import optspec
from common.errors import Cancelled, InputError, LipSyncError
from common.optspec import Parameter, option
from lipsync.options import LipSyncOptions
from lipsync.pipeline import LipSyncResult
from media.io import MediaInfo, audio_duration, probe
from media.segments import Segments
from service import folders
from service.gpu import (
    GPU_LIPSYNC_PER_SECOND,
    GPU_SCORE_PER_SECOND,
    GPU_START_SECONDS,
    PREVIEW_GPU_SECONDS,
    gpu_seconds,
)
from service.models import Models, WeightsStatus
from service.results import result_dict, rounded, scores_markdown
from service.settings import Settings, check_input
from syncnet.constants import VIDEO_FPS
from syncnet.evaluate import VideoResult
from syncnet.options import EvalOptions

try:  # Hugging Face ZeroGPU hardware: GPU work must run inside functions wrapped by spaces.GPU
    import spaces
except ImportError:
    spaces = None


def _on_zero_gpu() -> bool:
    """spaces.GPU runs functions in another process (arguments pickled) only on ZeroGPU hardware,
    which the package reads from SPACES_ZERO_GPU; elsewhere it returns the function itself."""
    return spaces is not None and bool(spaces.config.Config.zero_gpu)

log = logging.getLogger("app")

EXAMPLES = Path(__file__).resolve().parent / "examples"
OUTPUT_DIR_NAME = "lipsync-outputs"
# /lipsync_stream's pieces: Gradio's streaming video plays pieces of a second or more smoothly, at a few
# FFmpeg runs per piece; the first is short, so that it is out sooner (see patient_stream_audio)
SEGMENT_SECONDS = 2.0
FIRST_SEGMENT_SECONDS = 0.6
# Gradio's streamed video runs these programs on each piece; nothing else here needs them (PyAV, which
# reads and writes every video, carries FFmpeg in its wheel)
STREAM_PROGRAMS = ("ffmpeg", "ffprobe")
NO_STREAM_NOTE = ("Playing the video while it is made needs FFmpeg on this server (the `ffmpeg` and `ffprobe` "
                  "programs, e.g. `apt-get install ffmpeg`): without it the whole video appears when it is done.")
StopCheck = Callable[[], bool]  # asked by the engine and the evaluator as they go: True stops the run


def can_stream_video() -> bool:
    """Whether the output can play while it is made: Gradio's streamed video needs ``STREAM_PROGRAMS``."""
    return all(shutil.which(program) for program in STREAM_PROGRAMS)


# -- device work ------------------------------------------------------------------------------------------
# On ZeroGPU each function wrapped by _on_gpu runs in a GPU worker process: its arguments and results are
# pickled (file paths and CPU data only), what it changes in memory stays there, and an exception other
# than gr.Error reaches the user as its class name only; so every request makes one such call, readable
# errors are gr.Error inside it, and the score cache is kept on this side of it.
Scored = tuple["VideoResult | None", "str | None"]  # a video's scores, or why it could not be scored


def _on_gpu(fn: Callable, duration: int | Callable[..., int]) -> Callable:
    """``fn`` wrapped by spaces.GPU (which returns it unchanged outside ZeroGPU); ``duration``: seconds of
    GPU time to ask for, or a function of ``fn``'s arguments that says how many."""
    return spaces.GPU(duration=duration)(fn) if spaces is not None else fn


def _lipsync_gpu_seconds(request: LipSyncRequest, input_scored: Scored | None, *_: Any, **__: Any) -> int:
    """ZeroGPU's duration for _lipsync_on_device, called with its arguments (capped: check_gpu_time refused
    longer requests before any work)."""
    return min(request.gpu_seconds(input_scored is not None), Settings.from_env().gpu_max_seconds)


def _run_engine(face: Path, audio: Path, output: Path, options: LipSyncOptions, voice: Path | None = None,
                should_stop: StopCheck | None = None, segments: Segments | None = None) -> LipSyncResult:
    models = Models.shared()
    with models.engine_lock:
        return models.engine().run(face, audio, output, options, voice=voice, segments=segments,
                                   should_stop=should_stop)


def _synthesize_in_pieces(face: Path, audio: Path, output: Path, options: LipSyncOptions, voice: Path | None = None,
                          should_stop: StopCheck | None = None) -> Iterator[tuple[str, Any]]:
    """The lip sync, yielding ``("segment", path)`` for each playable piece of the output as it is
    finished, then ``("done", LipSyncResult)``.

    The engine runs in a thread and hands the pieces over through a queue, so a piece goes out as soon
    as it is written, whatever the consumer does meanwhile. When the consumer stops listening (the
    generator is closed), the engine stops at its next batch and the thread is joined.
    """
    pieces: queue.Queue[tuple[str, Any]] = queue.Queue()
    closed = threading.Event()

    def stopped() -> bool:
        return closed.is_set() or (should_stop is not None and should_stop())

    def work() -> None:
        try:
            folder = output.parent / "segments"
            folder.mkdir(exist_ok=True)
            segments = Segments(folder, SEGMENT_SECONDS, lambda path: pieces.put(("segment", path)),
                                first_seconds=FIRST_SEGMENT_SECONDS)
            pieces.put(("done", _run_engine(face, audio, output, options, voice, stopped, segments)))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            pieces.put(("error", exc))

    # a copy of the request's context: Gradio's progress tracking (track_tqdm) finds its event there
    thread = threading.Thread(target=contextvars.copy_context().run, args=(work,), name="lipsync-stream",
                              daemon=True)
    thread.start()
    try:
        while True:
            kind, item = pieces.get()
            if kind == "error":
                raise item
            yield kind, item
            if kind == "done":
                return
    finally:
        closed.set()
        thread.join()


def _lipsync_on_device(request: LipSyncRequest, input_scored: Scored | None, stream: bool,
                       should_stop: StopCheck | None = None) -> Iterator[tuple[str, Any]]:
    """All the device work of a lip-sync request, as one call: the lip sync, then scoring the output and
    (unless ``input_scored`` came from the cache) the input. Yields ``("segment", path)`` per finished
    piece when ``stream``, then ``("done", (LipSyncResult, {"output": Scored, "input": Scored}))``."""
    try:
        if stream:
            result = None
            for kind, item in _synthesize_in_pieces(request.face, request.audio, request.output, request.options,
                                                    request.voice, should_stop):
                if kind == "segment":
                    yield kind, item
                else:
                    result = item
        else:
            result = _run_engine(request.face, request.audio, request.output, request.options, request.voice,
                                 should_stop)
        scored = {"output": _score_or_message(request.output, request.scoring, should_stop)}
        if request.scores_input:
            scored["input"] = input_scored or _score_or_message(request.face_video, request.scoring, should_stop)
        yield "done", (result, scored)
    except LipSyncError as exc:  # here, where ZeroGPU would hand the user only its class name
        raise gr.Error(str(exc), title="Cannot lip-sync this") from exc


_lipsync_on_gpu = _on_gpu(_lipsync_on_device, _lipsync_gpu_seconds)


def _preview_on_device(face: Path, audio: Path, at_seconds: float, options: LipSyncOptions,
                       voice: Path | None = None) -> np.ndarray:
    models = Models.shared()
    try:
        with models.engine_lock:
            return models.engine().preview(face, audio, at_seconds, options, voice=voice)
    except LipSyncError as exc:
        raise gr.Error(str(exc), title="Cannot preview this") from exc


_render_preview = _on_gpu(_preview_on_device, PREVIEW_GPU_SECONDS)


def _score(path: Path, options: EvalOptions, should_stop: StopCheck | None = None) -> VideoResult:
    models = Models.shared()
    with models.evaluator_lock:
        return models.evaluator().evaluate(path, options, should_stop=should_stop)


def _score_or_message(path: Path, options: EvalOptions, should_stop: StopCheck | None = None) -> Scored:
    """The scores, or the evaluator's message when the video cannot be scored (no face track, no audio...)."""
    try:
        return _score(path, options, should_stop), None
    except LipSyncError as exc:
        return None, str(exc)


def _score_gpu_seconds(path: Path, *_: Any, **__: Any) -> int:
    settings = Settings.from_env()
    return min(gpu_seconds(0, probe(path).duration or settings.max_seconds), settings.gpu_max_seconds)


_score_on_gpu = _on_gpu(_score_or_message, _score_gpu_seconds)


def client_gone(request: gr.Request | None) -> StopCheck | None:
    """True once the request's event is over for Gradio: its client disconnected, or Gradio ended it
    (its output handling failed, or it was cancelled), for the engine to stop and free the models.

    Gradio offers no public way to ask; this reads its queue (tests/test_app.py checks it still works):
    the events of the request's session that run when the handler starts (its own; with
    LIPSYNC_CONCURRENCY above 1 perhaps another beside it, and the run stops once all are over), kept
    by identity, so that the session's next request does not keep this one alive. None where there is
    no request (direct calls) and on ZeroGPU, whose GPU functions get pickled arguments in another
    process, where the queue cannot be seen.
    """
    connection = getattr(request, "request", None)
    session = getattr(request, "session_hash", None)
    if connection is None or session is None or _on_zero_gpu():
        return None
    queue = connection.app.get_blocks()._queue

    def running() -> list[Any]:
        return [e for job in queue.active_jobs if job for e in job]

    mine = [e for e in running() if e.session_hash == session]
    if not mine:
        return None

    def gone() -> bool:
        now = running()
        return not any(e.alive and any(e is other for other in now) for e in mine)

    return gone


def patient_stream_audio(startup: float = 1.0, steady: float = 0.25) -> bool:
    """Let Gradio's streamed video send each piece's sound with the piece. Returns whether it could.

    Gradio re-encodes the sound of streamed pieces with one FFmpeg AAC encoder per stream, and sends
    with each piece the frames that encoder has put out after waiting ``STARTUP_WAIT`` (0.1 s) for the
    first piece and ``STEADY_WAIT`` (5 ms) between reads. On 2 CPU cores that is a small part of a
    piece's sound; the rest goes out with the next piece, and the browser, which plays only where it
    has both picture and sound, plays each piece only once the next one is in (measured in Chromium:
    0.19 s of sound buffered under a 0.4 s first piece, 0.38 s under the first 2.4 s; 0.32 s and 2.37 s
    with the waits below). Longer waits cost the pieces a quarter of a second each on their way out, in
    Gradio's threads, not the engine's.
    """
    try:
        from gradio import audio_stream_encoder as encoder
    except ImportError:
        return False
    if not all(isinstance(getattr(encoder, name, None), float) for name in ("STARTUP_WAIT", "STEADY_WAIT")):
        return False
    encoder.STARTUP_WAIT = max(encoder.STARTUP_WAIT, startup)
    encoder.STEADY_WAIT = max(encoder.STEADY_WAIT, steady)
    return True


def request_dir(settings: Settings) -> Path:
    """A fresh folder for one request, inside Gradio's cache: results written there are served in place
    (Gradio copies files from anywhere else into its cache), and Blocks(delete_cache=...) deletes them
    after LIPSYNC_KEEP_SECONDS."""
    return folders.request_dir(Path(get_upload_folder()) / OUTPUT_DIR_NAME, settings.keep_seconds)


def _score_safely(path: Path, options: EvalOptions, should_stop: StopCheck | None = None) -> Scored:
    """Scores (from the cache when this content was scored so already), or the evaluator's message when
    the video cannot be scored (no face track, no audio...)."""
    cache = Models.shared().scores
    try:
        key, result = cache.lookup(path, options)
    except LipSyncError as exc:
        return None, str(exc)
    if result is not None:
        return result, None
    result, message = _score_on_gpu(path, options, should_stop)
    if result is not None:
        cache.put(key, result)
    return result, message


# -- the endpoints' parameters, derived from the options dataclasses ----------------------------------
@dataclass(frozen=True)
class InputScoring:
    """The app's own switch, declared like the options so it gets a CLI-free parameter and a checkbox."""

    score_input: bool = option(True, "Also score the face video against its own audio, when it has some.",
                               "Also score the input video with its own audio (before / after)")


# What each file parameter takes: a URL, or a file uploaded to the app (gradio_client's handle_file does it)
LIPSYNC_FILES = {
    "face_video": "Video of a face (mp4, mov, mkv, webm, avi...), as a URL or an uploaded file; give this or "
                  "face_image.",
    "face_image": "Still photo of a face (jpg, png, webp), as a URL or an uploaded file; used when face_video is "
                  "empty.",
    "audio": "Speech (wav, mp3, m4a, flac, ogg, or a video whose audio is used), as a URL or an uploaded file; its "
             "length sets the output's.",
    "voice": "Optional: speech that drives the lips while `audio` is what the output plays (e.g. a song's "
             "vocals, with the full mix as audio); as long as audio, within one frame.",
}
EVALUATE_FILES = {
    "video": "The video to score (with its own audio), as a URL or an uploaded file.",
    "reference_video": "Optional second video scored beside it (e.g. the original before lip sync).",
}
@dataclass(frozen=True)
class PreviewTime:
    """/preview's own parameter, declared like the options."""

    at_seconds: float = option(0.0, "Time in the output, in seconds, of the frame to preview.", "Preview at (s)",
                               minimum=0)


PREVIEW_FILES = LIPSYNC_FILES
LIPSYNC_PARAMS = optspec.parameters(LipSyncOptions)
INPUT_SCORING_PARAMS = optspec.parameters(InputScoring)
PREVIEW_PARAMS = optspec.parameters(PreviewTime)
# /lipsync's scoring options carry a score_ prefix (score_mode...); min_track was documented without it.
# The Lip sync tab scores as a quick check, with faces detected on every 5th frame (about 3x faster:
# a 10 s 720p clip scores in ~20 s instead of ~60 s on 2 CPU cores), at the size the faces are, in the
# hardware's fast precision; the Evaluate tab's defaults are the reference's.
LIPSYNC_SCORING = {"detect_every": 5, "detect_at_face_size": True, "precision": "auto"}
SCORE_PARAMS = optspec.parameters(EvalOptions, prefix="score_", unprefixed=("min_track",), presets=LIPSYNC_SCORING)
EVALUATE_PARAMS = optspec.parameters(EvalOptions)


STOPPED = "The request was stopped: its client disconnected."


def endpoint(body: Callable[..., Any], name: str, files: dict[str, str], params: list[Parameter],
             summary: str, returns: str, *, stream: bool = False) -> Callable[..., Any]:
    """A Gradio handler named ``name`` whose signature and docstring list ``files`` then ``params``.

    Gradio names the API parameters after the signature and shows the docstring, which is also the
    description of the MCP tool it names ``name``; Python callers may pass them by keyword too. The
    function calls ``body(values, progress, should_stop)``, values keyed by name; ``should_stop`` (see
    ``client_gone``) is None when nothing can tell that the client left.
    """
    P = inspect.Parameter
    signature = inspect.Signature(
        [P(n, P.POSITIONAL_OR_KEYWORD, default=None) for n in files]
        + [P(p.name, P.POSITIONAL_OR_KEYWORD, default=p.default) for p in params]
        + [P("request", P.POSITIONAL_OR_KEYWORD, default=None, annotation=gr.Request),
           P("progress", P.POSITIONAL_OR_KEYWORD, default=gr.Progress(track_tqdm=True))])

    def arguments(args: tuple, kwargs: dict) -> tuple[dict[str, Any], gr.Progress, StopCheck | None]:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        values = dict(bound.arguments)
        progress = values.pop("progress")
        return values, progress, client_gone(values.pop("request"))

    def handler(*args: Any, **kwargs: Any) -> Any:
        try:
            return body(*arguments(args, kwargs))
        except Cancelled:  # nobody is listening any more; this only ends the event quietly
            raise gr.Error(STOPPED) from None

    def stream_handler(*args: Any, **kwargs: Any) -> Iterator[Any]:  # Gradio streams a generator function
        try:
            yield from body(*arguments(args, kwargs))
        except Cancelled:
            raise gr.Error(STOPPED) from None

    if stream:
        handler = stream_handler
    handler.__signature__ = signature
    handler.__annotations__ = {"request": gr.Request}  # Gradio finds the parameter it fills in by type
    args = [f"{n}: {text}" for n, text in files.items()] + optspec.describe(params)
    handler.__doc__ = (summary + "\n\nArgs:\n" + "\n".join(f"    {line}" for line in args)
                       + f"\n\nReturns:\n    {returns}")
    handler.__name__ = handler.__qualname__ = name
    return handler


def options_from(cls: type, values: dict[str, Any], params: list[Parameter]) -> Any:
    """The options dataclass from an endpoint's values (InputError says which parameter is wrong)."""
    return optspec.from_parameters(cls, values, params)


# -- handlers (the named API endpoints) ---------------------------------------------------------------
def _face_and_audio(values: dict[str, Any]) -> tuple[str, str, str | None]:
    """``(face, audio, voice)`` of a /lipsync or /preview request; gr.Error when one is missing."""
    face = values["face_video"] or values["face_image"]
    if not face:
        raise gr.Error("Give a face: upload a video or a photo (or record one with the webcam).")
    if not values["audio"]:
        raise gr.Error("Give the speech: upload an audio file or record one with the microphone.")
    return face, values["audio"], values.get("voice") or None


def _check_inputs(values: dict[str, Any], settings: Settings) -> MediaInfo:
    """The limits of every file of a /lipsync or /preview request; the face's MediaInfo."""
    face, audio, voice = _face_and_audio(values)
    face_info = check_input(face, settings, "face video" if values["face_video"] else "face photo")
    check_input(audio, settings, "audio", audio=True)
    if voice:
        check_input(voice, settings, "voice track", audio=True)
    return face_info


@dataclass
class LipSyncRequest:
    """A /lipsync or /lipsync_stream request, checked: its files, options and result folder."""

    face: Path
    audio: Path
    voice: Path | None
    face_video: Path | None  # the face input when it is a video (scored as the input)
    face_info: MediaInfo
    options: LipSyncOptions
    score_input: bool
    scoring: EvalOptions
    folder: Path
    output: Path
    seconds: float  # of the output: the audio's length

    @property
    def scores_input(self) -> bool:
        """Whether the input is scored too: asked for, and a video with its own sound."""
        return bool(self.score_input and self.face_video and self.face_info.has_audio)

    def gpu_seconds(self, input_cached: bool = False) -> int:
        """GPU time for the lip sync and its scorings (see gpu_seconds)."""
        input_seconds = (self.face_info.duration or 0.0) if self.scores_input and not input_cached else 0.0
        scored = self.seconds + input_seconds
        return gpu_seconds(self.seconds, scored)

    def check_gpu_time(self, settings: Settings) -> None:
        """On ZeroGPU, refuse before any work a request that needs more GPU time than one call is given."""
        needed = self.gpu_seconds()
        if _on_zero_gpu() and needed > settings.gpu_max_seconds:
            per_second = GPU_LIPSYNC_PER_SECOND + 2 * GPU_SCORE_PER_SECOND
            shorter = (settings.gpu_max_seconds - GPU_START_SECONDS) / per_second
            raise InputError(f"this request needs about {needed} s of GPU time and this Space grants up to "
                             f"{settings.gpu_max_seconds} s per request: trim the audio to about {shorter:.0f} s, "
                             "or turn off scoring the input (LIPSYNC_GPU_MAX_SECONDS sets the limit)")

    @classmethod
    def checked(cls, values: dict[str, Any], settings: Settings) -> LipSyncRequest:
        """The request's limits and options checked (LipSyncError says what is wrong); its folder made."""
        face, audio, voice = _face_and_audio(values)
        face_info = _check_inputs(values, settings)
        options = options_from(LipSyncOptions, values, LIPSYNC_PARAMS)
        score_input = options_from(InputScoring, values, INPUT_SCORING_PARAMS).score_input
        scoring = options_from(EvalOptions, values, SCORE_PARAMS)
        seconds = audio_duration(Path(audio)) or settings.max_seconds
        folder = request_dir(settings)
        request = cls(Path(face), Path(audio), Path(voice) if voice else None,
                      Path(values["face_video"]) if values["face_video"] else None, face_info, options, score_input,
                      scoring, folder, folder / f"{folders.safe_stem(face)}_lipsync.mp4", seconds)
        try:
            request.check_gpu_time(settings)
        except InputError:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return request


@contextmanager
def _lipsync_errors() -> Iterator[Callable[[LipSyncRequest], None]]:
    """Around a lip-sync request: LipSyncError becomes gr.Error, and a failed request's folder is removed.
    Yields the function that records the request once it is made (and its folder exists)."""
    made: list[LipSyncRequest] = []
    try:
        yield made.append
    except BaseException as exc:
        for request in made:
            shutil.rmtree(request.folder, ignore_errors=True)
        if isinstance(exc, LipSyncError):
            raise gr.Error(str(exc), title="Cannot lip-sync this") from exc
        raise


def _lipsync_run(request: LipSyncRequest, stream: bool, should_stop: StopCheck | None) -> Iterator[tuple[str, Any]]:
    """The request's device work (one GPU call), with the input's score from the cache and kept there."""
    cache = Models.shared().scores
    key, cached = None, None
    if request.scores_input:
        key, known = cache.lookup(request.face_video, request.scoring)
        if known is not None:
            cached = (known, None)
    for kind, item in _lipsync_on_gpu(request, cached, stream, should_stop):
        if kind == "done" and key is not None and cached is None and item[1]["input"][0] is not None:
            cache.put(key, item[1]["input"][0])
        yield kind, item


def _lipsync(values: dict[str, Any], progress: gr.Progress,
             should_stop: StopCheck | None) -> tuple[str, str, dict[str, Any]]:
    with _lipsync_errors() as keep:
        request = LipSyncRequest.checked(values, Settings.from_env())
        keep(request)
        progress(0, desc="lip sync, then scoring")
        *_, (_, (result, scored)) = _lipsync_run(request, False, should_stop)
        return _outputs(request, result, scored)


def _outputs(request: LipSyncRequest, result: LipSyncResult,
             scored: dict[str, Scored]) -> tuple[str, str, dict[str, Any]]:
    """/lipsync's three outputs: the video, the Markdown summary, the JSON details."""
    out_scores = result_dict(*scored["output"])
    in_scores = result_dict(*scored["input"]) if "input" in scored else None
    rows = [("lip-synced output", out_scores)] + ([("input, with its own audio", in_scores)] if in_scores else [])
    summary = [f"**{result.n_frames} frames, {result.fps:g} fps, {result.duration:.2f} s, "
               f"{result.width}x{result.height}.**", scores_markdown(rows)]
    if result.no_face_ranges:
        summary.append(f"**Note:** {result.message}.")
    details = {
        "output": out_scores, "input": in_scores,
        "no_face_ranges": [list(r) for r in result.no_face_ranges],
        "n_frames": result.n_frames, "fps": result.fps, "duration": result.duration,
        "timings": {k: round(v, 3) for k, v in result.timings.items()},
        # the before/after plot's points, [time (s), confidence, series]: in the JSON, so that /lipsync
        # keeps its three outputs for API callers and a private follow-up event fills the plot
        "curve": [row for series, (video_result, _) in scored.items() if video_result is not None
                  for row in confidence_rows(video_result, series)],
    }
    return str(request.output), "\n\n".join(summary), details


run_lipsync = endpoint(
    _lipsync, "lipsync", LIPSYNC_FILES, LIPSYNC_PARAMS + INPUT_SCORING_PARAMS + SCORE_PARAMS,
    "Lip-sync a face video (or a still photo) to a speech track with Wav2Lip, then score the result.",
    'The lip-synced MP4 (H.264 + AAC); a Markdown summary (scores, frames without a face); and the same as JSON: '
    '{"output": scores, "input": scores or null, "no_face_ranges", "n_frames", "fps", "duration", "timings", '
    '"curve"}, where scores = {"lse_d", "lse_c", "offset", "tracks", "messages"} and curve lists the sync '
    'confidence over time of the output and the scored input as [time (s), confidence, "output" or "input"].')


def _lipsync_stream(values: dict[str, Any], progress: gr.Progress,
                    should_stop: StopCheck | None) -> Iterator[tuple[Any, Any, Any, Any]]:
    """/lipsync as it is made: each finished piece goes to the streaming player, then /lipsync's outputs.
    Where Gradio cannot stream video (see can_stream_video), only /lipsync's outputs, at the end."""
    with _lipsync_errors() as keep:
        request = LipSyncRequest.checked(values, Settings.from_env())
        keep(request)
        progress(0, desc="lip sync, then scoring")
        for kind, item in _lipsync_run(request, can_stream_video(), should_stop):
            if kind == "segment":
                yield str(item), gr.skip(), gr.skip(), gr.skip()
            else:
                yield (gr.skip(), *_outputs(request, *item))


run_lipsync_stream = endpoint(
    _lipsync_stream, "lipsync_stream", LIPSYNC_FILES, LIPSYNC_PARAMS + INPUT_SCORING_PARAMS + SCORE_PARAMS,
    f"/lipsync, streamed: the output plays while it is made, in pieces ({FIRST_SEGMENT_SECONDS:g} s, then "
    f"{SEGMENT_SECONDS:g} s each), then the whole MP4 and the scores come as /lipsync gives them (on a server "
    "without FFmpeg's programs, only those).",
    "While it runs, the pieces for the streaming player (with gradio_client, snapshots of its HLS playlist: "
    "use the second output); at the end, /lipsync's three outputs: the lip-synced MP4, the Markdown summary and "
    "the JSON.", stream=True)


def _preview(values: dict[str, Any], progress: gr.Progress, should_stop: StopCheck | None) -> np.ndarray:
    settings = Settings.from_env()
    face, audio, voice = _face_and_audio(values)
    try:
        _check_inputs(values, settings)
        options = options_from(LipSyncOptions, values, LIPSYNC_PARAMS)
        at_seconds = options_from(PreviewTime, values, PREVIEW_PARAMS).at_seconds
        progress(0, desc="preview")
        frame = _render_preview(Path(face), Path(audio), at_seconds, options, Path(voice) if voice else None)
    except LipSyncError as exc:
        raise gr.Error(str(exc), title="Cannot preview this") from exc
    return np.ascontiguousarray(frame[..., ::-1])  # BGR -> RGB for the image


run_preview = endpoint(
    _preview, "preview", PREVIEW_FILES, LIPSYNC_PARAMS + PREVIEW_PARAMS,
    "One frame of the lip sync, in a few seconds: the face box found (green) and the generated mouth pasted, at the "
    "chosen time, to check the settings (pads, face choice, fixed box) before the full run. A single frame "
    "cannot show the run's smoothing of the box over time.",
    "The frame (PNG) as the output will show it, with the padded face box drawn in green.")

CURVE_COLUMNS = ["time (s)", "confidence", "series"]
TABLE_COLUMNS = ["video", "track", "first frame", "last frame", "LSE-D", "LSE-C", "offset"]


def _evaluate(values: dict[str, Any], progress: gr.Progress,
              should_stop: StopCheck | None) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    settings = Settings.from_env()
    videos = [(label, path) for label, path in (("A", values["video"]), ("B", values["reference_video"])) if path]
    if not videos:
        raise gr.Error("Give a video to score.")
    try:
        options = options_from(EvalOptions, values, EVALUATE_PARAMS)
        for label, path in videos:
            check_input(path, settings, f"video {label}")
    except LipSyncError as exc:
        raise gr.Error(str(exc), title="Cannot score this") from exc

    table, curves, summary, errors = [], [], [], []
    for label, path in videos:
        name = f"{label}: {Path(path).name}"
        progress(0, desc=f"scoring video {label}")
        result, error = _score_safely(Path(path), options, should_stop)
        if result is None:
            errors.append(f"{name}: {error}")
            continue
        scores = result_dict(result)
        summary.append((name, scores))
        for i, track in enumerate(result.tracks):
            table.append([name, i, track.first_frame, track.last_frame, rounded(track.lse_d),
                          rounded(track.lse_c), track.offset])
        curves += confidence_rows(result, label)
    if not summary:
        raise gr.Error("\n".join(errors), title="Cannot score this")
    text = scores_markdown(summary)
    if errors:
        text += "\n\n" + "\n".join(f"- **not scored**, {e}" for e in errors)
    return pd.DataFrame(table, columns=TABLE_COLUMNS), curve_frame(curves), text


run_evaluate = endpoint(
    _evaluate, "evaluate", EVALUATE_FILES, EVALUATE_PARAMS,
    "Score how well lips and speech agree in a video (SyncNet LSE-D / LSE-C / AV offset).",
    'A table with one row per video and face track (LSE-D: lower is better; LSE-C: higher is better; offset in '
    'frames); the sync confidence over time (columns "time (s)", "confidence", "series"); and a Markdown summary.')


def confidence_rows(result: VideoResult, label: str) -> list[list[Any]]:
    """``[time (s), confidence, series]`` per window of each face track; series = ``label`` (+ the track)."""
    rows = []
    for i, track in enumerate(result.tracks):
        series = f"{label} track {i}" if len(result.tracks) > 1 else label
        rows += [[(track.first_frame + j) / VIDEO_FPS, float(conf), series]
                 for j, conf in enumerate(track.confidence)]
    return rows


def curve_from_details(details: dict[str, Any] | None) -> Any:
    """The Lip sync tab's before/after plot from /lipsync's JSON (the UI's follow-up event)."""
    rows = (details or {}).get("curve") or []
    return curve_frame(rows) if rows else None


def curve_frame(rows: list[list[Any]]) -> pd.DataFrame:
    """Confidence points with numeric time and confidence columns (the plot picks its axis types from them)."""
    frame = pd.DataFrame(rows, columns=CURVE_COLUMNS)
    return frame.astype({"time (s)": float, "confidence": float, "series": str})


def keep_one_face(value: str | None) -> Any:
    """When one face input gets a file, empty the other, so the request is never ambiguous."""
    return None if value else gr.skip()


def prefill_evaluate(output_video: str | None, face_video: str | None) -> tuple[str | None, str | None]:
    """After a lip sync, the Evaluate tab holds the result and the original, ready to score side by side."""
    return output_video, face_video


# -- malformed requests get this app's own message -----------------------------------------------------
# A gr.Error raised while Gradio prepares an input reaches gradio_client as it is; any other
# exception there only as "The upstream Gradio app has raised an exception but has not enabled
# verbose error reporting" (gradio's Blocks.preprocess_data). Arguments given in the wrong order
# (a number where a file goes, a sound as the photo) fail right there.
FILE_KINDS = {"video": "a video file", "image": "a still image (jpg, png, webp)", "audio": "an audio file"}
ORDER_HINT = ("check the order of the arguments ({order}; view_api() lists them) or pass them by name, "
              "files as handle_file('path or URL')")
LIPSYNC_ORDER = "/lipsync takes " + ", ".join(LIPSYNC_FILES) + ", then the options"
EVALUATE_ORDER = "/evaluate takes " + ", ".join(EVALUATE_FILES) + ", then the options"


def checked_by_the_handler(component: gr.components.Component) -> gr.components.Component:
    """An option control that hands its value over as it came: ``optspec.from_parameters`` checks it
    in the handler, with a message naming the parameter (Gradio's own checks would say "Value 0.5
    is not in the list of choices" or fail on a string given to a number)."""
    component.preprocess = lambda payload: payload
    return component


def readable_file_input(component: gr.components.Component, param: str, order: str) -> gr.components.Component:
    """A file input whose refusals name the API parameter and what it takes.

    Gradio validates the payload against the component's data model (a FileData dict) before its
    ``preprocess`` runs, so both are wrapped: a non-file payload and a file the component cannot
    read (an audio file given as the photo) become gr.Error.
    """
    kind = FILE_KINDS[component.get_block_name()]
    hint = ORDER_HINT.format(order=order)

    def refuse(what: str) -> gr.Error:
        return gr.Error(f"{param} takes {kind}, but got {what}: {hint}", title="Check the request")

    base = component.data_model

    class Checked(base):  # type: ignore[misc, valid-type]
        __doc__ = base.__doc__
        model_config = {"title": base.__name__}  # the API schema keeps its name

        @classmethod
        def model_validate(cls, obj: Any, **kwargs: Any) -> Any:
            try:
                return super().model_validate(obj, **kwargs)
            except ValueError:  # pydantic's ValidationError
                raise refuse(_shown(obj)) from None

    component.data_model = Checked
    gradio_preprocess = component.preprocess

    def preprocess(payload: Any) -> Any:
        try:
            return gradio_preprocess(payload)
        except gr.Error:
            raise
        except Exception as exc:  # whatever the component's reader raises on a file it cannot read
            name = Path(getattr(payload, "path", None) or "the file").name
            raise refuse(f"{name}, which is not one ({exc.__class__.__name__})") from exc

    component.preprocess = preprocess
    return component


def _shown(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


# -- UI ------------------------------------------------------------------------------------------------
INTRO = """# Wav2Lip lip sync
Make a face video (or a photo) speak any audio with [Wav2Lip](https://github.com/Rudrabha/Wav2Lip), then check
the result with SyncNet's **LSE-D** (distance between lips and audio, lower is better) and **LSE-C** (confidence,
higher is better). The Wav2Lip weights are for research and non-commercial use only."""


def _example_rows() -> tuple[list[list[str | None]], list[list[str | None]]]:
    clip, still, speech = (EXAMPLES / n for n in ("face_clip.mp4", "face_still.jpg", "speech.wav"))
    if not all(p.is_file() for p in (clip, still, speech)):
        log.warning("examples missing from %s: run python examples/make_examples.py", EXAMPLES)
        return [], []
    return [[str(clip), None, str(speech)], [None, str(still), str(speech)]], [[str(clip), None]]


def _device_note() -> str:
    if _on_zero_gpu():
        return "ZeroGPU (a GPU is attached per request)"
    if torch.cuda.is_available():
        return f"GPU ({torch.cuda.get_device_name(0)})"
    return "CPU (slow: a fixed face box under Advanced skips face detection, the slowest step)"


def _component(param: Parameter, elem_prefix: str) -> gr.components.Component:
    """The UI control of one parameter; its initial value is the option's default (the API's too)."""
    info = param.spec.help if not param.part else None  # a tuple's parts share one help text: show it once
    common = {"label": param.label, "info": info, "elem_id": elem_prefix + param.name.replace("_", "-")}
    if param.kind == "bool":
        return checked_by_the_handler(gr.Checkbox(param.default, **common))
    if param.kind == "choice":
        return checked_by_the_handler(gr.Radio(list(param.choices), value=param.default, **common))
    if param.kind == "numbers":
        return checked_by_the_handler(gr.Textbox(param.default, placeholder=param.placeholder, **common))
    bounds = {"minimum": param.spec.minimum, "maximum": param.spec.maximum}
    return checked_by_the_handler(
        gr.Number(param.default, precision=0 if param.element is int else None, min_width=120, **common, **bounds))


def option_controls(params: list[Parameter], elem_prefix: str = "") -> dict[str, gr.components.Component]:
    """One control per parameter, keyed by its name: a row per option group, rare ones in "More options"."""
    controls: dict[str, gr.components.Component] = {}

    def lay_out(subset: list[Parameter]) -> None:
        groups: dict[str, list[Parameter]] = {}
        for p in subset:
            groups.setdefault(p.spec.group, []).append(p)
        for members in groups.values():
            with gr.Row():
                for p in members:
                    controls[p.name] = _component(p, elem_prefix)

    lay_out([p for p in params if not p.spec.advanced])
    rare = [p for p in params if p.spec.advanced]
    if rare:
        with gr.Accordion("More options", open=False):
            lay_out(rare)
    return controls


def build_demo(settings: Settings | None = None, status: WeightsStatus | None = None) -> gr.Blocks:
    """The Blocks app, queued. Nothing is fetched or loaded here: the weights are fetched when the app is
    launched, or when the page is first opened (``gradio app.py`` reload mode)."""
    settings = settings or Settings.from_env()
    status = status or WeightsStatus()
    if not patient_stream_audio():
        log.warning("this Gradio streams video differently from 6.x: the page may play each piece late")
    lipsync_rows, evaluate_rows = _example_rows()
    heavy = {"concurrency_limit": settings.concurrency, "concurrency_id": "models"}
    light: dict[str, Any] = {"api_visibility": "private", "queue": False}

    with gr.Blocks(title="Wav2Lip lip sync", delete_cache=(settings.keep_seconds, settings.keep_seconds)) as demo:
        gr.Markdown(INTRO)
        weights_md = gr.Markdown(status.markdown(), elem_id="weights-status")
        streams = can_stream_video()
        gr.Markdown(f"Running on {_device_note()}. " + ("" if streams else NO_STREAM_NOTE + " ")
                    + settings.describe(), elem_id="limits")
        timer = gr.Timer(1.0)

        with gr.Tab("Lip sync", id="lipsync"):
            with gr.Row():
                with gr.Column():
                    with gr.Tab("Face video"):
                        face_video = gr.Video(label="Face video", sources=["upload", "webcam"], elem_id="face-video")
                    with gr.Tab("Face photo"):
                        face_image = gr.Image(label="Face photo", type="filepath", image_mode=None,
                                              sources=["upload", "webcam", "clipboard"], elem_id="face-image")
                    audio = gr.Audio(label="Speech", type="filepath", sources=["upload", "microphone"],
                                     elem_id="audio")
                    with gr.Accordion("Separate voice track (optional)", open=False, elem_id="voice-track"):
                        voice = gr.Audio(label="Voice: drives the lips, while the output plays the Speech above "
                                         "(e.g. a song's vocals, with the full mix as Speech); same length",
                                         type="filepath", sources=["upload", "microphone"], elem_id="voice")
                    controls = option_controls(INPUT_SCORING_PARAMS)
                    with gr.Accordion("Advanced", open=False, elem_id="advanced"):
                        controls |= option_controls(LIPSYNC_PARAMS)
                        with gr.Accordion("Scoring options", open=False, elem_id="scoring-options"):
                            controls |= option_controls(SCORE_PARAMS)
                    preview_controls = option_controls(PREVIEW_PARAMS)
                    with gr.Row():
                        preview_button = gr.Button("Preview one frame", elem_id="run-preview")
                        run_button = gr.Button("Lip sync", variant="primary", elem_id="run-lipsync")
                    # under the buttons, where the settings it checks are, not at the head of the other column
                    preview_image = gr.Image(label="Preview: the face box (green) and the mouth at that time",
                                             type="numpy", format="png", interactive=False, elem_id="preview-image")
                with gr.Column():
                    # without FFmpeg's programs Gradio cannot stream it: the page says so above, and the
                    # whole video comes in the next player
                    stream_video = gr.Video(label="Playing while it is made", streaming=True, autoplay=True,
                                            interactive=False, visible=streams, elem_id="stream-video")
                    out_video = gr.Video(label="Lip-synced video (the whole file, to download)", interactive=False,
                                         buttons=["download"], elem_id="output-video")
                    out_summary = gr.Markdown(elem_id="lipsync-summary")
                    lipsync_plot = gr.LinePlot(None, x="time (s)", y="confidence", color="series",
                                               label="Sync confidence over time: output and input (before / after)",
                                               elem_id="lipsync-plot")
                    with gr.Accordion("Details (JSON)", open=False):
                        out_details = gr.JSON(label="Details")
            if lipsync_rows:
                gr.Examples(lipsync_rows, [face_video, face_image, audio], cache_examples=False,
                            example_labels=["video + other speech", "photo + speech"], api_visibility="private")

        with gr.Tab("Evaluate", id="evaluate"):
            gr.Markdown("Score any video. After a lip sync, A holds the result and B the original: "
                        "press **Score** to compare them.")
            with gr.Row():
                eval_video = gr.Video(label="Video A", sources=["upload"], elem_id="eval-video")
                eval_reference = gr.Video(label="Video B (optional)", sources=["upload"], elem_id="eval-reference")
            eval_controls = option_controls(EVALUATE_PARAMS, elem_prefix="eval-")
            eval_button = gr.Button("Score", variant="primary", elem_id="run-evaluate")
            eval_summary = gr.Markdown(elem_id="evaluate-summary")
            eval_table = gr.Dataframe(headers=TABLE_COLUMNS, label="Per face track", interactive=False)
            # no initial frame: an empty one fixes an empty colour domain and later lines stay invisible
            eval_plot = gr.LinePlot(None, x="time (s)", y="confidence", color="series",
                                    label="Sync confidence over time (higher: lips and speech agree)")
            if evaluate_rows:
                gr.Examples(evaluate_rows, [eval_video, eval_reference], cache_examples=False,
                            api_visibility="private")

        for component, param in ((face_video, "face_video"), (face_image, "face_image"), (audio, "audio"),
                                 (voice, "voice")):
            readable_file_input(component, param, LIPSYNC_ORDER)
        for component, param in ((eval_video, "video"), (eval_reference, "reference_video")):
            readable_file_input(component, param, EVALUATE_ORDER)
        lipsync_inputs = [face_video, face_image, audio, voice] + [
            controls[p.name] for p in LIPSYNC_PARAMS + INPUT_SCORING_PARAMS + SCORE_PARAMS]
        # the button streams; /lipsync, for API callers, is the same work returned at the end
        run_event = run_button.click(run_lipsync_stream, inputs=lipsync_inputs,
                                     outputs=[stream_video, out_video, out_summary, out_details],
                                     api_name="lipsync_stream", **heavy)
        run_event.success(prefill_evaluate, [out_video, face_video], [eval_video, eval_reference], **light)
        run_event.success(curve_from_details, out_details, lipsync_plot, **light)
        api_only = gr.Button(visible=False)
        api_only.click(run_lipsync, inputs=lipsync_inputs, outputs=[out_video, out_summary, out_details],
                       api_name="lipsync", **heavy)
        preview_inputs = [face_video, face_image, audio, voice] + [controls[p.name] for p in LIPSYNC_PARAMS] + [
            preview_controls[p.name] for p in PREVIEW_PARAMS]
        preview_button.click(run_preview, inputs=preview_inputs, outputs=preview_image, api_name="preview", **heavy)
        evaluate_inputs = [eval_video, eval_reference] + [eval_controls[p.name] for p in EVALUATE_PARAMS]
        eval_button.click(run_evaluate, inputs=evaluate_inputs, outputs=[eval_table, eval_plot, eval_summary],
                          api_name="evaluate", **heavy)
        face_video.input(keep_one_face, face_video, face_image, **light)
        face_image.input(keep_one_face, face_image, face_video, **light)

        def refresh_weights() -> tuple[str, gr.Timer]:
            status.start()  # the first page view starts the fetch, when the app was not launched by main()
            return status.markdown(), gr.Timer(active=not status.done())

        timer.tick(refresh_weights, outputs=[weights_md, timer], **light)
        demo.load(refresh_weights, outputs=[weights_md, timer], **light)

    demo.queue(default_concurrency_limit=settings.concurrency, max_size=settings.queue_size)
    demo.weights_status = status
    return demo


def launch(demo: gr.Blocks, settings: Settings, *, host: str | None = None, port: int | None = None,
           share: bool = False, block: bool = True) -> tuple[Any, str, str | None]:
    """Start fetching the weights (on ZeroGPU: load every model first), then the server (``block=False``
    returns at once, for tests), with the MCP server unless ``settings.mcp`` is off; returns (app,
    local_url, share_url)."""
    if _on_zero_gpu():
        Models.shared().preload()
    demo.weights_status.start()
    return demo.launch(
        server_name=host, server_port=port, share=share, mcp_server=serves_mcp(settings),
        max_file_size=int(settings.max_mb * 2**20), allowed_paths=[str(EXAMPLES)],
        prevent_thread_lock=not block, theme=gr.themes.Soft(), footer_links=["api", "gradio"],
        # an exception that is not this app's gr.Error (one raised in Gradio's own output handling, say)
        # still reaches the page and gradio_client with its message, never as a bare "Error"
        show_error=True,
    )


def serves_mcp(settings: Settings) -> bool:
    """Whether the app serves its tools over MCP: asked for (the default) and Gradio's MCP extra installed."""
    if settings.mcp and importlib.util.find_spec("mcp") is None:
        log.warning("not serving MCP tools: Gradio's MCP extra is not installed (pip install 'gradio[mcp]')")
        return False
    return settings.mcp


def _startup_settings() -> Settings:
    try:
        return Settings.from_env()
    except ValueError as exc:
        raise SystemExit(f"app.py: {exc}") from None


# The app as Spaces and ``gradio app.py`` (reload mode) expect it: a module-level ``demo``. Building it
# reads only the environment: no weights are fetched and no model is loaded until launch or first use.
demo = build_demo(_startup_settings())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Wav2Lip lip-sync app (Gradio).")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1, or $GRADIO_SERVER_NAME)")
    parser.add_argument("--port", type=int, help="port (default 7860, or $GRADIO_SERVER_PORT)")
    parser.add_argument("--share", action="store_true", help="also serve through a public gradio.live link")
    parser.add_argument("--no-mcp", action="store_true",
                        help="do not serve /lipsync, /preview and /evaluate as MCP tools (as LIPSYNC_MCP=0)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = _startup_settings()
    if args.no_mcp:
        settings = dataclasses.replace(settings, mcp=False)
    launch(demo, settings, host=args.host, port=args.port, share=args.share)


if __name__ == "__main__":
    sys.exit(main())
