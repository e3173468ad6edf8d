"""``python -m syncnet VIDEO [VIDEO ...]``: LSE-D / LSE-C / AV offset per face track and per video.

``python -m syncnet batch ...`` scores a whole dataset on Ray (:mod:`batch.scoring`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from common import optspec
from common.cli import add_model_arguments, command_name
from common.errors import LipSyncError
from syncnet.options import CHECKPOINTS, EvalOptions

if TYPE_CHECKING:
    from syncnet.evaluate import VideoResult


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=command_name("syncnet"), description=(
        "Score lip sync with SyncNet as syncnet_python does: LSE-D (lower is better), LSE-C (higher is "
        "better) and the audio-video offset in frames at 25 fps (positive: the audio leads)."),
        epilog=f"A whole dataset, resumable, on Ray: {command_name('syncnet')} batch --help (a video named "
               "'batch' is ./batch).")
    p.add_argument("videos", type=Path, nargs="+", metavar="VIDEO", help="video files with speech")
    p.add_argument("--json", action="store_true", help="print machine-readable results (one JSON list)")
    optspec.add_arguments(p.add_argument_group("scoring options"), EvalOptions)
    add_model_arguments(p, CHECKPOINTS)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return p


def format_table(results: list[VideoResult]) -> str:
    """A short plain-text table: one line per track, then the video's means when it has several."""
    lines = [f"{'video':<28} {'track':>5} {'frames':>11} {'LSE-D':>7} {'LSE-C':>7} {'offset':>6}"]
    for result in results:
        name = result.path.name
        label = name if len(name) <= 28 else "..." + name[-25:]
        for i, t in enumerate(result.tracks):
            frames = f"{t.first_frame}-{t.last_frame}"
            lines.append(f"{label:<28} {i:>5} {frames:>11} {t.lse_d:>7.3f} {t.lse_c:>7.3f} {t.offset:>+6d}")
        if len(result.tracks) > 1:
            lines.append(f"{label:<28} {'mean':>5} {'':>11} {result.lse_d:>7.3f} {result.lse_c:>7.3f} "
                         f"{result.offset:>+6.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["batch"]:
        from batch.scoring import main as batch_main

        return batch_main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(message)s")
    # model loading and weight hashes are routine; keep the console for notes about the videos
    logging.getLogger("common.weights").setLevel(logging.WARNING)
    try:
        from syncnet.evaluate import SyncNetEvaluator

        options = optspec.from_namespace(EvalOptions, args)
        evaluator = SyncNetEvaluator(args.weights_dir, args.device, syncnet=args.syncnet, detector=args.detector)
    except LipSyncError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    results: list[VideoResult] = []
    records: list[dict[str, object]] = []  # --json: results and errors in the order given
    for video in args.videos:
        try:
            result = evaluator.evaluate(video, options, progress=not args.quiet)
        except LipSyncError as exc:
            print(f"error: {video}: {exc}", file=sys.stderr)
            records.append({"path": str(video), "error": str(exc)})
            continue
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        results.append(result)
        records.append(result.to_dict())
        for note in result.messages:
            print(f"note: {video.name}: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps(records, indent=2, default=_json_default))
    elif results:
        print(format_table(results))
    return 2 if len(results) < len(args.videos) else 0


def _json_default(value: object) -> object:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


if __name__ == "__main__":
    sys.exit(main())
