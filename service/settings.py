"""The app's limits and serving knobs, read from the environment, and the limits applied to a file."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

from common.errors import InputError
from media.io import MediaInfo, audio_duration, probe


def env_number(name: str, default: float, kind: type = float, minimum: float = 0) -> Any:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return kind(default)
    try:
        value = kind(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number (default {default:g})") from None
    if value <= minimum:
        raise ValueError(f"{name}={raw!r} must be greater than {minimum:g}")
    return value


SWITCH_WORDS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False,
                "off": False}


def env_switch(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw not in SWITCH_WORDS:
        raise ValueError(f"{name}={raw!r} is neither on nor off: give 1 or 0 (default {int(default)})")
    return SWITCH_WORDS[raw]


@dataclass(frozen=True)
class Settings:
    """Limits and serving knobs, from environment variables (defaults in brackets).

    LIPSYNC_MAX_SECONDS [120]  longest face video / audio accepted
    LIPSYNC_MAX_SIDE [1920]    longest side of the face video or image, in pixels
    LIPSYNC_MAX_MB [200]       largest upload, per file
    LIPSYNC_CONCURRENCY [1]    requests that run models at the same time (the rest wait in the queue)
    LIPSYNC_QUEUE_SIZE [20]    requests allowed to wait; more are turned away with "queue full"
    LIPSYNC_KEEP_SECONDS [3600] how long uploads and results stay on disk before they are deleted
    LIPSYNC_GPU_MAX_SECONDS [120] on ZeroGPU, the most GPU time one request asks for
    LIPSYNC_MCP [1]            serve /lipsync, /preview and /evaluate as MCP tools too (0 turns it off)
    """

    max_seconds: float = 120.0
    max_side: int = 1920
    max_mb: float = 200.0
    concurrency: int = 1
    queue_size: int = 20
    keep_seconds: int = 3600
    gpu_max_seconds: int = 120
    mcp: bool = True

    ENV: ClassVar[dict[str, str]] = {
        "max_seconds": "LIPSYNC_MAX_SECONDS", "max_side": "LIPSYNC_MAX_SIDE", "max_mb": "LIPSYNC_MAX_MB",
        "concurrency": "LIPSYNC_CONCURRENCY", "queue_size": "LIPSYNC_QUEUE_SIZE",
        "keep_seconds": "LIPSYNC_KEEP_SECONDS", "gpu_max_seconds": "LIPSYNC_GPU_MAX_SECONDS", "mcp": "LIPSYNC_MCP",
    }

    @classmethod
    def from_env(cls) -> Settings:
        """Read the environment; ValueError names a variable that is not a positive number (or, for a
        switch, neither on nor off)."""
        values = {}
        for f in fields(cls):
            if f.type in ("bool", bool):
                values[f.name] = env_switch(cls.ENV[f.name], f.default)
            else:
                kind = int if f.type in ("int", int) else float
                values[f.name] = env_number(cls.ENV[f.name], f.default, kind)
        return cls(**values)

    def describe(self) -> str:
        return (f"Limits: face video and audio up to {self.max_seconds:g} s, {self.max_side} px on the longest "
                f"side, {self.max_mb:g} MB per file (set by LIPSYNC_MAX_SECONDS, LIPSYNC_MAX_SIDE, "
                "LIPSYNC_MAX_MB).")


def check_input(path: str | Path, settings: Settings, role: str, *, audio: bool = False) -> MediaInfo | None:
    """Enforce the limits before any work; InputError says what to change.

    A face (``audio=False``) is probed with media.io.probe, which also rejects files that are not
    videos or images; for the audio only its duration is read (probe wants a picture).
    """
    path = Path(path)
    try:
        size_mb = path.stat().st_size / 2**20
    except FileNotFoundError:
        raise InputError(f"the {role} file is missing: upload it again") from None
    if size_mb > settings.max_mb:
        raise InputError(f"the {role} file is {size_mb:.0f} MB; this app accepts up to {settings.max_mb:g} MB "
                         "per file: compress or trim it")
    info = None if audio else probe(path)
    seconds = audio_duration(path) if audio else info.duration
    if seconds is not None and seconds > settings.max_seconds:
        raise InputError(f"the {role} lasts {seconds:.1f} s; this app accepts up to {settings.max_seconds:g} s: "
                         "trim it, or run `python -m lipsync` locally for longer files")
    if info is not None and max(info.width, info.height) > settings.max_side:
        raise InputError(f"the {role} is {info.width}x{info.height}; this app accepts up to {settings.max_side} px "
                         "on the longest side: downscale it first")
    return info
