"""Shared pieces of the benchmarks: clip geometry, the frame-index code, planted detections, weights,
fresh-process runs with their peak RSS, and the printed tables.

Run the benchmarks from the repository root as modules (``python -m benchmarks.bench_lipsync``) so the
packages import without installing.

Why planted detections: the generated test weights are random, so the real detectors find no face and
the rest of a pipeline would have nothing to do. ``PlantedDetector`` runs the real network on exactly
the frames the pipeline hands it (so its cost is measured), then answers with the box where
``make_clip`` put the face. It knows which frame it was handed by reading a small binary code that
``make_clip`` draws into the bottom-left corner of every frame; that works whatever order, batch or
scale the pipeline detects in (key frames, refinement, 0.25 scale, JPEG round trip).

With random weights the networks' face scores also pass the 0.05 candidate threshold at nearly every
anchor (all 77,107 of a 720p frame's), so the post-processing would handle far more candidates than
real weights ever give it on a talking head. By default the networks' scores are therefore made to say
"background" everywhere (``say_background``) before any post-processing reads them, ours and the
originals' alike (``--random-scores`` keeps them as they are).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = Path(os.environ.get("LIPSYNC_BENCH_DIR") or Path.home() / ".cache" / "lipsync-bench")
SHARED_WEIGHTS = Path("/tmp/w")  # the team's already generated checkpoints, reused when complete
WEIGHT_FILES = ("wav2lip.pth", "wav2lip_gan.pth", "s3fd.pth", "syncnet_v2.model", "sfd_face.pth")

WIDTH, HEIGHT = 1280, 720
FPS = Fraction(25)

# Frame-index code: CODE_BITS black/white cells along the bottom-left corner, least significant first.
# 32 px cells are still 8 px wide at the 0.25 scale the fast presets detect at, so a cell's centre
# survives H.264, a JPEG round trip and a bilinear downscale untouched.
CODE_BITS = 16  # up to 65535 frames: 43 minutes at 25 fps
CODE_CELL = 32
CODE_X0, CODE_Y0 = 0, HEIGHT - CODE_CELL  # the face never goes below y = HEIGHT - 50 (see make_clip)
PLANTED_SCORE = 0.999  # above every preset's confidence threshold (0.5 for s3fd, 0.9 for sfd_face)


def draw_index(canvas: np.ndarray, index: int) -> None:
    """Write ``index`` into the code cells of a full-size (HEIGHT, WIDTH, 3) frame, in place."""
    if not 0 <= index < 2**CODE_BITS:
        raise ValueError(f"frame index {index} does not fit in {CODE_BITS} bits")
    for bit in range(CODE_BITS):
        x = CODE_X0 + bit * CODE_CELL
        canvas[CODE_Y0:CODE_Y0 + CODE_CELL, x:x + CODE_CELL] = 255 if (index >> bit) & 1 else 0


def read_index(frame: np.ndarray) -> int:
    """The index ``draw_index`` wrote, read from a frame of any size with the clip's aspect ratio."""
    h, w = frame.shape[:2]
    sx, sy = w / WIDTH, h / HEIGHT
    y = int((CODE_Y0 + CODE_CELL / 2) * sy)
    index = 0
    for bit in range(CODE_BITS):
        x = int((CODE_X0 + (bit + 0.5) * CODE_CELL) * sx)
        if frame[y, x].mean() > 127:
            index |= 1 << bit
    return index


def planted_row(frame: np.ndarray, boxes: np.ndarray) -> np.ndarray | None:
    """``(5,)`` x1 y1 x2 y2 score: the planted face box of the clip frame ``frame`` shows, in that frame's
    pixels (scaled from full-size clip pixels), or None where its frame-index code names no frame of ``boxes``."""
    index = read_index(frame)
    if index >= len(boxes):
        return None
    box = np.asarray(boxes[index], dtype=np.float32) * (frame.shape[1] / WIDTH)
    return np.array([*box, PLANTED_SCORE], dtype=np.float32)


# Face-score margin that makes a softmax over (background, face) give the face 2e-9: far under the
# detectors' 0.05 candidate threshold, as real weights give on a frame's background
BACKGROUND_MARGIN = 20.0


