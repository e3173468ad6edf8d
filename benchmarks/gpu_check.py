"""One prepared check for a CUDA machine: GPU outputs against CPU fp32, then speed, then one table.

    python -m benchmarks.gpu_check                   # on a machine with CUDA (about 8 minutes on an H200)
    python -m benchmarks.gpu_check --cpu-dry-run     # the same code paths on the CPU, short clips, no claims

Without CUDA (and without --cpu-dry-run) it says so and exits 0, having measured nothing.

(a) Fidelity, GPU in the run's precision (``auto``: bf16 on a GPU that has it) and in fp32, against the
    CPU in fp32 (the published numbers): the generator's uint8 faces (golden inputs and faces from the
    clip), S3FD's boxes on the golden image, sfd_face's heads, SyncNet's embeddings, a whole lip sync
    (fixed box, lossless output) and LSE-D / LSE-C of the example clip. Each is compared with a stated
    tolerance and marked ok / FAIL.
(b) Speed, on 720p 25 fps clips (10 s and 60 s by default) with generated full-size weights and
    planted detections (the random weights find no face; the real networks still run on every frame
    the pipelines hand them): lip sync with the default options and scoring with the reference's
    defaults. Wall seconds, real-time factor (clip seconds per second), frames per second, seconds per
    stage and peak GPU memory.

Needs only the project, torch, numpy, opencv, scipy, PyAV and huggingface_hub: no espeak-ng and no
scikit-image (see benchmarks/make_clip.py), so a bare GPU machine with the wheels carried in runs it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks._common import DEFAULT_CACHE, PlantedDetector, ensure_clip, ensure_weights, plant_evaluator

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "data" / "golden"
EXAMPLE_CLIP = ROOT / "examples" / "face_clip.mp4"
EXAMPLE_BOX = (30, 170, 65, 190)  # top bottom left right of the face in the 256x256 examples

# Tolerances against CPU fp32. 16-bit: about twice what bf16 gave on the CPU (tests/test_precision.py);
# fp32 on the GPU: float32 rounding in other kernels (cuDNN) than the CPU's.
TOL = {
    "generator_mean": {"16": 0.35, "fp32": 0.05},  # grey levels, mean over the faces
    "generator_max": {"16": 2, "fp32": 1},
    "s3fd_iou": {"16": 0.99, "fp32": 0.999},  # worst best-match IoU of the top ten boxes
    "sfd_loc": {"16": 0.015, "fp32": 1e-3},  # max abs difference of the heads
    "sfd_conf": {"16": 0.008, "fp32": 1e-4},
    "syncnet_rel": {"16": 0.015, "fp32": 1e-4},  # relative embedding error
    "frames_mean": {"16": 0.5, "fp32": 0.1},  # whole lip sync, grey levels inside the face box
    "frames_max": {"16": 4, "fp32": 2},
    "lse_rel": {"16": 0.005, "fp32": 5e-4},  # relative LSE-D / LSE-C difference
}


@dataclass
class Check:
    what: str
    precision: str
    value: float
    limit: float
    higher_is_better: bool = False

    @property
    def ok(self) -> bool:
        return self.value >= self.limit if self.higher_is_better else self.value <= self.limit


def _tol(name: str, dtype) -> float:
    import torch

    return TOL[name]["fp32" if dtype == torch.float32 else "16"]


def _label(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def fidelity(device: str, weights: Path, scratch: Path) -> list[Check]:
    """(a): every network and a whole run, GPU against CPU fp32."""
    import cv2
    import torch

    from common import precision
    from common import weights as weight_files
    from face_detection.detector import FaceDetector
    from face_detection.sfd_face import SFDFace
    from face_detection.tracking import iou
    from lipsync.model import generate, load_wav2lip
    from lipsync.options import LipSyncOptions
    from lipsync.pipeline import LipSync
    from media.io import iter_frames
    from syncnet.evaluate import SyncNetEvaluator
    from syncnet.folded import FoldedSyncNet
    from syncnet.model import load_syncnet
    from syncnet.options import EvalOptions

    cpu, fp32 = "cpu", torch.float32
    fast = precision.resolve("auto", device)
    checks: list[Check] = []
    golden = {name: dict(np.load(GOLDEN / f"{name}.npz"))
              for name in ("wav2lip_generator", "s3fd_heads", "sfd_face_net", "syncnet_embeddings")}

    g = golden["wav2lip_generator"]
    clip_faces = [cv2.resize(f[30:170, 65:190], (96, 96)) for _, f in zip(range(2), iter_frames(EXAMPLE_CLIP),
                                                                           strict=False)]
    crops = np.stack([*g["faces_bgr_u8"], *clip_faces])
    mels = np.concatenate([g["mel_input"][:, 0]] * 2)
    reference = generate(load_wav2lip(weights / "wav2lip_gan.pth"), mels, crops).astype(int)
    s3fd_sd = weight_files.load_state_dict(weights / "s3fd.pth")
    sfd_sd = weight_files.load_state_dict(weights / "sfd_face.pth")
    image = np.ascontiguousarray(golden["s3fd_heads"]["image_u8"][..., ::-1])
    boxes_ref = FaceDetector(s3fd_sd, device=cpu).detect([image])[0]
    sfd_in = torch.from_numpy(golden["sfd_face_net"]["net_input"])[None]
    sfd_ref = _sfd_heads(SFDFace, sfd_sd, sfd_in, cpu, fp32)
    e = golden["syncnet_embeddings"]
    lip_in, aud_in = torch.from_numpy(e["lip_input_u8"]).float(), torch.from_numpy(e["audio_input"])
    sync_ref = _embeddings(FoldedSyncNet, load_syncnet, weights, lip_in, aud_in, cpu, fp32)

    for dtype in dict.fromkeys([fast, fp32]):
        name = _label(dtype)
        out = generate(load_wav2lip(weights / "wav2lip_gan.pth", device=device, dtype=dtype), mels, crops)
        diff = np.abs(out.astype(int) - reference)
        checks += [Check("generator faces, mean grey-level difference", name, float(diff.mean()),
                         _tol("generator_mean", dtype)),
                   Check("generator faces, max grey-level difference", name, float(diff.max()),
                         _tol("generator_max", dtype))]
        boxes = FaceDetector(s3fd_sd, device=device, dtype=dtype).detect([image])[0]
        worst = min(max((iou(a[:4], b[:4]) for b in boxes), default=0.0) for a in boxes_ref[:10])
        checks.append(Check("S3FD top-10 boxes, worst IoU", name, float(worst), _tol("s3fd_iou", dtype), True))
        loc, conf = _sfd_heads(SFDFace, sfd_sd, sfd_in, device, dtype)
        checks += [Check("sfd_face loc head, max difference", name, float((loc - sfd_ref[0]).abs().max()),
                         _tol("sfd_loc", dtype)),
                   Check("sfd_face conf head, max difference", name, float((conf - sfd_ref[1]).abs().max()),
                         _tol("sfd_conf", dtype))]
        for label, got, want in zip(("lip", "audio"), _embeddings(FoldedSyncNet, load_syncnet, weights, lip_in,
                                                                  aud_in, device, dtype), sync_ref, strict=True):
            rel = float(((got - want).norm(dim=1) / want.norm(dim=1)).max())
            checks.append(Check(f"SyncNet {label} embeddings, relative error", name, rel, _tol("syncnet_rel", dtype)))

    # a whole run: fixed box, lossless output, compared inside the face box
    speech = ROOT / "examples" / "speech.wav"
    options = {"box": EXAMPLE_BOX, "cache_detections": False}
    LipSync(weights_dir=weights, device=cpu).run(EXAMPLE_CLIP, speech, scratch / "cpu.mkv",
                                                 LipSyncOptions(precision="fp32", **options))
    top, bottom, left, right = EXAMPLE_BOX
    want = np.stack([f[top:bottom + 10, left:right] for f in iter_frames(scratch / "cpu.mkv")]).astype(int)
    evaluator_cpu = SyncNetEvaluator(weights, device=cpu)
    scores_cpu = evaluator_cpu.evaluate(EXAMPLE_CLIP, EvalOptions(mode="whole-frame"), progress=False)
    engine = LipSync(weights_dir=weights, device=device)
    evaluator = SyncNetEvaluator(weights, device=device)
    for dtype, option in dict.fromkeys([(fast, "auto"), (fp32, "fp32")]):
        name = _label(dtype)
        out = scratch / f"{device}_{name}.mkv"
        engine.run(EXAMPLE_CLIP, speech, out, LipSyncOptions(precision=option, **options))
        got = np.stack([f[top:bottom + 10, left:right] for f in iter_frames(out)]).astype(int)
        diff = np.abs(got - want) if got.shape == want.shape else np.full(1, 255)
        checks += [Check("lip sync output frames, mean difference in the face box", name, float(diff.mean()),
                         _tol("frames_mean", dtype)),
                   Check("lip sync output frames, max difference in the face box", name, float(diff.max()),
                         _tol("frames_max", dtype))]
        scores = evaluator.evaluate(EXAMPLE_CLIP, EvalOptions(mode="whole-frame", precision=option), progress=False)
        for label, a, b in (("LSE-D", scores.lse_d, scores_cpu.lse_d), ("LSE-C", scores.lse_c, scores_cpu.lse_c)):
            checks.append(Check(f"{label} of the example clip, relative difference", name,
                                abs(a - b) / max(abs(b), 1e-9), _tol("lse_rel", dtype)))
    return checks


def _sfd_heads(net_cls, sd, x, device, dtype):
    import torch

    net = net_cls()
    net.load_state_dict(sd)
    with torch.inference_mode():
        out = net.eval().to(device, dtype)(x.to(device, dtype))
    return out.loc.float().cpu(), out.conf.float().cpu()


def _embeddings(folded_cls, load, weights, lip, aud, device, dtype):
    import torch

    net = folded_cls(load(weights / "syncnet_v2.model", device=device)).to(dtype)
    with torch.inference_mode():
        return (net.forward_lip(lip.to(device, dtype)).float().cpu(),
                net.forward_aud(aud.to(device, dtype)).float().cpu())


def speed(device: str, weights: Path, clips: Path, seconds: list[int]) -> list[dict]:
    """(b): lip sync (default options) and scoring (reference defaults) of each clip, planted faces."""
    import torch

    from lipsync.options import LipSyncOptions
    from lipsync.pipeline import LipSync
    from syncnet.evaluate import SyncNetEvaluator
    from syncnet.options import EvalOptions

    cuda = device == "cuda"
    rows = []
    engine = LipSync(weights_dir=weights, device=device)
    evaluator = SyncNetEvaluator(weights, device=device)
    options = LipSyncOptions(cache_detections=False)
    dtype = engine.dtype(options)
    engine.generator_for(options)  # models load once, as a Space does at start-up
    for length in seconds:
        clip, boxes = ensure_clip(length, clips)
        # random_scores: the real detectors are used unplanted again below, so no hook goes on their networks
        planted = PlantedDetector(engine.detector(dtype), np.load(boxes), random_scores=True)
        engine.detector = lambda *_, p=planted: p
        with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            result = engine.run(clip, clip, Path(tmp) / "out.mp4", options)
            rows.append(_row("lip sync, default options", length, result.n_frames, time.perf_counter() - start,
                             result.timings, cuda, str(dtype)))
        short = {"min_track": 25} if length < 5 else {}  # the dry run's 2 s clip: shorter tracks than 4 s
        for scoring in (EvalOptions(**short), EvalOptions(precision="auto", **short)):
            sfd_dtype = evaluator_dtype(evaluator, scoring)
            planted_sfd = plant_evaluator(evaluator, sfd_dtype, np.load(boxes), random_scores=True)
            evaluator.syncnet_for(sfd_dtype)
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            scores = evaluator.evaluate(clip, scoring, progress=False)
            rows.append(_row(f"scoring, reference defaults, {scoring.precision}", length, scores.n_frames,
                             time.perf_counter() - start, scores.timings, cuda, str(sfd_dtype)))
            evaluator.detectors[sfd_dtype] = planted_sfd.real
    return rows


def evaluator_dtype(evaluator, options):
    from common import precision

    return precision.resolve(options.precision, evaluator.device)


def _row(what: str, seconds: int, frames: int, wall: float, timings: dict, cuda: bool, dtype: str) -> dict:
    import torch

    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    stages = ", ".join(f"{k} {v:.1f}" for k, v in timings.items() if k != "total")
    return {"what": what, "clip_s": seconds, "frames": frames, "wall_s": wall, "rtf": seconds / wall,
            "fps": frames / wall, "peak_gpu_gb": peak, "dtype": dtype.removeprefix("torch."), "stages": stages}


def report(device: str, checks: list[Check], rows: list[dict], dry_run: bool) -> None:
    import torch

    name = torch.cuda.get_device_name(0) if device == "cuda" else "CPU (dry run: these figures claim nothing)"
    print(f"\n# gpu_check on {name}, torch {torch.__version__}\n")
    print("| check | precision | value | limit | |\n|---|---|---|---|---|")
    for c in checks:
        limit = f">= {c.limit:g}" if c.higher_is_better else f"<= {c.limit:g}"
        print(f"| {c.what} | {c.precision} | {c.value:.4g} | {limit} | {'ok' if c.ok else 'FAIL'} |")
    print("\n| run | clip | frames | wall s | x real time | frames/s | peak GPU GB | dtype | seconds per stage |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['what']} | {r['clip_s']} s | {r['frames']} | {r['wall_s']:.1f} | {r['rtf']:.1f} | {r['fps']:.0f} "
              f"| {r['peak_gpu_gb']:.2f} | {r['dtype']} | {r['stages']} |")
    failed = [c for c in checks if not c.ok]
    print(f"\n{len(checks) - len(failed)} of {len(checks)} fidelity checks within their tolerances"
          + (" (dry run on the CPU)" if dry_run else ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, nargs="+", default=None, help="clip lengths (default 10 60)")
    parser.add_argument("--weights", type=Path, help="folder of generated checkpoints (made if missing)")
    parser.add_argument("--clips", type=Path, default=DEFAULT_CACHE / "clips", help="where clips are kept")
    parser.add_argument("--cpu-dry-run", action="store_true",
                        help="no GPU: run the same code on the CPU with a 2 s clip, to try the script")
    parser.add_argument("--skip-speed", action="store_true", help="only the fidelity checks")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TQDM_DISABLE", "1")
    import torch

    if not torch.cuda.is_available() and not args.cpu_dry_run:
        print("gpu_check: no CUDA device here; nothing was measured (try --cpu-dry-run to exercise the script)")
        return 0
    device = "cuda" if torch.cuda.is_available() and not args.cpu_dry_run else "cpu"
    seconds = args.seconds or ([2] if args.cpu_dry_run else [10, 60])
    weights = ensure_weights(args.weights)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        checks = fidelity(device, weights, Path(scratch))
    print(f"fidelity checks: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    rows = [] if args.skip_speed else speed(device, weights, args.clips, seconds)
    report(device, checks, rows, args.cpu_dry_run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
