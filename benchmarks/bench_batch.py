"""Benchmark the batch scoring command against plain runs of the single-video command, on this machine.

Scores the same N short clips (LRS2-sized 160x160 face crops with speech, whole-frame mode as the
LRS2 script does) three ways, each in fresh processes, timed from launch to exit:

* ``loop``: ``python -m syncnet CLIP --json`` once per clip, what a shell loop does (N model loads);
* ``one CLI``: ``python -m syncnet CLIP1 ... CLIPN --json``: models loaded once, clips one by one;
* ``batch``: ``python -m syncnet batch LIST --out RESULTS.csv``: a fresh local Ray, its workers.

Prints videos per minute end to end, the start-up (Ray, workers, model loading) apart from the
steady rate, checks that the batch's numbers equal the single command's, and prints the workers'
seconds per stage (the inputs of the cluster estimate in benchmarks/README.md).

    python -m benchmarks.bench_batch                    # 8 clips
    python -m benchmarks.bench_batch --videos 16 --num-workers 2

The generated weights are random: the scores mean nothing, their cost is the real networks'.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks._common import (
    DEFAULT_CACHE,
    busy_fraction,
    ensure_weights,
    machine_note,
    print_table,
    run_process,
    wait_for_quiet,
)

CLIP_SIZE = 160  # LRS2's face crops are 160x160 (the LRS2 script scores them whole-frame)
OVERHEAD_TARGET = 0.10  # on 2 cores the batch command should cost at most 10 % more than a plain run


def make_clips(n: int, folder: Path) -> list[Path]:
    """``n`` distinct clips, each as long as its sentence (LRS2 clips are single sentences), made once."""
    from benchmarks.make_clip import SENTENCES
    from media.io import load_audio
    from tests.conftest import make_face_clip, speak

    folder.mkdir(parents=True, exist_ok=True)
    face = None
    clips = []
    for i in range(n):
        clip = folder / f"clip{i:03d}.mp4"
        if not clip.is_file():
            if face is None:
                from skimage import data

                face = np.ascontiguousarray(data.astronaut()[..., ::-1])
            wav = speak(f"Clip number {i + 1}. {SENTENCES[i % len(SENTENCES)]}", folder / f"clip{i:03d}.wav")
            samples, rate = load_audio(wav, sample_rate=None)
            make_face_clip(clip, face, wav, seconds=samples.shape[-1] / rate, size=(CLIP_SIZE, CLIP_SIZE))
        clips.append(clip)
    return clips


def watch_journal(path: Path, stop: threading.Event, arrivals: list[float], start: float) -> None:
    """Seconds after ``start`` at which each journal line appeared."""
    seen = 0
    while not stop.is_set():
        if path.is_file():
            count = path.read_bytes().count(b"\n")
            arrivals += [time.perf_counter() - start] * (count - seen)
            seen = count
        time.sleep(0.05)


def run_batch(clips: list[Path], weights: Path, workers: int | None, env: dict, tmp: Path) -> tuple:
    listing = tmp / "clips.txt"
    listing.write_text("".join(f"{c}\n" for c in clips))
    out = tmp / "batch.csv"
    argv = [sys.executable, "-m", "syncnet", "batch", str(listing), "--out", str(out), "--mode", "whole-frame",
            "--weights-dir", str(weights), "-q"]
    if workers:
        argv += ["--num-workers", str(workers)]
    arrivals: list[float] = []
    stop = threading.Event()
    watcher = threading.Thread(target=watch_journal, args=(tmp / "batch.journal.jsonl", stop, arrivals,
                                                          time.perf_counter()), daemon=True)
    watcher.start()
    run = run_process(argv, env=env)
    stop.set()
    watcher.join()
    records = [json.loads(line) for line in (tmp / "batch.journal.jsonl").read_text().splitlines()]
    return run, records, arrivals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=8, help="clips (default 8)")
    parser.add_argument("--num-workers", type=int, default=None, help="batch workers (default: one per CPU)")
    parser.add_argument("--weights", type=Path, help="folder of generated checkpoints (made if missing)")
    parser.add_argument("--clips", type=Path, default=DEFAULT_CACHE / "batch-clips", help="where clips are kept")
    parser.add_argument("--wait-quiet", type=float, default=600, metavar="S",
                        help="before each run, wait up to S seconds for other work to stop (default 600; 0: no)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    weights = ensure_weights(args.weights)
    clips = make_clips(args.videos, args.clips)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), TQDM_DISABLE="1")
    print(f"machine: {machine_note()}", flush=True)
    single = [sys.executable, "-m", "syncnet", "--mode", "whole-frame", "--weights-dir", str(weights), "-q", "--json"]
    figures: dict = {"videos": len(clips)}

    before: list[float] = []  # share of the CPUs busy with other work just before each run

    def quiet() -> None:
        before.append(wait_for_quiet(args.wait_quiet) if args.wait_quiet > 0 else busy_fraction())

    with tempfile.TemporaryDirectory(prefix="lipsync-bench-batch-") as tmp:
        quiet()
        print("running loop ...", file=sys.stderr, flush=True)
        loop = [run_process([*single, str(c)], env=env, stdout=subprocess.DEVNULL) for c in clips]
        quiet()
        print("running one CLI ...", file=sys.stderr, flush=True)
        result_file = Path(tmp) / "cli.json"
        with open(result_file, "w") as fh:
            one = run_process([*single, *map(str, clips)], env=env, stdout=fh.fileno())
        one_wall = one.wall_s
        cli = {r["path"]: r for r in json.loads(result_file.read_text())}
        quiet()
        print("running batch ...", file=sys.stderr, flush=True)
        batch, records, arrivals = run_batch(clips, weights, args.num_workers, env, Path(tmp))

    loop_wall = sum(r.wall_s for r in loop)
    cli_work = sum(r["timings"]["total"] for r in cli.values())  # the clips themselves, models loaded
    batch_work = [r["result"]["timings"]["total"] for r in records if r["status"] == "ok"]
    workers = len({r["worker"] for r in records})
    first, last = (arrivals[0], arrivals[-1]) if arrivals else (float("nan"), float("nan"))
    # start-up of the batch: until the first worker began its first clip
    batch_startup = first - records[0]["result"]["timings"]["total"] if records else float("nan")
    steady_batch = (len(arrivals) - 1) / (last - first) * 60 if len(arrivals) > 1 else float("nan")
    n = len(clips)
    # others' CPU during a run is known for the single command (its process tree is all it uses), not for the
    # batch (Ray's workers are not its children); the share busy just before each run is known for all three
    rows = [
        ["loop (one process per clip)", n, loop_wall, n / loop_wall * 60, "-", "-",
         f"{statistics.fmean(r.others_share for r in loop):.0%}", f"{before[0]:.0%}"],
        ["one CLI (models loaded once)", n, one_wall, n / one_wall * 60, one_wall - cli_work, n / cli_work * 60,
         f"{one.others_share:.0%}", f"{before[1]:.0%}"],
        [f"batch ({workers} workers)", n, batch.wall_s, n / batch.wall_s * 60, batch_startup, steady_batch, "-",
         f"{before[2]:.0%}"],
    ]
    print()
    print_table(["run", "videos", "wall s", "videos/min", "start-up s", "steady videos/min", "others' CPU",
                 "busy before"], rows)
    print("\nstart-up: for one CLI, its wall time minus the clips' own time; for the batch, until the first worker "
          "began its first clip (Ray, workers, models). steady: one CLI, clips / their own time; batch, between "
          "the first and the last result.")

    mismatched = [r["inputs"]["video"] for r in records
                  if abs(r["result"]["lse_d"] - cli[r["inputs"]["video"]]["lse_d"]) > 1e-6 * abs(r["result"]["lse_d"])
                  or r["result"]["offset"] != cli[r["inputs"]["video"]]["offset"]]
    print(f"batch numbers equal to the single command's: {'yes' if not mismatched else f'NO: {mismatched}'}")

    frames = [r["result"]["tracks"][0]["n_windows"] + 5 for r in records]
    stages = sorted({k for r in records for k in r["result"]["timings"] if k != "total"})
    print(f"\nper clip in the batch workers (1 CPU each), mean of {len(records)} clips of "
          f"{statistics.fmean(frames):.0f} frames at {CLIP_SIZE}x{CLIP_SIZE}:")
    for stage in [*stages, "total"]:
        per_clip = statistics.fmean(r["result"]["timings"][stage] for r in records)
        per_frame = statistics.fmean(r["result"]["timings"][stage] / f for r, f in zip(records, frames, strict=True))
        print(f"  {stage:<13} {per_clip:6.2f} s per clip, {1000 * per_frame:5.1f} ms per frame")
        figures[f"stage_{stage}_ms_per_frame"] = 1000 * per_frame
    overhead_e2e = batch.wall_s / one_wall - 1
    overhead_steady = (n / cli_work * 60) / steady_batch - 1
    print(f"\nbatch against one CLI: end to end {overhead_e2e:+.0%}, steady {overhead_steady:+.0%} "
          f"(target: within {OVERHEAD_TARGET:.0%} on 2 cores)")
    lip, aud = syncnet_macs()
    print(f"SyncNet multiply-adds per 5-frame window: lip tower {lip / 1e9:.2f} G, audio tower {aud / 1e9:.3f} G")
    print(f"\nmachine after: {machine_note()}")
    costs = stage_costs(clips[0], weights)
    print("one CPU thread, in this process: " + ", ".join(f"{k} {v:.1f}" for k, v in costs.items()))
    figures.update(costs)
    figures.update(loop_wall_s=loop_wall, one_cli_wall_s=one_wall, one_cli_work_s=cli_work, batch_wall_s=batch.wall_s,
                   batch_startup_s=batch_startup, batch_steady_per_min=steady_batch, batch_workers=workers,
                   batch_work_s=sum(batch_work), lip_macs=lip, audio_macs=aud)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


def stage_costs(clip: Path, weights: Path, repeats: int = 3) -> dict[str, float]:
    """Per-frame costs on one CPU thread: the CPU side of a worker (decode at 25 fps, JPEG round trip,
    resize to 224), and SyncNet's lip and audio towers per window (what a GPU would take over)."""
    import cv2
    import torch

    from media.io import VideoSource
    from syncnet.crops import JpegRoundTrip
    from syncnet.folded import FoldedSyncNet
    from syncnet.model import load_syncnet

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    jpeg = JpegRoundTrip()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        crops = [cv2.resize(jpeg(f), (224, 224), interpolation=cv2.INTER_LINEAR)
                 for f in VideoSource(clip).frames(fps=25)]
        best = min(best, (time.perf_counter() - start) / len(crops))
    model = FoldedSyncNet(load_syncnet("syncnet_v2", weights_dir=weights))
    lip = torch.rand(20, 3, 5, 224, 224) * 255
    aud = torch.randn(20, 1, 13, 20)
    timings = {}
    with torch.no_grad():
        for name, fn, x in (("lip", model.forward_lip, lip), ("audio", model.forward_aud, aud)):
            fn(x)
            start = time.perf_counter()
            for _ in range(repeats):
                fn(x)
            timings[name] = (time.perf_counter() - start) / repeats / len(x)
    return {"prep_ms_per_frame": 1000 * best, "lip_ms_per_window": 1000 * timings["lip"],
            "audio_ms_per_window": 1000 * timings["audio"]}


def syncnet_macs() -> tuple[int, int]:
    """Multiply-adds of SyncNet's lip and audio towers for one window, counted from the layers' shapes."""
    import torch

    from syncnet.model import SyncNet

    total = {"n": 0}

    def count(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Conv3d)):
            per_output = module.in_channels // module.groups * int(np.prod(module.kernel_size))
            total["n"] += output.numel() * per_output
        elif isinstance(module, torch.nn.Linear):
            total["n"] += output.numel() * module.in_features

    model = SyncNet().eval()
    for m in model.modules():
        m.register_forward_hook(count)
    with torch.no_grad():
        model.forward_lip(torch.zeros(1, 3, 5, 224, 224))
        lip, total["n"] = total["n"], 0
        model.forward_aud(torch.zeros(1, 1, 13, 20))
    return lip, total["n"]


if __name__ == "__main__":
    main()
