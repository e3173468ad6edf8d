"""The Gradio app, driven through its named API endpoints with the real gradio_client.

The app is launched on a free localhost port in this process (a background server thread) with the
generated weights (LIPSYNC_WEIGHTS_DIR from the ``weights_dir`` fixture). With those random weights the
face detectors find nothing, so lip sync uses a fixed face box and scoring uses the whole-frame mode:
the numbers are finite, not meaningful.
"""

from __future__ import annotations

import dataclasses
import math
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

import app
from common.errors import InputError, WeightsError
from media.io import audio_duration, probe
from service.models import ScoreCache

EXAMPLES = Path(app.__file__).resolve().parent / "examples"
CLIP, STILL, SPEECH = EXAMPLES / "face_clip.mp4", EXAMPLES / "face_still.jpg", EXAMPLES / "speech.wav"
FACE_BOX = "30 170 65 190"  # top bottom left right of the astronaut's face in the 256x256 examples
FAST = {"box": FACE_BOX, "score_mode": "whole-frame", "wav2lip_batch_size": 32}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve_app(settings: app.Settings | None = None):
    """Launch the app on a free localhost port; yields its URL."""
    settings = settings or app.Settings.from_env()
    demo = app.build_demo(settings)
    _, url, _ = app.launch(demo, settings, host="127.0.0.1", port=free_port(), block=False)
    try:
        yield url
    finally:
        demo.close()


@pytest.fixture(scope="module")
def url(weights_dir):
    with serve_app() as url:
        yield url


