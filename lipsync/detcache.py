"""Face detections cached by video content and detection options.

Re-running the same video with a new audio track skips detection. Entries are small ``.npz`` files
(a few numbers per frame) under ``$LIPSYNC_CACHE_DIR`` (default ``~/.cache/lipsync/detections``),
named by :func:`common.hashing.content_key` of the video and the detection settings.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    root = os.environ.get("LIPSYNC_CACHE_DIR") or Path.home() / ".cache" / "lipsync"
    return Path(root) / "detections"


def load(key: str) -> dict[int, np.ndarray] | None:
    path = cache_dir() / f"{key}.npz"
    try:
        with np.load(path) as data:
            frames, rows = data["frames"], data["rows"]
            detected = data["detected"]
    except (OSError, KeyError, ValueError):
        return None
    dets = {int(i): np.zeros((0, 5), np.float32) for i in detected}
    for i in np.unique(frames):
        dets[int(i)] = rows[frames == i]
    return dets


def save(key: str, dets: dict[int, np.ndarray]) -> None:
    """Write atomically; a cache that cannot be written is only logged."""
    folder = cache_dir()
    frames = np.concatenate([np.full(len(d), i, np.int64) for i, d in dets.items()] or [np.zeros(0, np.int64)])
    rows = np.concatenate([np.asarray(d, np.float32).reshape(-1, 5) for d in dets.values()]
                          or [np.zeros((0, 5), np.float32)])
    partial: Path | None = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, suffix=".npz", delete=False) as fh:
            partial = Path(fh.name)
            np.savez(fh, frames=frames, rows=rows, detected=np.array(sorted(dets), np.int64))
        os.replace(partial, folder / f"{key}.npz")
    except OSError as exc:
        log.warning("could not cache face detections in %s: %s", folder, exc)
        if partial is not None:
            partial.unlink(missing_ok=True)
