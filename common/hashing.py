"""SHA-256 of files, computed once per file version (path, size, modification time) in a process.

Weights are verified by it, face detections and scores are cached under it, and batch results
record it: a video that was renamed or copied keeps its hash.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

_BLOCK = 1 << 20  # read 1 MiB at a time
_known: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of the file's bytes (remembered until the file changes)."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _known:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(_BLOCK), b""):
                digest.update(block)
        _known[key] = digest.hexdigest()
    return _known[key]


def content_key(path: str | os.PathLike, settings: dict[str, Any]) -> str:
    """A key for results computed from a file's content under some settings (JSON-serialisable)."""
    digest = hashlib.sha256(file_sha256(path).encode())
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return digest.hexdigest()