def say_background(module, inputs, outputs):
    """Forward hook for an S3FD network, ours or an original's: its face scores say "background" everywhere.

    Takes the raw heads ``[conf1, loc1, conf2, loc2, ...]`` ((background, face) logit maps, as our
    ``S3FD`` and Wav2Lip's ``s3fd`` give them), a softmax's (..., 2) probabilities (syncnet_python's
    ``S3FDNet.softmax``), or our ``SFDOutput``.
    """
    if isinstance(outputs, (list, tuple)) and hasattr(outputs, "_replace"):  # SFDOutput
        return outputs._replace(conf=say_background(module, inputs, outputs.conf))
    if isinstance(outputs, (list, tuple)):
        out = list(outputs)
        for k in range(0, len(out), 2):
            scores = out[k].clone()
            scores[:, 1] = scores[:, 0] - BACKGROUND_MARGIN
            out[k] = scores
        return out
    probs = outputs.new_zeros(outputs.shape)
    probs[..., 0] = 1.0
    return probs


class PlantedDetector:
    """Wraps a real ``FaceDetector``: runs its network (timed), answers with the ground-truth boxes.

    ``boxes`` is ``(n_frames, 4)`` x1 y1 x2 y2 in full-size clip pixels; answers are scaled to the
    size of the frames handed in, as the real ``detect`` answers in those frames' pixels. Unless
    ``random_scores``, the network's face scores say background (``say_background``).
    """

    def __init__(self, real, boxes: np.ndarray, *, random_scores: bool = False) -> None:
        self.real = real
        if not random_scores:
            real.net.register_forward_hook(say_background)
        self.boxes = np.asarray(boxes, dtype=np.float32)
        self.calls = 0
        self.frames = 0
        self.net_seconds = 0.0
        self.real_faces = 0  # what the real network found (0 with random weights)
        self.unreadable = 0  # frames whose code did not name a frame of the clip

    def detect(self, frames, *args, **kwargs) -> list[np.ndarray]:
        start = time.perf_counter()
        found = self.real.detect(frames, *args, **kwargs)
        self.net_seconds += time.perf_counter() - start
        self.calls += 1
        self.frames += len(frames)
        self.real_faces += sum(len(d) for d in found)
        out = []
        for frame in frames:
            row = planted_row(frame, self.boxes)
            if row is None:
                self.unreadable += 1
                out.append(np.zeros((0, 5), np.float32))
                continue
            out.append(row[None, :])
        return out

    def stats(self) -> dict:
        return {"detector_calls": self.calls, "detector_frames": self.frames,
                "detector_net_s": round(self.net_seconds, 3), "real_faces_found": self.real_faces,
                "unreadable_codes": self.unreadable}

    def __getattr__(self, name: str):
        return getattr(self.real, name)


def plant_evaluator(evaluator, dtype, boxes: np.ndarray, *, random_scores: bool = False) -> PlantedDetector:
    """Put a planted detector in a ``SyncNetEvaluator``'s place for ``dtype`` (its real one loaded first)."""
    planted = PlantedDetector(evaluator.detector_for(dtype), boxes, random_scores=random_scores)
    evaluator.detectors[dtype] = planted
    return planted


def ensure_weights(folder: Path | None) -> Path:
    """A folder with all five generated full-size checkpoints (reuses /tmp/w or ``folder`` when complete)."""
    candidates = [Path(folder)] if folder else [SHARED_WEIGHTS, DEFAULT_CACHE / "weights"]
    for candidate in candidates:
        if all((candidate / name).is_file() for name in WEIGHT_FILES):
            return candidate
    target = candidates[-1] if folder is None else Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    from tests.weightgen import write_all

    print(f"writing generated full-size checkpoints into {target} ...", file=sys.stderr)
    write_all(target)
    return target


def ensure_clip(seconds: int, folder: Path) -> tuple[Path, Path]:
    """``(clip.mp4, boxes.npy)`` for a clip of ``seconds``, made once and kept in ``folder``."""
    from benchmarks.make_clip import make_clip

    folder.mkdir(parents=True, exist_ok=True)
    clip = folder / f"face_{WIDTH}x{HEIGHT}_{seconds}s.mp4"
    boxes = clip.with_suffix(".boxes.npy")
    if not (clip.is_file() and boxes.is_file()):
        print(f"making {clip} ...", file=sys.stderr)
        make_clip(clip, seconds, boxes_path=boxes)
    return clip, boxes


