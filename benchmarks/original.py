"""Run the original Wav2Lip ``inference.py`` and syncnet_python's ``run_pipeline.py`` / ``run_syncnet.py``
as they are, in this process, on a CPU with current libraries (for ``bench_original``).

The originals are checkouts given by path (Rudrabha/Wav2Lip, joonson/syncnet_python); nothing of theirs is
copied into this repository and none of their files is changed. Each script is executed with ``runpy`` as
``python SCRIPT ARGS`` would run it, after run-time patches of the libraries it calls, each one only what a
CPU with torch 2, librosa >= 0.10 and numpy 2 needs (see benchmarks/README.md for why each is needed):

- Wav2Lip: ``librosa.filters.mel`` accepts ``sr`` and ``n_fft`` positionally again (keyword-only since
  librosa 0.10; its ``audio.py`` passes them positionally).
- syncnet_python: ``S3FD(device='cuda')`` (hard-coded in ``run_pipeline.py``) is built on the CPU, and
  ``.cuda()`` of a module or a tensor (``SyncNetInstance.py``) returns it unchanged; ``np.int`` is ``int``
  again (removed in numpy 1.24; its NMS calls it on every frame); an empty ``torchvision`` module where
  torchvision is not installed (its S3FD imports ``torchvision.transforms`` and never uses it, and a
  torchvision wheel pins its own torch, which would replace the CPU torch under test); ``cv2.split`` returns
  a list (PySceneDetect 0.5.1, the version it pins, assigns into it; current OpenCV returns a tuple).
- Both: standard input is /dev/null, so that the ``pdb.set_trace()`` the scripts fall into when ffmpeg
  fails ends the run instead of waiting for a terminal.
- Both: the generated checkpoints are symlinked where each reads its own (``link_checkpoints``; never over
  a real file), since their paths are fixed in their code.

Planted detections, as ``PlantedDetector`` does for our code: the generated weights are random, so the
real S3FD finds no face. The originals' S3FD entry points (Wav2Lip's ``SFDDetector.detect_from_batch``,
syncnet_python's ``S3FD.detect_faces``) are wrapped: the real method runs on exactly what the script hands
it (timed), then the answer is the clip's true face box for each frame, read from its frame-index code and
given in the pixels of the frame handed in. With random weights the networks' face scores also pass the
0.05 candidate threshold at every anchor (all 77,107 of a 720p frame's, with the generated s3fd.pth), and
the originals' per-candidate Python loops then cost more than the network (Wav2Lip's ``batch_detect`` on
one 720p frame: 41 s of network and 49 s of candidate loop before its NMS, one thread on a busy machine),
which real weights on a talking head never do; so by default the networks' scores are made to say
"background" everywhere before the originals' own post-processing reads them, as ours are
(``_common.say_background``; ``random_scores`` keeps them as they are).
"""

from __future__ import annotations

import functools
import os
import runpy
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks._common import peak_rss_mb, planted_row, say_background

# Where each original expects its checkpoints (relative to its checkout) -> our generated file
WAV2LIP_CHECKPOINTS = {"face_detection/detection/sfd/s3fd.pth": "s3fd.pth"}
SYNCNET_CHECKPOINTS = {"data/syncnet_v2.model": "syncnet_v2.model",
                       "detectors/s3fd/weights/sfd_face.pth": "sfd_face.pth"}  # run_pipeline's PATH_WEIGHT
WAV2LIP_GENERATOR = "wav2lip_gan.pth"  # given to inference.py as --checkpoint_path
SYNCNET_REFERENCE = "clip"  # run_pipeline / run_syncnet --reference: the name of the run's sub-folders
class OriginalError(Exception):
    """The original could not be run as asked (a wrong path, a missing package): the message says what to do."""


