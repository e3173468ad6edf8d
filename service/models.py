"""The models every request of the process shares, the scores kept by content, and the weights' status."""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from common import precision, weights
from common.errors import LipSyncError
from common.hashing import content_key, file_sha256
from face_detection.s3fd import S3FD
from face_detection.sfd_face import SFDFace
from lipsync import model as wav2lip_model
from lipsync.model import Wav2Lip
from lipsync.options import CHECKPOINTS, LipSyncOptions
from lipsync.pipeline import LipSync
from syncnet import model as syncnet_model
from syncnet.evaluate import SyncNetEvaluator, VideoResult
from syncnet.model import SyncNet
from syncnet.options import EvalOptions

log = logging.getLogger(__name__)

WEIGHT_NAMES = ("wav2lip_gan", "wav2lip", "s3fd", "syncnet_v2", "sfd_face")
# The Space scores in the process that lip-syncs, so it keeps the scoring detector's batches on one
# core at a time: the per-core workers would add to a request's peak memory for little time saved on
# the fast preset its Lip sync tab scores with.
SCORING_ACROSS_CORES = False


class Models:
    """One LipSync engine and one SyncNet evaluator per process, built on first use.

    Each object is also used by one request at a time (LipSync.run is not re-entrant), so with
    LIPSYNC_CONCURRENCY > 1 a lip sync and an evaluation can overlap, two lip syncs cannot.
    """

    _shared: ClassVar[Models | None] = None
    _shared_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, weights_dir: str | None = None, device: str | None = None) -> None:
        self.weights_dir = weights_dir
        self.device = device
        self._engine: LipSync | None = None
        self._evaluator: SyncNetEvaluator | None = None
        self.engine_lock = threading.Lock()
        self.evaluator_lock = threading.Lock()
        self.scores = ScoreCache(weights_dir)

    @classmethod
    def shared(cls) -> Models:
        with cls._shared_lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    def preload(self) -> None:
        """Load every network now, on this process's device, in fp32 and in the device's fast precision.

        For ZeroGPU, whose documentation asks for models placed on "cuda" at start-up: it keeps them
        aside when the app launches and puts them on each GPU call's device, so no call reads a
        checkpoint.
        """
        engine, evaluator = self.engine(), self.evaluator()
        for chosen in ("fp32", "auto"):
            for checkpoint in CHECKPOINTS:
                engine.generator_for(LipSyncOptions(checkpoint=checkpoint, precision=chosen))
        for dtype in {torch.float32, precision.resolve("auto", engine.device)}:
            engine.detector(dtype)
            evaluator.syncnet_for(dtype)
            evaluator.detector_for(dtype)

    def engine(self) -> LipSync:
        """Call with ``engine_lock`` held."""
        if self._engine is None:
            self._engine = LipSync(weights_dir=self.weights_dir, device=self.device)
        return self._engine

    def evaluator(self) -> SyncNetEvaluator:
        """Call with ``evaluator_lock`` held."""
        if self._evaluator is None:
            self._evaluator = SyncNetEvaluator(weights_dir=self.weights_dir, device=self.device,
                                               detector_across_cores=SCORING_ACROSS_CORES,
                                               # SyncNet's first lip layer in float32 (syncnet.lipconv)
                                               # on all cores: its work space is a few MB
                                               syncnet_across_cores=True)
        return self._evaluator


class ScoreCache:
    """Scores by the video's content, the options and the weights' contents, so that an unchanged video
    (the same face video lip-synced to new speech, scored as the input again) is scored once."""

    SIZE = 32  # scores kept, least recently used first out: a result is a few KB

    def __init__(self, weights_dir: str | None = None) -> None:
        self.weights_dir = weights_dir
        self._items: OrderedDict[str, VideoResult] = OrderedDict()
        self._lock = threading.Lock()

    def key(self, path: Path, options: EvalOptions) -> str:
        nets = {name: file_sha256(weights.resolve(name, weights_dir=self.weights_dir))
                for name in ("syncnet_v2", "sfd_face")}
        return content_key(path, {"options": dataclasses.asdict(options), **nets})

    def lookup(self, path: Path, options: EvalOptions) -> tuple[str, VideoResult | None]:
        """``path``'s key, and its scores when this content was scored with these options already."""
        key = self.key(path, options)
        return key, self.get(key, path)

    def get(self, key: str, path: Path) -> VideoResult | None:
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return dataclasses.replace(self._items[key], path=path)

    def put(self, key: str, result: VideoResult) -> None:
        with self._lock:
            self._items[key] = result
            self._items.move_to_end(key)
            while len(self._items) > self.SIZE:
                self._items.popitem(last=False)


# What each checkpoint must fit: (network, its name in messages, keys the file may lack)
CHECKPOINT_NETWORKS: dict[str, tuple[Callable[[], torch.nn.Module], str, tuple[str, ...]]] = {
    "wav2lip_gan": (Wav2Lip, wav2lip_model.LABEL, ()),
    "wav2lip": (Wav2Lip, wav2lip_model.LABEL, ()),
    "s3fd": (S3FD, "S3FD (s3fd)", ()),
    "syncnet_v2": (SyncNet, syncnet_model.LABEL, syncnet_model.OPTIONAL_KEYS),
    "sfd_face": (SFDFace, "S3FD (sfd_face)", ()),
}


def check_weights(name: str) -> Path:
    """Resolve (download) a checkpoint and check that it reads and fits its network, cheaply: the file
    is memory-mapped and compared by key names and shapes with the network built on the meta device."""
    network, label, optional = CHECKPOINT_NETWORKS[name]
    with torch.device("meta"):
        model = network()
    return weights.check_file(name, model, label=label, optional_suffixes=optional)


@dataclass
class WeightsStatus:
    """Fetches and checks every checkpoint in a background thread (downloads unless LIPSYNC_WEIGHTS_DIR is set)."""

    names: Sequence[str] = WEIGHT_NAMES
    check: Callable[[str], Path] = check_weights
    state: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (pending|ok|error, detail)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.state = {name: ("pending", "") for name in self.names}

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="weights", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        for name in self.names:
            try:
                path = self.check(name)
            except LipSyncError as exc:
                log.error("weights %s: %s", name, exc)
                self.state[name] = ("error", str(exc))
            else:
                self.state[name] = ("ok", str(path))

    def done(self) -> bool:
        return all(kind != "pending" for kind, _ in self.state.values())

    def markdown(self) -> str:
        words = {"pending": "fetching…", "ok": "ready", "error": "FAILED"}
        parts = [f"`{name}` {words[kind]}" for name, (kind, _) in self.state.items()]
        lines = ["**Model weights:** " + " · ".join(parts)]
        if not self.done():
            lines.append("Weights are being fetched in the background; a request made now waits for them.")
        for name, (kind, detail) in self.state.items():
            if kind == "error":
                lines.append(f"- **{name} cannot be used**: {detail}")
        return "\n\n".join(lines)