def peak_rss_mb() -> float:
    """This process's peak resident set size so far (VmHWM), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class ChildRun:
    result: dict
    maxrss_mb: float  # ru_maxrss of the child, from wait4: peak RSS of that run alone
    wall_s: float  # the whole child: interpreter start, imports, model loading, run
    cpu_s: float  # user + system CPU seconds of the whole child (less sensitive to other load than wall time)
    load_before: float  # 1-minute load average when it started (other work on the machine)
    load_after: float
    others_share: float  # share of all CPUs that other processes used during the run (0 = a quiet machine)


def busy_fraction(sample_s: float = 3.0) -> float:
    """Share of all CPU time that was not idle over the next ``sample_s`` seconds (from /proc/stat)."""

    total0, idle0 = _cpu_ticks()
    time.sleep(sample_s)
    total1, idle1 = _cpu_ticks()
    return 1.0 - (idle1 - idle0) / max(1, total1 - total0)


def _cpu_ticks() -> tuple[int, int]:
    """``(total, idle)`` clock ticks of all CPUs since boot (idle includes iowait)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(values), values[3] + values[4]


def wait_for_quiet(max_wait_s: float, *, threshold: float = 0.10) -> float:
    """Wait (up to ``max_wait_s``) until other work uses under ``threshold`` of the CPUs; returns that share."""
    deadline = time.perf_counter() + max_wait_s
    quiet_needed = 3  # consecutive quiet samples: test runs of other people come in bursts
    quiet = 0
    busy = 1.0
    while quiet < quiet_needed and time.perf_counter() < deadline:
        busy = busy_fraction()
        if busy < threshold:
            quiet += 1
            continue
        quiet = 0
        print(f"  waiting for a quiet machine (CPUs {busy:.0%} busy) ...", file=sys.stderr, flush=True)
        time.sleep(7)
    return busy


@dataclass
class ProcessRun:
    returncode: int
    maxrss_mb: float  # ru_maxrss of the process, from wait4
    wall_s: float
    cpu_s: float  # user + system CPU seconds of the process (and of the children it reaped)
    load_before: float
    load_after: float
    others_share: float


def run_process(argv: Sequence[str], *, env: dict | None = None, timeout: float | None = None,
                stdout: int | None = None) -> ProcessRun:
    """Run ``argv`` from the repository root and measure it (wall time, CPU, peak RSS, others' CPU)."""
    load_before = os.getloadavg()[0]
    ticks0 = _cpu_ticks()
    start = time.perf_counter()
    proc = subprocess.Popen(list(argv), cwd=ROOT, env=env, stdout=stdout)
    deadline = None if timeout is None else start + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if deadline is not None and time.perf_counter() > deadline:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.2)
    proc.returncode = os.waitstatus_to_exitcode(status)  # Popen must not wait on a reaped child
    wall = time.perf_counter() - start
    ticks1 = _cpu_ticks()
    # busy CPU time of the whole machine minus the process's own
    hz = os.sysconf("SC_CLK_TCK")
    machine_busy = ((ticks1[0] - ticks0[0]) - (ticks1[1] - ticks0[1])) / hz
    cpu_s = usage.ru_utime + usage.ru_stime
    others = max(0.0, machine_busy - cpu_s) / (wall * (os.cpu_count() or 1))
    return ProcessRun(proc.returncode, usage.ru_maxrss / 1024, wall, cpu_s, load_before, os.getloadavg()[0], others)


def run_child(module: str, spec: dict, *, timeout: float | None = None) -> ChildRun:
    """Run ``python -m module --child SPEC_JSON --result FILE`` in a fresh process; collect its JSON."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="lipsync-bench-") as tmp:
        result_path = Path(tmp) / "result.json"
        argv = [sys.executable, "-m", module, "--child", json.dumps(spec), "--result", str(result_path)]
        env = dict(os.environ, LIPSYNC_CACHE_DIR=str(Path(tmp) / "cache"))
        run = run_process(argv, env=env, timeout=timeout)
        if run.returncode != 0 or not result_path.is_file():
            result = {"error": f"child exited with status {run.returncode} (see its output above)"}
        else:
            result = json.loads(result_path.read_text())
    return ChildRun(result=result, maxrss_mb=run.maxrss_mb, wall_s=run.wall_s, cpu_s=run.cpu_s,
                    load_before=run.load_before, load_after=run.load_after, others_share=run.others_share)


def dump_runs(path: Path, runs: Sequence[tuple[str, ChildRun]]) -> None:
    """Every run's figures as one JSON list (for filling in benchmarks/README.md)."""
    rows = [{"run": label, **{k: v for k, v in asdict(run).items() if k != "result"}, **run.result}
            for label, run in runs]
    Path(path).write_text(json.dumps(rows, indent=1))


