"""Side by side on the CPU: our lip sync and scoring against the original Wav2Lip and syncnet_python, back
to back in one run, on the same clip, with the same generated weights and the same planted face boxes.

    python -m benchmarks.bench_original --original-wav2lip /tmp/wav2lip --original-syncnet /tmp/syncnet_python
    python -m benchmarks.bench_original --original-wav2lip /tmp/wav2lip --compare box --seconds 2

Comparisons (``--compare``; by default every one whose checkout is given):

- ``lipsync``: Wav2Lip's ``inference.py`` at its default settings (S3FD at full resolution on every frame)
  against ``LipSync.run`` with the presets of ``--ours-lipsync`` (default ``fast`` and ``original``);
- ``box``: ``inference.py --box`` (the clip's first face box) against ``LipSync.run`` with the same box;
- ``scoring``: syncnet_python's ``run_pipeline.py`` then ``run_syncnet.py`` (its real-video pipeline, two
  processes) against ``SyncNetEvaluator.evaluate`` with the presets of ``--ours-scoring`` (default
  ``reference``, which mirrors it, and ``fast``). Its default shortest track is 100 frames: clips of 5 s
  or more.

Every run is a fresh process (wall time, peak RSS, CPU time, others' CPU share, as the other benchmarks).
The originals run unchanged, with the run-time patches ``benchmarks/original.py`` lists; their "run s"
is the script's wall time less the time it spent loading models (ours loads them before the clock).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks._common import (
    DEFAULT_CACHE,
    ChildRun,
    add_common_arguments,
    child_spec,
    dump_runs,
    ensure_clip,
    ensure_weights,
    machine_note,
    print_table,
    run_labelled,
    write_result,
)

COMPARISONS = ("lipsync", "box", "scoring")
ORIGINAL_STEPS = {"lipsync": ("inference.py",), "box": ("inference.py --box",),
                  "scoring": ("run_pipeline.py", "run_syncnet.py")}
LOG_TAIL_LINES = 15


@dataclass
class Job:
    name: str  # what ran: "ours lipsync fast", "inference.py --box", ...
    seconds: int
    module: str
    spec: dict

    @property
    def label(self) -> str:
        return f"{self.seconds} s {self.name}"


def child(spec: dict, result_path: str) -> None:
    """One run of an original script, in this (fresh) process; writes its figures as JSON."""
    from benchmarks import original

    if spec.get("log"):
        log = os.open(spec["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
    checkout, weights, clip = Path(spec["checkout"]), Path(spec["weights"]), Path(spec["clip"])
    boxes = np.load(spec["boxes"])
    planting = {"plant": spec["plant"], "random_scores": spec["random_scores"]}
    try:
        if spec["mode"] in ORIGINAL_STEPS["lipsync"] + ORIGINAL_STEPS["box"]:
            figures = original.run_wav2lip(checkout, weights, clip, boxes, Path(spec["work"]),
                                           box=spec["mode"] == "inference.py --box", **planting)
        elif spec["mode"] == "run_pipeline.py":
            figures = original.run_pipeline(checkout, weights, clip, boxes, Path(spec["work"]), **planting)
        else:
            figures = original.run_syncnet(checkout, weights, clip, Path(spec["work"]))
    except original.OriginalError as error:
        figures = {"error": str(error)}
    write_result(result_path, {"mode": spec["mode"], "seconds": spec["seconds"], **figures})


def plan(args: argparse.Namespace, compare: list[str], weights: Path, work: Path) -> list[Job]:
    """Every run, in order: per clip and repeat, ours then the original's, comparison by comparison."""
    jobs = []
    for seconds in args.seconds:
        clip, boxes = ensure_clip(seconds, args.clips)
        for k in range(args.repeat):
            folder = work / f"{seconds}s-{k}"
            for comparison in compare:
                if comparison == "scoring":
                    ours = [("benchmarks.bench_evaluate", f"ours scoring {m}", m) for m in args.ours_scoring]
                    checkout = args.original_syncnet
                else:
                    modes = args.ours_lipsync if comparison == "lipsync" else ["box"]
                    ours = [("benchmarks.bench_lipsync", f"ours lipsync {m}", m) for m in modes]
                    checkout = args.original_wav2lip
                for module, name, mode in ours:
                    spec = {**child_spec(args, seconds, clip, boxes, weights, mode), "fast_every": args.fast_every}
                    jobs.append(Job(name, seconds, module, spec))
                for step in ORIGINAL_STEPS[comparison]:
                    spec = {**child_spec(args, seconds, clip, boxes, weights, step), "checkout": str(checkout),
                            "work": str(folder / comparison),
                            "log": None if args.progress else str(args.logs / _file_name(f"{seconds}s-{k}-{step}"))}
                    jobs.append(Job(step, seconds, "benchmarks.bench_original", spec))
    return jobs


def _file_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text) + ".log"


