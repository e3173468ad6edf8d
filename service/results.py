"""Scores as the page and the API show them: rounded, finite or None, and as a Markdown table."""

from __future__ import annotations

import math
from typing import Any

from syncnet.evaluate import VideoResult


def fmt(value: float | None, spec: str = ".2f") -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return format(value, spec)


def result_dict(result: VideoResult | None, error: str | None = None) -> dict[str, Any]:
    if result is None:
        return {"lse_d": None, "lse_c": None, "offset": None, "messages": [error] if error else []}
    return {
        "lse_d": finite_or_none(result.lse_d), "lse_c": finite_or_none(result.lse_c),
        "offset": finite_or_none(result.offset), "mode": result.mode, "jpeg_roundtrip": result.jpeg_roundtrip,
        "tracks": [{"lse_d": finite_or_none(t.lse_d), "lse_c": finite_or_none(t.lse_c), "offset": t.offset,
                    "first_frame": t.first_frame, "last_frame": t.last_frame} for t in result.tracks],
        "messages": list(result.messages),
    }


def rounded(value: float | None) -> float | None:
    return None if (value := finite_or_none(value)) is None else round(value, 3)


def finite_or_none(value: float | None) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def scores_markdown(rows: list[tuple[str, dict[str, Any]]]) -> str:
    lines = ["| video | LSE-D ↓ | LSE-C ↑ | offset (frames) |", "|---|---|---|---|"]
    notes = []
    for label, scores in rows:
        lines.append(f"| {label} | {fmt(scores['lse_d'])} | {fmt(scores['lse_c'])} | {fmt(scores['offset'], 'g')} |")
        notes += [f"- {label}: {m}" for m in scores["messages"]]
    return "\n".join(lines) + ("\n\n" + "\n".join(notes) if notes else "")
