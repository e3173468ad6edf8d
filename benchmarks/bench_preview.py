"""How long ``LipSync.preview`` takes for one 1280x720 frame on this CPU (target: a few seconds).

For each face-box mode (the fast preset, the original full-size detection, a fixed box) in one
process: the first preview, which loads the generator and the detector as a fresh Space process
would, then previews at several times in the clip (median). Detections are planted on the real
network's run (see ``_common.PlantedDetector``). Run from the repository root:

    python -m benchmarks.bench_preview [--seconds 30] [--weights DIR] [--clips DIR]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks._common import (
    DEFAULT_CACHE,
    PlantedDetector,
    busy_fraction,
    ensure_clip,
    ensure_weights,
    print_table,
    wait_for_quiet,
)

TARGET_S = 5.0  # "a few seconds" for a warm preview
TIMES = (0.5, 0.37, 0.75, 0.99)  # where in the clip, as fractions of its length


def measure(mode: str, clip: Path, boxes: np.ndarray, weights: Path, seconds: float) -> list[object]:
    from lipsync.options import LipSyncOptions
    from lipsync.pipeline import LipSync

    engine = LipSync(weights_dir=weights, device="cpu")
    if mode == "box":
        x1, y1, x2, y2 = (int(round(v)) for v in boxes[0])
        options = LipSyncOptions(box=(y1, y2, x1, x2))
    else:
        options = LipSyncOptions(detection=mode, cache_detections=False)
    timings = []
    for k, fraction in enumerate(TIMES):
        start = time.perf_counter()
        if k == 0 and mode != "box":  # the first call loads the detector: timed with it
            planted = PlantedDetector(engine.detector(), boxes)
            engine.detector = lambda planted=planted: planted  # the instance attribute shadows the method
        frame = engine.preview(clip, clip, fraction * seconds, options)
        timings.append(time.perf_counter() - start)
        assert frame.shape == (720, 1280, 3), frame.shape
    warm = statistics.median(timings[1:])
    return [mode, f"{timings[0]:.2f}", f"{warm:.2f}", f"{min(timings[1:]):.2f}-{max(timings[1:]):.2f}",
            "yes" if warm <= TARGET_S else "NO"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=30, help="clip length (default 30)")
    parser.add_argument("--weights", type=Path, help="folder of checkpoints (generated when missing)")
    parser.add_argument("--clips", type=Path, default=DEFAULT_CACHE / "clips")
    parser.add_argument("--wait-quiet", type=float, default=600,
                        help="before each mode, wait up to this many seconds for an idle machine "
                             "(default 600; 0: no wait)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    weights = ensure_weights(args.weights)
    clip, boxes_path = ensure_clip(args.seconds, args.clips)
    boxes = np.load(boxes_path)
    rows = []
    for mode in ("fast", "original", "box"):
        if args.wait_quiet > 0:
            wait_for_quiet(args.wait_quiet)
        before = busy_fraction(1.0)
        rows.append([*measure(mode, clip, boxes, weights, args.seconds), f"{before:.0%} / {busy_fraction(1.0):.0%}"])
    print(f"preview of one 1280x720 frame of a {args.seconds} s clip, seconds (target: warm <= {TARGET_S:g} s)")
    print_table(["face box", "first (loads models)", "warm median", "warm range", "target",
                 "CPUs busy before / after"], rows)


if __name__ == "__main__":
    main()
