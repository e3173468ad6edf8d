"""SyncNet lip-sync scores (LSE-D, LSE-C, AV offset) of any video, faithful to syncnet_python.

``python -m syncnet VIDEO...`` (or ``lipsync-score``) on the command line; from Python::

    from syncnet import EvalOptions, SyncNetEvaluator
    result = SyncNetEvaluator().evaluate("talk.mp4", EvalOptions(min_track=25))
    print(result.lse_d, result.lse_c, result.offset)

The names below load on first use, so ``import syncnet`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {"EvalOptions": "syncnet.options", "SyncNetEvaluator": "syncnet.evaluate",
           "TrackResult": "syncnet.evaluate", "VideoResult": "syncnet.evaluate", "evaluate": "syncnet.evaluate"}
__all__ = list(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'syncnet' has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name]), name)