def write_result(path: str, result: dict) -> None:
    Path(path).write_text(json.dumps(result, indent=1))


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A plain fixed-width table (also valid Markdown)."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    print("\n".join(lines))


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if value != value:
            return "-"
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"
    return "-" if value is None else str(value)


def group_runs(runs: Sequence[tuple[str, ChildRun]]) -> dict[tuple[str, int], list[ChildRun]]:
    """Successful runs by (preset, clip seconds); several when ``--repeat`` was given."""
    groups: dict[tuple[str, int], list[ChildRun]] = {}
    for _, run in runs:
        if "error" not in run.result:
            groups.setdefault((run.result["mode"], run.result["seconds"]), []).append(run)
    return groups


def verdict(value: float, limit: float) -> str:
    return "ok" if value <= limit else "OVER"


def machine_note() -> str:
    cores = os.cpu_count()
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    import torch

    return f"{cores} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), load average {load}"


def add_common_arguments(parser: argparse.ArgumentParser, what: str, seconds: Sequence[int] = (10, 60)) -> None:
    """The options both benchmarks take (``what`` names the code under test in the help)."""
    parser.add_argument("--seconds", type=int, nargs="+", default=list(seconds),
                        help=f"clip lengths (default {' '.join(map(str, seconds))})")
    parser.add_argument("--no-plant", action="store_true",
                        help="do not plant face boxes: with random weights no face is found")
    parser.add_argument("--random-scores", action="store_true",
                        help="leave the detectors' face scores as the random weights give them (post-processing "
                             "then handles tens of thousands of candidates per frame)")
    parser.add_argument("--weights", type=Path, help="folder of generated checkpoints (made if missing)")
    parser.add_argument("--clips", type=Path, default=DEFAULT_CACHE / "clips", help="where clips are kept")
    parser.add_argument("--json", type=Path, help="also write every run's figures here")
    parser.add_argument("--wait-quiet", type=float, default=600, metavar="S",
                        help="before each run, wait up to S seconds for other work to stop (default 600; 0: no)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each setting (default 1)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds allowed per run")
    parser.add_argument("--progress", action="store_true", help=f"show the {what}'s progress bars")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default=None,
                        help="the options' precision (default: the options' own default)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)


def child_spec(args: argparse.Namespace, seconds: int, clip: Path, boxes: Path, weights: Path, mode: str) -> dict:
    """What a benchmark's child process is told about one run (the keys every benchmark's child reads)."""
    return {"seconds": seconds, "clip": str(clip), "boxes": str(boxes), "weights": str(weights), "mode": mode,
            "plant": not args.no_plant, "random_scores": args.random_scores, "progress": args.progress,
            "precision": args.precision}


def run_labelled(label: str, module: str, spec: dict, args: argparse.Namespace) -> ChildRun:
    """One run of ``module``'s child in a fresh process, after waiting for a quiet machine (``--wait-quiet``)."""
    if args.wait_quiet > 0:
        wait_for_quiet(args.wait_quiet)
    print(f"running {label} ...", file=sys.stderr, flush=True)
    run = run_child(module, spec, timeout=args.timeout)
    print(f"  {label}: {json.dumps(run.result)[:300]}", file=sys.stderr, flush=True)
    return run


def run_all(module: str, args: argparse.Namespace, modes: Sequence[str], extra_spec: dict,
            report: Callable[[list[tuple[str, ChildRun]]], None]) -> None:
    """Run every (clip length, mode, repeat) of ``module`` in its own child process, then report.

    Each child gets a spec with the clip, its planted boxes, the weights, the mode and ``extra_spec``.
    """
    if not args.progress:
        os.environ["TQDM_DISABLE"] = "1"
    weights = ensure_weights(args.weights)
    runs: list[tuple[str, ChildRun]] = []
    print(f"machine: {machine_note()}", flush=True)
    for seconds in args.seconds:
        clip, boxes = ensure_clip(seconds, args.clips)
        for mode, k in ((m, k) for m in modes for k in range(args.repeat)):
            label = f"{seconds} s {mode}" + (f" #{k + 1}" if args.repeat > 1 else "")
            spec = {**child_spec(args, seconds, clip, boxes, weights, mode), **extra_spec}
            runs.append((label, run_labelled(label, module, spec, args)))
    print()
    report(runs)
    print(f"\nmachine after: {machine_note()}")
    if args.json:
        dump_runs(args.json, runs)