def _median(runs: list[ChildRun], key: str) -> float:
    return float(np.median([r.result[key] for r in runs]))


def report(done: list[tuple[Job, ChildRun]], compare: list[str], args: argparse.Namespace) -> None:
    rows, details = [], []
    for job, run in done:
        r = run.result
        if "error" in r:
            rows.append([job.label, r["error"]] + [""] * 8)
            continue
        detector = "-"
        if r.get("detector_frames"):
            detector = f"{r['detector_net_s'] / r['detector_frames']:.2f} ({r['detector_frames']})"
        rows.append([job.label, r["n_frames"], r["e2e_s"], r["e2e_s"] / job.seconds, r["load_s"], detector,
                     f"{run.maxrss_mb:.0f}", run.wall_s, run.cpu_s, f"{run.others_share:.0%}"])
        details += _details(job, r)
    print_table(["run", "frames", "run s", "RTF", "model load s", "detector s/frame (frames)", "peak RSS MB",
                 "process s", "CPU s", "others' CPU"], rows)
    print("\nrun s: end to end without model loading (ours loads before the clock; for the originals, the "
          "script's wall time less its model loading). process s: the whole fresh process. detector: seconds "
          "per frame inside the real S3FD entry point (network and its post-processing). RTF = run s per "
          "second of video. others' CPU = share of the machine's CPUs other processes used during the run "
          "(figures are only comparable near 0%).")
    for line in details:
        print("  " + line)
    _side_by_side(done, compare, args)
    _scores(done, args)


def _details(job: Job, r: dict) -> list[str]:
    lines = []
    if r.get("unreadable_codes"):
        lines.append(f"{job.label}: {r['unreadable_codes']} unreadable frame codes (no planted box)")
    if "output" in r:
        out = r["output"]
        lines.append(f"{job.label}: output {out['width']}x{out['height']}, {out['n_frames']} frames, "
                     f"{out['duration']:.2f} s, audio {out['has_audio']}")
    if "n_tracks" in r:
        lines.append(f"{job.label}: {r['n_tracks']} face tracks cropped")
    for track in r.get("tracks", []):
        if "lse_d" in track:  # the original's, per track
            lines.append(f"{job.label}: track {track['track']}: LSE-D {track['lse_d']:.3f} LSE-C "
                         f"{track['lse_c']:.3f} offset {track['offset']} ({track['windows']} windows)")
    if "lse_d" in r and r["lse_d"] is not None:  # ours, for the whole video
        tracks = ", ".join(f"{t['first']}-{t['last']} ({t['windows']} windows)" for t in r.get("tracks", []))
        lines.append(f"{job.label}: LSE-D {r['lse_d']:.3f} LSE-C {r['lse_c']:.3f} offset {r['offset']:.0f}; "
                     f"tracks {tracks}")
    return lines


def _side_by_side(done: list[tuple[Job, ChildRun]], compare: list[str], args: argparse.Namespace) -> None:
    """Each original beside each of ours it is compared with: medians over repeats, the highest peak."""
    groups: dict[tuple[int, str], list[ChildRun]] = {}
    for job, run in done:
        if "error" not in run.result:
            groups.setdefault((job.seconds, job.name), []).append(run)
    rows = []
    for seconds in args.seconds:
        for comparison in compare:
            steps = ORIGINAL_STEPS[comparison]
            if not all((seconds, step) in groups for step in steps):
                continue
            original_s = sum(_median(groups[seconds, step], "e2e_s") for step in steps)
            original_wall = sum(float(np.median([r.wall_s for r in groups[seconds, step]])) for step in steps)
            original_mb = max(r.maxrss_mb for step in steps for r in groups[seconds, step])
            if comparison == "scoring":
                ours_names = [f"ours scoring {m}" for m in args.ours_scoring]
            else:
                ours_names = [f"ours lipsync {m}" for m in (args.ours_lipsync if comparison == "lipsync" else ["box"])]
            for name in ours_names:
                if (seconds, name) not in groups:
                    continue
                ours = groups[seconds, name]
                ours_s, ours_mb = _median(ours, "e2e_s"), max(r.maxrss_mb for r in ours)
                ours_wall = float(np.median([r.wall_s for r in ours]))
                rows.append([f"{seconds} s", " + ".join(steps), name, original_s, ours_s, f"{original_s / ours_s:.1f}x",
                             f"{original_wall / ours_wall:.1f}x", f"{original_mb:.0f}", f"{ours_mb:.0f}",
                             f"{original_mb / ours_mb:.1f}x"])
    if not rows:
        return
    print(f"\nside by side (same clip, weights and planted boxes; median of {args.repeat} run(s), highest peak):")
    print_table(["clip", "original", "ours", "original run s", "ours run s", "time ratio", "process time ratio",
                 "original peak MB", "ours peak MB", "memory ratio"], rows)
    print("time ratio = original run s / ours run s (how many times faster ours is); process time ratio: the "
          "same for the whole processes (interpreter start, imports and model loading included); memory ratio = "
          "original peak RSS / ours. Scoring: the original's two scripts' times added, its higher peak.")


