"""``python -m lipsync FACE AUDIO -o OUT.mp4``: the options of Wav2Lip's inference.py, and a few more."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from lipsync.errors import LipSyncError
from lipsync.options import LipSyncOptions


def build_parser() -> argparse.ArgumentParser:
    d = LipSyncOptions()
    p = argparse.ArgumentParser(prog="python -m lipsync", description=(
        "Lip-sync a face video or photo to a speech track with Wav2Lip. The output container follows the "
        "extension: .mp4 (H.264 + AAC, plays everywhere) or .mkv (lossless FFV1 + FLAC)."))
    p.add_argument("face", type=Path, help="video (mp4, mov, mkv, webm, avi) or image (jpg, png, webp) of a face")
    p.add_argument("audio", type=Path, help="speech: wav, mp3, m4a/aac, flac, ogg, or a video whose audio is used")
    p.add_argument("-o", "--outfile", type=Path, default=Path("results/result_voice.mp4"))
    p.add_argument("--checkpoint", "--checkpoint_path", default=d.checkpoint,
                   help="wav2lip, wav2lip_gan (default) or a checkpoint file")
    p.add_argument("--weights-dir", type=Path,
                   help="folder with the checkpoints (else $LIPSYNC_WEIGHTS_DIR or the Hub)")
    p.add_argument("--static", action="store_true", help="use only the first frame of the video")
    p.add_argument("--fps", type=float, default=d.fps, help="output frame rate for a still image (default 25)")
    p.add_argument("--pads", type=int, nargs=4, default=d.pads, metavar=("TOP", "BOTTOM", "LEFT", "RIGHT"),
                   help="grow the face box; default 0 10 0 0 takes in the chin")
    p.add_argument("--face_det_batch_size", "--face-det-batch-size", type=int, default=d.face_det_batch_size)
    p.add_argument("--wav2lip_batch_size", "--wav2lip-batch-size", type=int, default=d.wav2lip_batch_size)
    p.add_argument("--resize_factor", "--resize-factor", type=int, default=d.resize_factor,
                   help="shrink frames by this factor first (the output is that size too)")
    p.add_argument("--crop", type=int, nargs=4, default=d.crop, metavar=("TOP", "BOTTOM", "LEFT", "RIGHT"),
                   help="keep only this region (-1 = to the edge), after resize and rotate")
    p.add_argument("--box", type=int, nargs=4, default=None, metavar=("TOP", "BOTTOM", "LEFT", "RIGHT"),
                   help="fixed face box: skips detection")
    p.add_argument("--rotate", action="store_true", help="turn frames 90 degrees clockwise")
    p.add_argument("--nosmooth", action="store_true", help="no temporal smoothing of face boxes")
    p.add_argument("--loop", choices=("forward", "pingpong"), default=d.loop,
                   help="how the video repeats when the audio is longer (pingpong hides the jump)")
    p.add_argument("--strict", action="store_true", help="stop on any frame without a face (the original's way)")
    p.add_argument("--face-index", type=int, default=d.face_index, help="0 = largest face, 1 = next largest...")
    p.add_argument("--face-point", type=float, nargs=2, default=None, metavar=("X", "Y"),
                   help="use the face at/nearest this pixel")
    p.add_argument("--blend", choices=("none", "feather"), default=d.blend,
                   help="feather blends the mouth region (none = the original hard paste)")
    p.add_argument("--detection", choices=("fast", "original"), default=d.detection,
                   help="fast: detect on shrunk key frames; original: every frame at full size, as inference.py")
    p.add_argument("--detect-every", type=int, default=d.detect_every)
    p.add_argument("--detect-size", type=int, default=d.detect_size)
    p.add_argument("--max-gap", type=int, default=d.max_gap, help="bridge this many faceless frames")
    p.add_argument("--no-cache", action="store_true", help="do not reuse or store face detections")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("-q", "--quiet", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(message)s")
    try:
        from lipsync.pipeline import LipSync

        options = LipSyncOptions(
            checkpoint=args.checkpoint, pads=tuple(args.pads), resize_factor=args.resize_factor,
            crop=tuple(args.crop), box=tuple(args.box) if args.box else None, rotate=args.rotate,
            nosmooth=args.nosmooth, static=args.static, fps=args.fps, face_det_batch_size=args.face_det_batch_size,
            wav2lip_batch_size=args.wav2lip_batch_size, loop=args.loop, strict=args.strict,
            face_index=args.face_index, face_point=tuple(args.face_point) if args.face_point else None,
            blend=args.blend, detection=args.detection, detect_every=args.detect_every,
            detect_size=args.detect_size, max_gap=args.max_gap, cache_detections=not args.no_cache,
        )
        args.outfile.parent.mkdir(parents=True, exist_ok=True)
        result = LipSync(weights_dir=args.weights_dir, device=args.device).run(
            args.face, args.audio, args.outfile, options)
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
