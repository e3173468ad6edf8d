"""One folder per request, inside the folder the page serves files from, and pruning of old empty ones."""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path


def safe_stem(path: str | Path) -> str:
    """A file name's stem with only letters, digits, '_' and '-' (at most 40), for names of outputs."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(path).stem).strip("_")[:40]
    return stem or "video"


def request_dir(root: Path, keep_seconds: float) -> Path:
    """A fresh folder for one request under ``root``; empty folders older than ``keep_seconds`` are pruned
    (a younger empty one may belong to a running request)."""
    root.mkdir(parents=True, exist_ok=True)
    cutoff = time.time() - keep_seconds
    for old in root.iterdir():
        try:
            if old.is_dir() and old.stat().st_mtime < cutoff and not any(old.iterdir()):
                old.rmdir()
        except OSError:  # another request pruned it first
            continue
    folder = root / uuid.uuid4().hex
    folder.mkdir()
    return folder