def _scores(done: list[tuple[Job, ChildRun]], args: argparse.Namespace) -> None:
    """LSE-D, LSE-C and offset of run_syncnet.py (per face track) beside each of our scoring presets."""
    rows = []
    for seconds in args.seconds:
        runs = [(job, run.result) for job, run in done if job.seconds == seconds and "error" not in run.result]
        theirs = [t for job, r in runs if job.name == "run_syncnet.py" for t in r.get("tracks", [])]
        ours = [(job.name, r) for job, r in runs if job.name.startswith("ours scoring") and r.get("lse_d") is not None]
        if not theirs or not ours:
            continue
        for name, r in ours:
            rows.append([f"{seconds} s", name, " / ".join(f"{t['lse_d']:.3f}" for t in theirs), f"{r['lse_d']:.3f}",
                         " / ".join(f"{t['lse_c']:.3f}" for t in theirs), f"{r['lse_c']:.3f}",
                         " / ".join(str(t["offset"]) for t in theirs), f"{r['offset']:.0f}"])
    if rows:
        print("\nscores (generated random weights: only the agreement means something; the original's per track):")
        print_table(["clip", "ours", "original LSE-D", "ours LSE-D", "original LSE-C", "ours LSE-C", "original offset",
                     "ours offset"], rows)


def _print_log_tails(done: list[tuple[Job, ChildRun]]) -> None:
    for job, run in done:
        log = job.spec.get("log")
        if "error" in run.result and log and Path(log).is_file():
            tail = Path(log).read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
            print(f"\n{job.label} failed; the last lines of {log}:", file=sys.stderr)
            print("\n".join("  " + line for line in tail), file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--original-wav2lip", type=Path, metavar="PATH", help="a checkout of Rudrabha/Wav2Lip")
    parser.add_argument("--original-syncnet", type=Path, metavar="PATH",
                        help="a checkout of joonson/syncnet_python")
    parser.add_argument("--compare", nargs="+", choices=COMPARISONS,
                        help="default: lipsync and box with --original-wav2lip, scoring with --original-syncnet")
    parser.add_argument("--ours-lipsync", nargs="*", default=["fast", "original"], choices=["fast", "original"],
                        help="our detection presets beside inference.py's defaults (default fast original)")
    parser.add_argument("--ours-scoring", nargs="*", default=["reference", "fast"],
                        choices=["reference", "fast", "fast-at-scale", "fast-direct"],
                        help="our evaluator presets beside run_pipeline + run_syncnet (default reference fast)")
    parser.add_argument("--fast-every", type=int, default=5, help="detect_every of our fast scoring (default 5)")
    parser.add_argument("--logs", type=Path, default=DEFAULT_CACHE / "original-logs",
                        help="where the originals' output goes, one file per run (not with --progress)")
    add_common_arguments(parser, "code", seconds=(10,))
    return parser


def comparisons(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """The comparisons to run: ``--compare``, or every one whose checkout is given (a usage error otherwise)."""
    compare = args.compare or ([c for c in ("lipsync", "box") if args.original_wav2lip]
                               + (["scoring"] if args.original_syncnet else []))
    if not compare:
        parser.error("give --original-wav2lip PATH and/or --original-syncnet PATH (checkouts of the originals)")
    for needed, flag in (({"lipsync", "box"}, "--original-wav2lip"), ({"scoring"}, "--original-syncnet")):
        if needed & set(compare) and not getattr(args, flag[2:].replace("-", "_")):
            parser.error(f"--compare {' '.join(sorted(needed & set(compare)))} needs {flag} PATH")
    for checkout in (args.original_wav2lip, args.original_syncnet):
        if checkout and not checkout.is_dir():
            parser.error(f"{checkout} is not a folder: give the checkout of the original")
    return compare


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child), args.result)
        return
    compare = comparisons(parser, args)
    if not args.progress:
        os.environ["TQDM_DISABLE"] = "1"
    args.logs.mkdir(parents=True, exist_ok=True)
    weights = ensure_weights(args.weights)
    print(f"machine: {machine_note()}", flush=True)
    done: list[tuple[Job, ChildRun]] = []
    with tempfile.TemporaryDirectory(prefix="bench-original-") as work:
        for job in plan(args, compare, weights, Path(work)):
            if job.module == "benchmarks.bench_original":
                Path(job.spec["work"]).mkdir(parents=True, exist_ok=True)
            done.append((job, run_labelled(job.label, job.module, job.spec, args)))
    print()
    report(done, compare, args)
    _print_log_tails(done)
    print(f"\nmachine after: {machine_note()}")
    if args.json:
        dump_runs(args.json, [(job.label, run) for job, run in done])


if __name__ == "__main__":
    main()