def link_checkpoints(checkout: Path, weights: Path, layout: dict[str, str]) -> None:
    """Symlink our generated checkpoints where the original reads them (never over a real file)."""
    for relative, name in layout.items():
        target, source = checkout / relative, (weights / name).resolve()
        if not source.is_file():
            raise OriginalError(f"{source} is missing: give --weights a folder of generated checkpoints")
        if target.is_symlink():
            if target.resolve() == source:
                continue
            target.unlink()
        elif target.exists():
            raise OriginalError(f"{target} is a real file (a downloaded checkpoint?): move it away or give a fresh "
                                f"checkout; the side-by-side run links the generated {name} there")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(source)


def check_checkout(checkout: Path, script: str, project: str) -> None:
    if not (checkout / script).is_file():
        raise OriginalError(f"{checkout} has no {script}: give the folder of a checkout of {project}")


class LoadClock:
    """Seconds spent in model loading: the outermost of the wrapped calls only, so nested loads count once."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._depth = 0

    def wrap(self, owner: object, name: str) -> None:
        real = getattr(owner, name)

        @functools.wraps(real)
        def timed(*args, **kwargs):
            self._depth += 1
            start = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self.seconds += time.perf_counter() - start

        setattr(owner, name, timed)


class DetectorCalls:
    """What the wrapped S3FD entry point did, and the planted answers (``boxes``: the clip's true face boxes)."""

    def __init__(self, boxes: np.ndarray) -> None:
        self.boxes = boxes
        self.calls = self.frames = self.unreadable = 0
        self.seconds = 0.0

    def timed(self, real: Callable, n_frames: int, *args, **kwargs):
        start = time.perf_counter()
        found = real(*args, **kwargs)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        self.frames += n_frames
        return found

    def answer(self, frame: np.ndarray) -> np.ndarray | None:
        row = planted_row(frame, self.boxes)
        self.unreadable += row is None
        return row

    def stats(self) -> dict:
        return {"detector_calls": self.calls, "detector_frames": self.frames,
                "detector_net_s": round(self.seconds, 3), "unreadable_codes": self.unreadable}


def _quiet_stdin() -> None:
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 - stays open for the process's lifetime


def _import_from(checkout: Path, *modules: str) -> list[types.ModuleType]:
    """Import the original's own top-level modules (its checkout first on the path, as ``python SCRIPT``)."""
    import importlib

    sys.path.insert(0, str(checkout))
    loaded = [importlib.import_module(name) for name in modules]
    for module in loaded:
        if not Path(module.__file__).resolve().is_relative_to(checkout.resolve()):
            raise OriginalError(f"'{module.__name__}' was imported from {module.__file__}, not from {checkout}")
    return loaded


def _execute(checkout: Path, script: str, argv: list[str], cwd: Path) -> float:
    """Run ``checkout/script`` with ``argv`` from ``cwd`` as ``python script ...`` would; its wall seconds."""
    path = checkout / script
    sys.argv = [str(path), *argv]
    os.chdir(cwd)
    start = time.perf_counter()
    try:
        runpy.run_path(str(path), run_name="__main__")
    except SystemExit as stop:
        if stop.code not in (None, 0):
            raise OriginalError(f"{script} exited with status {stop.code}") from None
    return time.perf_counter() - start


def _patch_librosa_mel() -> None:
    """librosa 0.10 made ``filters.mel``'s arguments keyword-only; Wav2Lip's audio.py passes sr and n_fft
    positionally."""
    try:
        import librosa.filters
    except ImportError:
        raise OriginalError("the original Wav2Lip needs librosa: pip install librosa") from None
    real = librosa.filters.mel

    @functools.wraps(real)
    def mel(*args, **kwargs):
        return real(**dict(zip(("sr", "n_fft"), args, strict=False)), **kwargs)

    librosa.filters.mel = mel


def _load_clock_torch(clock: LoadClock) -> None:
    import torch

    clock.wrap(torch, "load")
    clock.wrap(torch.nn.Module, "load_state_dict")


def _figures(script_s: float, clock: LoadClock, calls: DetectorCalls, **more) -> dict:
    import torch

    return {"script_s": script_s, "load_s": clock.seconds, "e2e_s": script_s - clock.seconds,
            "peak_rss_mb": peak_rss_mb(), "threads": torch.get_num_threads(), **calls.stats(), **more}


def _probe(path: Path) -> dict:
    import av

    with av.open(str(path)) as container:
        video = container.streams.video[0]
        return {"width": video.width, "height": video.height, "n_frames": video.frames,
                "duration": float(container.duration or 0) / av.time_base, "has_audio": bool(container.streams.audio)}


def run_wav2lip(checkout: Path, weights: Path, clip: Path, boxes: np.ndarray, work: Path, *,
                box: bool = False, plant: bool = True, random_scores: bool = False) -> dict:
    """Wav2Lip's ``inference.py`` on ``clip`` (its face and its sound) at its default settings, or with
    ``--box`` (the clip's first face box); ``work`` becomes its working folder (its fixed ``temp/`` paths)."""
    check_checkout(checkout, "inference.py", "Rudrabha/Wav2Lip")
    link_checkpoints(checkout, weights, WAV2LIP_CHECKPOINTS)
    _quiet_stdin()
    _patch_librosa_mel()
    clock = LoadClock()
    _load_clock_torch(clock)
    face_detection, models = _import_from(checkout, "face_detection", "models")
    from face_detection.detection.sfd.sfd_detector import SFDDetector

    clock.wrap(face_detection.FaceAlignment, "__init__")
    clock.wrap(models.Wav2Lip, "__init__")
    calls = DetectorCalls(boxes)
    real_detect, real_init = SFDDetector.detect_from_batch, SFDDetector.__init__

    def detect_from_batch(self, images):  # (B, H, W, 3) RGB -> per image, a list of x1 y1 x2 y2 score
        found = calls.timed(real_detect, len(images), self, images)
        if not plant:
            return found
        return [[row] if (row := calls.answer(image)) is not None else [] for image in images]

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        if plant and not random_scores:
            self.face_detector.register_forward_hook(say_background)

    SFDDetector.detect_from_batch, SFDDetector.__init__ = detect_from_batch, init

    (work / "temp").mkdir(parents=True, exist_ok=True)
    out = work / "result.mp4"
    argv = ["--checkpoint_path", str(weights / WAV2LIP_GENERATOR), "--face", str(clip), "--audio", str(clip),
            "--outfile", str(out)]
    if box:
        x1, y1, x2, y2 = (int(round(v)) for v in boxes[0])
        argv += ["--box", str(y1), str(y2), str(x1), str(x2)]
    script_s = _execute(checkout, "inference.py", argv, work)
    if not out.is_file():
        raise OriginalError(f"inference.py wrote no {out.name} (see its output)")
    output = _probe(out)
    return _figures(script_s, clock, calls, n_frames=output["n_frames"], output=output)


def _syncnet_patches(checkout: Path) -> None:
    import torch

    check_checkout(checkout, "run_pipeline.py", "joonson/syncnet_python")
    _quiet_stdin()
    # detectors/s3fd imports torchvision.transforms and never uses it; a torchvision wheel pins its own
    # torch, so installing one would replace the CPU torch under test
    if "torchvision" not in sys.modules:
        try:
            import torchvision  # noqa: F401
        except ImportError:
            stand_in = types.ModuleType("torchvision")
            stand_in.transforms = types.ModuleType("torchvision.transforms")
            sys.modules.update({"torchvision": stand_in, "torchvision.transforms": stand_in.transforms})
    np.int = int  # removed in numpy 1.24; box_utils.nms_ calls np.int on every frame
    torch.nn.Module.cuda = lambda self, device=None: self
    torch.Tensor.cuda = lambda self, *args, **kwargs: self


def _patch_cv2_split() -> None:
    """PySceneDetect 0.5.1 (the version syncnet_python pins) assigns into what ``cv2.split`` returns: a list
    in the OpenCV of its day, a tuple in current OpenCV."""
    import cv2

    real = cv2.split

    @functools.wraps(real)
    def split(*args, **kwargs):
        return list(real(*args, **kwargs))

    cv2.split = split


def run_pipeline(checkout: Path, weights: Path, clip: Path, boxes: np.ndarray, data_dir: Path, *,
                 plant: bool = True, random_scores: bool = False) -> dict:
    """syncnet_python's ``run_pipeline.py`` on ``clip`` at its default settings (face tracks into ``data_dir``)."""
    _syncnet_patches(checkout)
    link_checkpoints(checkout, weights, SYNCNET_CHECKPOINTS)
    try:
        import scenedetect  # noqa: F401
    except ImportError:
        raise OriginalError("run_pipeline.py needs PySceneDetect 0.5.1: pip install --no-deps scenedetect==0.5.1 "
                            "(--no-deps: the OpenCV already installed serves it)") from None
    _patch_cv2_split()
    clock = LoadClock()
    _load_clock_torch(clock)
    (detectors,) = _import_from(checkout, "detectors")
    calls = DetectorCalls(boxes)
    S3FD = detectors.S3FD
    real_detect, real_init = S3FD.detect_faces, S3FD.__init__

    def detect_faces(self, image, *args, **kwargs):  # (H, W, 3) RGB -> (n, 5) x1 y1 x2 y2 score
        found = calls.timed(real_detect, 1, self, image, *args, **kwargs)
        if not plant:
            return found
        row = calls.answer(image)
        return np.empty((0, 5)) if row is None else row[None, :].astype(np.float64)

    def init(self, device="cuda"):
        real_init(self, device="cpu")
        if plant and not random_scores:
            self.net.softmax.register_forward_hook(say_background)

    S3FD.detect_faces, S3FD.__init__ = detect_faces, init
    clock.wrap(S3FD, "__init__")
    argv = ["--videofile", str(clip), "--reference", SYNCNET_REFERENCE, "--data_dir", str(data_dir)]
    script_s = _execute(checkout, "run_pipeline.py", argv, checkout)  # PATH_WEIGHT is relative to the checkout
    tracks = sorted((data_dir / "pycrop" / SYNCNET_REFERENCE).glob("0*.avi"))
    n_frames = len(list((data_dir / "pyframes" / SYNCNET_REFERENCE).glob("*.jpg")))
    return _figures(script_s, clock, calls, n_frames=n_frames, n_tracks=len(tracks))


def run_syncnet(checkout: Path, weights: Path, clip: Path, data_dir: Path) -> dict:
    """syncnet_python's ``run_syncnet.py`` on the face tracks ``run_pipeline`` left in ``data_dir``."""
    _syncnet_patches(checkout)
    link_checkpoints(checkout, weights, SYNCNET_CHECKPOINTS)
    clock = LoadClock()
    _load_clock_torch(clock)
    (instance,) = _import_from(checkout, "SyncNetInstance")
    SyncNetInstance = instance.SyncNetInstance
    clock.wrap(SyncNetInstance, "__init__")
    clock.wrap(SyncNetInstance, "loadParameters")
    scores: list[dict] = []
    real_evaluate = SyncNetInstance.evaluate

    def evaluate(self, opt, videofile):
        offset, conf, dists = real_evaluate(self, opt, videofile)
        scores.append({"track": Path(videofile).name, "offset": int(offset), "lse_c": float(conf),
                       "lse_d": float(np.asarray(dists).mean(axis=0).min()), "windows": len(dists)})
        return offset, conf, dists

    SyncNetInstance.evaluate = evaluate
    argv = ["--videofile", str(clip), "--reference", SYNCNET_REFERENCE, "--data_dir", str(data_dir)]
    script_s = _execute(checkout, "run_syncnet.py", argv, checkout)  # --initial_model data/syncnet_v2.model
    crops = data_dir / "pycrop" / SYNCNET_REFERENCE
    n_frames = sum(_probe(crops / s["track"])["n_frames"] for s in scores)  # the face tracks' frames it read
    return _figures(script_s, clock, DetectorCalls(np.zeros((0, 4))), n_frames=n_frames, tracks=scores)
