"""``python -m lipsync FACE AUDIO -o OUT.mp4``: the options of Wav2Lip's inference.py, and a few more.

``python -m lipsync batch PAIRS.csv --out-dir DIR`` lip-syncs many pairs on Ray (:mod:`batch.lip_sync`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from common import optspec
from common.cli import add_model_arguments, command_name
from common.errors import LipSyncError
from lipsync.options import LipSyncOptions


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=command_name("lipsync"), description=(
        "Lip-sync a face video or photo to a speech track with Wav2Lip. The output container follows the "
        "extension: .mp4 (H.264 + AAC, plays everywhere) or .mkv (lossless FFV1 + FLAC)."),
        epilog=f"Many pairs, resumable, on Ray: {command_name('lipsync')} batch --help (a face file named 'batch' is "
               "./batch).")
    p.add_argument("face", type=Path, help="video (mp4, mov, mkv, webm, avi) or image (jpg, png, webp) of a face")
    p.add_argument("audio", type=Path, help="speech: wav, mp3, m4a/aac, flac, ogg, or a video whose audio is used")
    p.add_argument("-o", "--outfile", type=Path, default=Path("results/result_voice.mp4"))
    p.add_argument("--voice", type=Path, metavar="FILE",
                   help="speech that drives the lips while AUDIO is what the output plays (e.g. a song's vocals, "
                        "with the full mix as AUDIO); it must be as long as AUDIO, within one frame")
    optspec.add_arguments(p.add_argument_group("lip-sync options"), LipSyncOptions)
    add_model_arguments(p)
    p.add_argument("-q", "--quiet", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["batch"]:
        from batch.lip_sync import main as batch_main

        return batch_main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(message)s")
    try:
        from lipsync.pipeline import LipSync

        options = optspec.from_namespace(LipSyncOptions, args)
        args.outfile.parent.mkdir(parents=True, exist_ok=True)
        result = LipSync(weights_dir=args.weights_dir, device=args.device).run(
            args.face, args.audio, args.outfile, options, voice=args.voice)
    except LipSyncError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    if result.message:
        print(result.message, file=sys.stderr)
    print(f"{result.output} ({result.width}x{result.height}, {result.n_frames} frames at {result.fps:g} fps, "
          f"{result.duration:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