@pytest.fixture(scope="module")
def downloads(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def client(url, downloads):
    return Client(url, verbose=False, download_files=str(downloads))


def assert_playable_mp4(path: str | Path, audio_path: Path) -> None:
    """H.264 yuv420p + AAC in an MP4 that lasts as long as the speech."""
    with av.open(str(path)) as container:
        assert container.format.name.startswith("mov,mp4")
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert video.codec_context.name == "h264" and video.codec_context.pix_fmt == "yuv420p"
        assert audio.codec_context.name == "aac"
        audio_seconds = float(audio.duration * audio.time_base)
        n_frames = sum(1 for _ in container.decode(video=0))
    speech_seconds = probe_audio_seconds(audio_path)
    assert abs(audio_seconds - speech_seconds) < 0.05, (audio_seconds, speech_seconds)
    # a frame per 16-step (0.2 s) mel window, as Wav2Lip: the picture may end a little before the sound
    assert abs(speech_seconds - n_frames / 25) < 0.25, (n_frames, speech_seconds)


def probe_audio_seconds(path: Path) -> float:
    seconds = audio_duration(path)
    assert seconds is not None
    return seconds


def assert_scores(scores: dict) -> None:
    assert all(math.isfinite(scores[k]) for k in ("lse_d", "lse_c", "offset")), scores
    assert scores["tracks"]


# -- through the API ---------------------------------------------------------------------------------------
def test_api_lists_only_the_four_endpoints(client):
    api = client.view_api(print_info=False, return_format="dict")
    assert set(api["named_endpoints"]) == {"/lipsync", "/lipsync_stream", "/preview", "/evaluate"}
    params = {p["parameter_name"] for p in api["named_endpoints"]["/lipsync"]["parameters"]}
    assert {"face_video", "face_image", "audio", "voice", "checkpoint", "box", "silence", "score_input"} <= params
    assert not api["unnamed_endpoints"]


def test_endpoints_take_exactly_the_options_with_their_defaults(client):
    """The API parameters (and the UI controls behind them) are the dataclasses' fields, defaults included."""
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    def names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    # every field of each options class is behind exactly the parameters derived from it
    assert {p.field for p in app.LIPSYNC_PARAMS} == names(app.LipSyncOptions)
    assert {p.field for p in app.SCORE_PARAMS} == {p.field for p in app.EVALUATE_PARAMS} == names(app.EvalOptions)
    for endpoint, files, params in (
        ("/lipsync", app.LIPSYNC_FILES, app.LIPSYNC_PARAMS + app.INPUT_SCORING_PARAMS + app.SCORE_PARAMS),
        ("/lipsync_stream", app.LIPSYNC_FILES, app.LIPSYNC_PARAMS + app.INPUT_SCORING_PARAMS + app.SCORE_PARAMS),
        ("/preview", app.PREVIEW_FILES, app.LIPSYNC_PARAMS + app.PREVIEW_PARAMS),
        ("/evaluate", app.EVALUATE_FILES, app.EVALUATE_PARAMS),
    ):
        seen = api[endpoint]["parameters"]
        assert [p["parameter_name"] for p in seen] == list(files) + [p.name for p in params]
        options = {p["parameter_name"]: p for p in seen[len(files):]}
        for param in params:
            assert options[param.name]["parameter_default"] == param.default, param.name
            assert options[param.name]["label"] == param.label, param.name  # the control derived from it


def test_ui_helper_events_are_private():
    dependencies = app.build_demo(app.Settings()).config["dependencies"]
    public = {d["api_name"] for d in dependencies if d["api_visibility"] != "private"}
    assert public == {"lipsync", "lipsync_stream", "preview", "evaluate"}


def test_lipsync_video(client):
    video, summary, details = client.predict(face_video=handle_file(str(CLIP)), audio=handle_file(str(SPEECH)),
                                             **FAST, api_name="/lipsync")
    assert_playable_mp4(video, SPEECH)
    assert "LSE-D" in summary and "LSE-C" in summary
    assert_scores(details["output"])
    assert_scores(details["input"])  # the example clip has its own speech
    assert details["no_face_ranges"] == []
    assert details["n_frames"] == round(details["duration"] * 25) and details["fps"] == 25
    # the before/after plot's points ride in the JSON, so /lipsync keeps its three outputs
    curve = details["curve"]
    assert {series for _, _, series in curve} == {"output", "input"}
    assert all(math.isfinite(t) and math.isfinite(c) for t, c, _ in curve)


class FirstPieceGate:
    """Holds the engine, once it has handed over the first streamed piece, until ``seen()`` is called
    (by whoever watches the stream), or ``PATIENCE`` seconds: the piece was seen mid-run only when
    ``held`` ends True. Installed in place of ``app.client_gone`` (the engine asks it before each batch)."""

    PATIENCE = 60.0

    def __init__(self, monkeypatch) -> None:
        self.handed, self._seen = threading.Event(), threading.Event()
        self.held: bool | None = None
        self.folder: Path | None = None  # where the pieces are written
        gate = self
        real_segments = app.Segments

        class Watched(real_segments):
            def _finish(self, *args, **kwargs):
                super()._finish(*args, **kwargs)
                if self.written:  # a piece was handed over (the first call, at frame 0, closes none)
                    gate.folder = self.folder
                    gate.handed.set()

        monkeypatch.setattr(app, "Segments", Watched)
        monkeypatch.setattr(app, "client_gone", lambda request: self.check)

    def check(self) -> bool:
        if self.handed.is_set() and self.held is None:
            self.held = self._seen.wait(self.PATIENCE)
        return False

    def seen(self) -> None:
        self._seen.set()


def test_lipsync_stream_plays_pieces_before_the_run_ends(client, monkeypatch):
    """/lipsync_stream: the first piece reaches the client while the engine is still generating (it waits
    for the client here), then /lipsync's outputs come, the whole MP4 as the second one."""
    gate = FirstPieceGate(monkeypatch)
    job = client.submit(face_video=handle_file(str(CLIP)), audio=handle_file(str(SPEECH)), **FAST,
                        api_name="/lipsync_stream")
    updates = []
    for update in job:
        if isinstance(update[0], str) and update[0].endswith(".m3u8"):
            gate.seen()  # gradio_client hands over the stream's playlist, as it stood, for each piece
        updates.append(update)
    assert gate.held is True, "the first piece reached the client only after the run"
    playlists = [u[0] for u in updates if isinstance(u[0], str)]
    assert len(playlists) >= 2
    assert "#EXTINF" in Path(playlists[0]).read_text()
    video, summary, details = job.result()[1:]
    assert_playable_mp4(video, SPEECH)
    assert "LSE-D" in summary
    assert_scores(details["output"])
    # the pieces, in the request's folder: each plays on its own, sound included, 2 s but the last
    pieces = sorted(gate.folder.glob("*.mp4"))
    assert len(pieces) == 4, pieces  # 118 frames: 15 + 50 + 50 + 3
    for piece in pieces:
        with av.open(str(piece)) as container:
            assert container.streams.audio and container.streams.video[0].codec_context.name == "h264"
            assert sum(1 for _ in container.decode(video=0)) in (15, 50, 3)


def test_streamed_pieces_wait_for_their_sound(monkeypatch):
    """Gradio's streaming encoder waits long enough for a piece's sound to go out with it (a longer wait
    already set is kept)."""
    from gradio import audio_stream_encoder as encoder

    monkeypatch.setattr(encoder, "STARTUP_WAIT", 0.1)
    monkeypatch.setattr(encoder, "STEADY_WAIT", 2.0)
    assert app.patient_stream_audio(startup=1.0, steady=0.25)
    assert (encoder.STARTUP_WAIT, encoder.STEADY_WAIT) == (1.0, 2.0)


class BoxDetector:
    """Stands in for S3FD (random weights find nothing): the examples' face box, in each frame's pixels."""

    def detect(self, frames, scale: float = 1.0):
        top, bottom, left, right = map(float, FACE_BOX.split())
        return [np.array([[left, top, right, bottom, 0.99]], np.float32) * ([frame.shape[1] / 256] * 4 + [1])
                for frame in frames]


@pytest.mark.parametrize("endpoint", ["/lipsync", "/lipsync_stream"])
def test_lipsync_with_face_detection(client, monkeypatch, endpoint):
    """Faces detected as the render goes (the detection pass is read inside the render loop) while
    Gradio tracks the progress bars: its bar stack must not trip over the interleaving."""
    engine = app.Models.shared().engine()
    monkeypatch.setattr(engine, "detector", lambda *_: BoxDetector())
    job = client.submit(face_video=handle_file(str(CLIP)), audio=handle_file(str(SPEECH)), score_mode="whole-frame",
                        score_input=False, cache_detections=False, api_name=endpoint)
    video, _, details = job.result()[-3:]
    assert_playable_mp4(video, SPEECH)
    assert details["no_face_ranges"] == [] and details["timings"]["detect"] > 0


def test_the_input_is_scored_once_per_content(client, monkeypatch, tmp_path):
    """The same face video with other speech: the input's score comes from the cache the second time."""
    scored: list[str] = []
    real = app._score

    def counting(path, options, should_stop=None):
        scored.append(Path(path).name)
        return real(path, options, should_stop)

    monkeypatch.setattr(app, "_score", counting)
    monkeypatch.setattr(app.Models.shared(), "scores", ScoreCache(app.Models.shared().weights_dir))  # empty
    copy = tmp_path / "same clip, renamed.mp4"
    copy.write_bytes(CLIP.read_bytes())
    first = client.predict(face_video=handle_file(str(CLIP)), audio=handle_file(str(SPEECH)), **FAST,
                           api_name="/lipsync")[2]
    second = client.predict(face_video=handle_file(str(copy)), audio=handle_file(str(CLIP)), **FAST,
                            api_name="/lipsync")[2]
    assert len(scored) == 3, scored  # output, input; then only the second output
    assert second["input"]["lse_d"] == first["input"]["lse_d"]


def test_score_cache_keys_content_options_and_weights(weights_dir, tmp_path):
    cache = ScoreCache(str(weights_dir))
    other = tmp_path / "other.mp4"
    other.write_bytes(CLIP.read_bytes() + b"\0")
    base = cache.key(CLIP, app.EvalOptions())
    assert base == cache.key(CLIP, app.EvalOptions())
    assert base != cache.key(CLIP, app.EvalOptions(detect_every=5)) and base != cache.key(other, app.EvalOptions())


def test_lipsync_photo_without_input_scoring(client):
    video, _, details = client.predict(face_image=handle_file(str(STILL)), audio=handle_file(str(SPEECH)),
                                       **FAST, fps=25, api_name="/lipsync")
    assert_playable_mp4(video, SPEECH)
    assert_scores(details["output"])
    assert details["input"] is None  # a photo has no audio of its own


def test_preview_returns_the_frame_with_the_box(client):
    from lipsync.pipeline import PREVIEW_BOX_BGR

    image = client.predict(face_video=handle_file(str(CLIP)), audio=handle_file(str(SPEECH)), box=FACE_BOX,
                           at_seconds=1.5, api_name="/preview")
    assert Path(image).suffix == ".png"
    frame = cv2.imread(image)
    assert frame.shape == (256, 256, 3)
    top, bottom, left, right = (int(v) for v in FACE_BOX.split())
    outline = np.concatenate([frame[top, left:right], frame[bottom - 1, left:right], frame[top:bottom, left],
                              frame[top:bottom, right - 1]])
    assert (outline == PREVIEW_BOX_BGR).all()


def test_voice_track_of_another_length_gets_its_message(client, tmp_path):
    import soundfile

    short = tmp_path / "short voice.wav"
    soundfile.write(short, np.zeros(16000, np.float32), 16000)
    message = r"the voice track is 1.00 s, the audio 4.\d\d s \(the audio is 3.\d\d s longer\)"
    with pytest.raises(AppError, match=message):
        client.predict(face_video=handle_file(str(CLIP)), audio=handle_file(str(SPEECH)),
                       voice=handle_file(str(short)), **FAST, api_name="/lipsync")


def test_evaluate_two_videos(client):
    table, curve, summary = client.predict(video=handle_file(str(CLIP)), reference_video=handle_file(str(CLIP)),
                                           mode="whole-frame", api_name="/evaluate")
    rows = table["data"]
    assert len(rows) >= 2 and {r[0][0] for r in rows} == {"A", "B"}
    for row in rows:
        lse_d, lse_c, offset = row[4:7]
        assert math.isfinite(lse_d) and math.isfinite(lse_c) and isinstance(offset, int)
    assert rows[0][4:7] == rows[-1][4:7]  # the same video twice scores the same
    points = curve["value"]["data"] if "value" in curve else curve["data"]
    assert points and all(math.isfinite(p[1]) for p in points)
    assert "LSE-D" in summary


def test_bad_input_gives_the_message_and_the_app_keeps_serving(client, tmp_path):
    fake = tmp_path / "not a video.mp4"
    fake.write_text("this is text, not a video\n" * 20)
    with pytest.raises(AppError) as err:
        client.predict(face_video=handle_file(str(fake)), audio=handle_file(str(SPEECH)), **FAST,
                       api_name="/lipsync")
    assert "not a video" in str(err.value).lower() or "media" in str(err.value).lower(), str(err.value)
    with pytest.raises(AppError):
        client.predict(video=handle_file(str(fake)), api_name="/evaluate")
    _, _, summary = client.predict(video=handle_file(str(CLIP)), mode="whole-frame", api_name="/evaluate")
    assert "LSE-D" in summary


GENERIC = "has not enabled verbose error reporting"
MISUSES = {
    # keyword calls with a wrong value in one slot
    "sound as the photo": ({"face_image": "SPEECH", "audio": "SPEECH"}, r"face_image takes a still image .*speech.wav"),
    "number as the video": ({"face_video": 0.5, "audio": "SPEECH"}, r"face_video takes a video file, but got float"),
    "path string as the video": ({"face_video": "clip.mp4", "audio": "SPEECH"}, r"face_video .* handle_file"),
    "number as the audio": ({"face_image": "STILL", "audio": 3.0}, r"audio takes an audio file, but got float 3.0"),
    "word as a number": ({"face_image": "STILL", "audio": "SPEECH", "fps": "fast"}, r"fps must be a number, not 'fa"),
    "list as a number": ({"face_image": "STILL", "audio": "SPEECH", "fps": [1]}, r"fps must be a number"),
    "number as a choice": ({"face_image": "STILL", "audio": "SPEECH", "checkpoint": 0.5},
                           r"checkpoint must be one of wav2lip_gan, wav2lip, not 0.5"),
    "word as a switch": ({"face_image": "STILL", "audio": "SPEECH", "nosmooth": "yes"},
                         r"nosmooth must be true or false, not 'yes'"),
    "number as the box": ({"face_image": "STILL", "audio": "SPEECH", "box": 3.5}, r"box .* needs 4 numbers"),
    "out of bounds": ({"face_image": "STILL", "audio": "SPEECH", "fps": 1000}, r"fps must be at most 120, not 1000"),
    "fraction for a whole number": ({"face_image": "STILL", "audio": "SPEECH", "face_index": 1.5},
                                    r"face_index must be a whole number"),
}


def _files(kwargs: dict) -> dict:
    named = {"SPEECH": SPEECH, "STILL": STILL, "CLIP": CLIP}
    return {k: handle_file(str(named[v])) if isinstance(v, str) and v in named else v for k, v in kwargs.items()}


@pytest.mark.parametrize("case", sorted(MISUSES))
def test_misused_calls_get_the_apps_message(client, case):
    kwargs, message = MISUSES[case]
    with pytest.raises(AppError, match=message) as err:
        client.predict(**_files({"box": FACE_BOX, **kwargs}), score_input=False, api_name="/lipsync")
    assert GENERIC not in str(err.value)


def test_arguments_in_the_wrong_order_get_the_apps_message(client):
    """Positional calls: the audio where the photo goes, a number where a file or a choice goes, a number as the
    video."""
    with pytest.raises(AppError, match=r"face_image takes .*/lipsync takes face_video, face_image, audio"):
        client.predict(handle_file(str(CLIP)), handle_file(str(SPEECH)), api_name="/lipsync")
    with pytest.raises(AppError, match=r"voice takes an audio file, but got float 0.5"):
        client.predict(handle_file(str(CLIP)), None, handle_file(str(SPEECH)), 0.5, api_name="/lipsync")
    with pytest.raises(AppError, match=r"checkpoint must be one of"):
        client.predict(handle_file(str(CLIP)), None, handle_file(str(SPEECH)), None, 0.5, api_name="/lipsync")
    with pytest.raises(AppError, match=r"video takes a video file, but got int 3: .*/evaluate takes video"):
        client.predict(3, api_name="/evaluate")
    with pytest.raises(AppError, match=r"speech.wav has sound but no picture"):
        client.predict(handle_file(str(CLIP)), handle_file(str(SPEECH)), mode="whole-frame", api_name="/evaluate")
    _, _, summary = client.predict(video=handle_file(str(CLIP)), mode="whole-frame", api_name="/evaluate")
    assert "LSE-D" in summary


def test_readable_inputs_keep_the_api_schema():
    """The wrapped data models describe the same payloads under the same names."""
    demo = app.build_demo(app.Settings())
    info = demo.get_api_info()["named_endpoints"]["/lipsync"]["parameters"]
    plain = {"face_video": app.gr.Video(), "face_image": app.gr.Image(type="filepath"), "audio": app.gr.Audio()}
    for param in info[:3]:
        assert param["type"] == plain[param["parameter_name"]].api_info(), param["parameter_name"]
        assert param["python_type"]["type"] == "filepath"


def test_engine_error_reaches_the_user_and_leaves_no_files(client):
    """An error the engine raises mid-request (a box outside the frame) is shown as is; nothing is left."""
    root = Path(app.get_upload_folder()) / app.OUTPUT_DIR_NAME
    before = {p for p in root.iterdir() if any(p.iterdir())} if root.exists() else set()
    with pytest.raises(AppError) as err:
        client.predict(face_video=handle_file(str(CLIP)), audio=handle_file(str(SPEECH)), box="300 400 300 400",
                       api_name="/lipsync")
    assert "outside the 256x256 frame" in str(err.value)
    after = {p for p in root.iterdir() if any(p.iterdir())}
    assert after == before


def test_two_concurrent_clients(url, downloads):
    results: dict[int, object] = {}

    def call(i: int) -> None:
        try:
            face = {"face_video": handle_file(str(CLIP))} if i == 0 else {"face_image": handle_file(str(STILL))}
            other = Client(url, verbose=False, download_files=str(downloads))
            results[i] = other.predict(**face, audio=handle_file(str(SPEECH)), **FAST, score_input=False,
                                       api_name="/lipsync")
        except Exception as exc:  # any failure is reported by the assertion below
            results[i] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    for i in range(2):
        assert isinstance(results.get(i), tuple), results.get(i)
        video, _, details = results[i]
        assert_playable_mp4(video, SPEECH)
        assert_scores(details["output"])
    assert results[0][0] != results[1][0]


# -- load: a full queue, a client that leaves ----------------------------------------------------------------
def request_folders() -> set[Path]:
    root = Path(app.get_upload_folder()) / app.OUTPUT_DIR_NAME
    return set(root.iterdir()) if root.exists() else set()


def wait_until_running(job, seconds: float = 120) -> None:
    from gradio_client.utils import Status

    deadline = time.monotonic() + seconds
    while job.status().code not in (Status.PROCESSING, Status.PROGRESS):
        assert time.monotonic() < deadline, job.status()
        time.sleep(0.1)


def test_more_clients_than_the_queue_holds_are_turned_away(weights_dir, downloads, tmp_path):
    """One runs, one waits (LIPSYNC_QUEUE_SIZE=1), the rest hear "queue full"; the two accepted finish."""
    import soundfile
    from gradio_client.utils import QueueError

    speech, rate = soundfile.read(SPEECH)
    short = tmp_path / "two seconds.wav"
    soundfile.write(short, speech[: 2 * rate], rate)
    request = {"face_image": handle_file(str(STILL)), "audio": handle_file(str(short)), **FAST,
               "score_input": False, "api_name": "/lipsync"}
    with serve_app(app.Settings(queue_size=1, concurrency=1)) as url:
        clients = [Client(url, verbose=False, download_files=str(downloads)) for _ in range(4)]
        first = clients[0].submit(**request)
        wait_until_running(first)
        second = clients[1].submit(**request)
        time.sleep(1.0)  # the second is waiting in the queue now
        refused = []
        for other in clients[2:]:
            with pytest.raises(QueueError, match="Queue is full") as err:
                other.predict(**request)
            refused.append(err.value)
        for job in (first, second):
            video, _, details = job.result(timeout=600)
            assert_playable_mp4(video, short)
        assert len(refused) == 2


LEAVING_CLIENT = """
import sys, time
from gradio_client import Client, handle_file
from gradio_client.utils import Status
url, face, audio, box, endpoint = sys.argv[1:]
job = Client(url, verbose=False).submit(face_image=handle_file(face), audio=handle_file(audio), box=box,
                                        wav2lip_batch_size=16, score_input=False, api_name=endpoint)
while job.status().code not in (Status.PROCESSING, Status.PROGRESS):
    time.sleep(0.1)
print("running", flush=True)
time.sleep(600)
"""


def a_minute_of_sound(folder: Path) -> Path:
    """A minute of beeps (some 1500 frames of lip sync: a run that takes a few minutes here)."""
    import soundfile

    path = folder / "minute.wav"
    t = np.arange(60 * 16000) / 16000
    soundfile.write(path, (0.3 * np.sin(2 * np.pi * 180 * t) * (np.sin(2 * np.pi * 2 * t) > 0)).astype(np.float32),
                    16000)
    return path


@pytest.mark.parametrize("endpoint", ["/lipsync", "/lipsync_stream"])
def test_a_client_that_leaves_mid_run_frees_the_engine(weights_dir, downloads, tmp_path, monkeypatch, endpoint):
    """The leaving client's run stops at its next batch: the next request does not wait for the rest of
    it (some 150 s of generating here), and the run's folder and temporary files are gone."""
    import signal
    import subprocess
    import sys
    import tempfile

    long_speech = a_minute_of_sound(tmp_path)
    private = tmp_path / "tmp"  # the server's temporary files (this process), and Gradio's cache in it
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    before = request_folders()
    with serve_app() as url:
        leaving = subprocess.Popen([sys.executable, "-c", LEAVING_CLIENT, url, str(STILL), str(long_speech),
                                    FACE_BOX, endpoint], stdout=subprocess.PIPE, text=True)
        try:
            assert leaving.stdout.readline().strip() == "running"
            time.sleep(3)  # well into the 1500 frames
            abandoned = request_folders() - before
            assert len(abandoned) == 1, abandoned
        finally:
            leaving.send_signal(signal.SIGKILL)
            leaving.wait(30)
        start = time.monotonic()
        client = Client(url, verbose=False, download_files=str(downloads))
        job = client.submit(face_image=handle_file(str(STILL)), audio=handle_file(str(SPEECH)), **FAST,
                            score_input=False, api_name="/lipsync")
        video, _, _ = job.result(timeout=100)
        assert_playable_mp4(video, SPEECH)
        assert time.monotonic() - start < 100
    finished = request_folders() - before
    assert len(finished) == 1 and not finished & abandoned  # the stopped run's folder was removed
    assert not list(private.glob("lipsync-*"))  # the engine's work folders (gradio_client keeps its own here)


def test_a_stream_that_gradio_cannot_show_frees_the_engine_at_once(weights_dir, downloads, tmp_path, monkeypatch):
    """Gradio's output handling fails on the stream's first piece (as it did without FFmpeg's programs):
    the client hears what went wrong, the run stops at its next batch, and the same client's next
    request starts at once, not after the rest of the abandoned run (some 100 s of generating here)."""
    failed, starts = [], []

    async def failing(self, value, output_id, first_chunk):
        failed.append(time.monotonic())
        raise RuntimeError("this piece could not be encoded")

    real_engine = app.Models.engine

    def engine(self):  # called with the engine's lock held, as a run starts
        starts.append(time.monotonic())
        return real_engine(self)

    monkeypatch.setattr(app.gr.Video, "stream_output", failing)
    monkeypatch.setattr(app.Models, "engine", engine)
    before = request_folders()
    with serve_app() as url:
        client = Client(url, verbose=False, download_files=str(downloads))
        with pytest.raises(AppError) as err:
            client.predict(face_image=handle_file(str(STILL)), audio=handle_file(str(a_minute_of_sound(tmp_path))),
                           box=FACE_BOX, wav2lip_batch_size=16, score_input=False, api_name="/lipsync_stream")
        assert "this piece could not be encoded" in str(err.value) and GENERIC not in str(err.value)
        video, _, _ = client.predict(face_image=handle_file(str(STILL)), audio=handle_file(str(SPEECH)), **FAST,
                                     score_input=False, api_name="/lipsync")
        assert_playable_mp4(video, SPEECH)
    assert failed and len(starts) == 2, (failed, starts)
    waited = starts[1] - failed[0]
    print(f"the next request started {waited:.2f} s after the stream failed")
    assert waited < 15, waited
    assert len(request_folders() - before) == 1  # the stopped run's folder was removed


# -- the handlers and helpers, without a server --------------------------------------------------------
def test_settings_from_env(monkeypatch):
    monkeypatch.setenv("LIPSYNC_MAX_SECONDS", "30")
    monkeypatch.setenv("LIPSYNC_CONCURRENCY", "2")
    settings = app.Settings.from_env()
    assert settings.max_seconds == 30 and settings.concurrency == 2 and settings.max_side == 1920
    assert "30 s" in settings.describe() and "1920 px" in settings.describe()
    assert settings.mcp
    monkeypatch.setenv("LIPSYNC_MCP", "0")
    assert not app.Settings.from_env().mcp
    monkeypatch.setenv("LIPSYNC_MCP", "maybe")
    with pytest.raises(ValueError, match="LIPSYNC_MCP='maybe' is neither on nor off"):
        app.Settings.from_env()
    monkeypatch.delenv("LIPSYNC_MCP")
    monkeypatch.setenv("LIPSYNC_MAX_MB", "lots")
    with pytest.raises(ValueError, match="LIPSYNC_MAX_MB"):
        app.Settings.from_env()


def test_check_input_limits():
    assert app.check_input(CLIP, app.Settings(), "face video").has_audio
    with pytest.raises(InputError, match="up to 2 s"):
        app.check_input(CLIP, app.Settings(max_seconds=2), "face video")
    with pytest.raises(InputError, match="up to 200 px"):
        app.check_input(STILL, app.Settings(max_side=200), "face photo")
    with pytest.raises(InputError, match="MB"):
        app.check_input(CLIP, app.Settings(max_mb=0.001), "face video")


def test_handlers_refuse_missing_inputs():
    with pytest.raises(app.gr.Error, match="face"):
        app.run_lipsync(audio=str(SPEECH))
    with pytest.raises(app.gr.Error, match="speech"):
        app.run_lipsync(face_video=str(CLIP))
    with pytest.raises(app.gr.Error, match="video"):
        app.run_evaluate()
    assert app.keep_one_face(None) is not None  # gr.skip(): leave the other input alone
    assert app.keep_one_face("x.mp4") is None


def test_the_voice_track_is_held_to_the_limits(monkeypatch, tmp_path):
    import soundfile

    short = tmp_path / "short.wav"
    soundfile.write(short, np.zeros(16000, np.float32), 16000)
    monkeypatch.setenv("LIPSYNC_MAX_SECONDS", "2")
    for handler in (app.run_lipsync, app.run_preview):
        with pytest.raises(app.gr.Error, match=r"the voice track lasts 4.\d s; this app accepts up to 2 s"):
            handler(face_image=str(STILL), audio=str(short), voice=str(SPEECH))


def test_weights_status_reports_failures():
    def resolve(name: str) -> Path:
        if name == "s3fd":
            raise WeightsError("could not get the s3fd weights from the Hugging Face Hub; put 's3fd.pth' ...")
        return Path(f"/w/{name}")

    status = app.WeightsStatus(names=("wav2lip", "s3fd"), check=resolve)
    assert "fetching" in status.markdown() and not status.done()
    status.start()
    status._thread.join(5)
    assert status.done()
    text = status.markdown()
    assert "`wav2lip` ready" in text and "**s3fd cannot be used**: could not get the s3fd weights" in text


@pytest.mark.parametrize(("bad", "how", "says"), [
    ("wav2lip_gan.pth", "truncated", "incomplete or damaged; replace it with a complete copy"),
    ("sfd_face.pth", "flipped", "fails its CRC check); replace it with a complete copy"),
    ("s3fd.pth", "pickle payload", "refused checkpoint"),
    ("syncnet_v2.model", "other network", "SyncNet (syncnet_v2): checkpoint lacks"),
])
def test_weights_status_checks_the_files(weights_dir, tmp_path, monkeypatch, bad, how, says):
    """The page's weights status runs the same checks as loading: a damaged file shows as FAILED."""
    import torch

    from tests.test_weights import Payload, damage, weights_folder

    folder = weights_folder(tmp_path, weights_dir, bad, "empty")
    if how == "pickle payload":
        torch.save({"conv1_1.weight": torch.zeros(1), "x": Payload(tmp_path / "ran")}, folder / bad)
    elif how == "other network":
        (folder / bad).unlink()
        (folder / bad).symlink_to(weights_dir / "s3fd.pth")
    else:
        (folder / bad).write_bytes(damage((weights_dir / bad).read_bytes(), how))
    monkeypatch.setenv("LIPSYNC_WEIGHTS_DIR", str(folder))
    status = app.WeightsStatus()
    status.start()
    status._thread.join(60)
    text = status.markdown()
    name = bad.split(".")[0]
    assert f"`{name}` FAILED" in text and text.count("FAILED") == 1, text
    assert f"**{name} cannot be used**" in text and says in text and str(folder / bad) in text, text
    assert not (tmp_path / "ran").exists()


def test_examples_are_small_and_well_formed():
    total = sum(p.stat().st_size for p in EXAMPLES.iterdir() if p.is_file())
    assert total < 2 * 2**20
    clip = probe(CLIP)
    assert (clip.width, clip.height, float(clip.fps)) == (256, 256, 25.0) and clip.has_audio
    assert clip.n_frames > 100  # the evaluator's default minimum track: the examples get scores as they are
    assert audio_duration(SPEECH) > 4.3  # the lip-synced output is long enough too
    assert probe(STILL).is_image


def test_without_ffmpeg_the_page_says_what_it_would_add(without_ffmpeg):
    """Built on a machine without FFmpeg's programs: no streaming player, and the note says why."""
    assert not app.can_stream_video()
    demo = app.build_demo(app.Settings())
    by_id = {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    assert by_id["stream-video"].visible is False
    assert app.NO_STREAM_NOTE in by_id["limits"].value
    assert by_id["output-video"].visible is not False

