"""Benchmark the app's lip-sync request through ``gradio_client``: ``/lipsync`` and ``/lipsync_stream``.

Each run is a fresh process that serves the app on localhost and calls it with the real
``gradio_client``, as a user's script does: the face video is a 1280x720 25 fps clip and the speech is
the clip's own sound, so the request lip-syncs, scores the output and scores the input (the Lip sync
tab's scoring presets). Models are loaded before the clock starts (a Space loads them once) and the
score cache is empty, so every request does all three steps.

    python -m benchmarks.bench_app                        # 10 s and 30 s clips, both endpoints
    python -m benchmarks.bench_app --seconds 30 --endpoints lipsync_stream

For ``/lipsync_stream`` it prints when the first pieces reached the client (gradio_client hands over a
snapshot of the stream's playlist for each piece). Detections are planted as in the other benchmarks.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._common import (
    ChildRun,
    PlantedDetector,
    add_common_arguments,
    peak_rss_mb,
    plant_evaluator,
    print_table,
    run_all,
    verdict,
    write_result,
)

ENDPOINTS = ("lipsync", "lipsync_stream")
# Targets: issue 10 (the whole request) and issue 13 (streaming), on a 2-core CPU
TARGET_REQUEST_10S = 60.0  # /lipsync, 10 s 720p, both scorings
TARGET_FIRST_PIECE_30S = 10.0  # /lipsync_stream, 30 s 720p: the first playable piece
TARGET_STREAM_OVERHEAD = 0.10  # /lipsync_stream's whole run against /lipsync's


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _plant(boxes: np.ndarray, random_scores: bool) -> dict:
    """Load the shared models now, with the planted detector in both; returns the planted detectors."""
    import app
    from common import precision
    from lipsync.options import LipSyncOptions
    from service.models import SCORING_ACROSS_CORES
    from syncnet.evaluate import SyncNetEvaluator

    models = app.Models.shared()
    engine = models.engine()
    dtype = engine.dtype(LipSyncOptions())
    engine.generator_for(LipSyncOptions())
    planted = {"lipsync": PlantedDetector(engine.detector(dtype), boxes, random_scores=random_scores)}
    engine.detector = lambda *_: planted["lipsync"]  # the instance attribute shadows the method

    scoring_dtype = precision.resolve(app.LIPSYNC_SCORING["precision"], engine.device)

    evaluator = SyncNetEvaluator(weights_dir=models.weights_dir, device=models.device,
                                 detector_across_cores=SCORING_ACROSS_CORES)
    evaluator.syncnet_for(scoring_dtype)
    planted["scoring"] = plant_evaluator(evaluator, scoring_dtype, boxes, random_scores=random_scores)
    models._evaluator = evaluator
    return planted


def child(spec: dict, result_path: str) -> None:
    """One request, in this (fresh) process: serve the app, call it, write the figures as JSON."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ["LIPSYNC_WEIGHTS_DIR"] = spec["weights"]
    from gradio_client import Client, handle_file

    import app

    clip = Path(spec["clip"])
    start = time.perf_counter()
    planted = _plant(np.load(spec["boxes"]), spec["random_scores"]) if spec["plant"] else {}
    load_s = time.perf_counter() - start
    settings = app.Settings.from_env()
    demo = app.build_demo(settings)
    _, url, _ = app.launch(demo, settings, host="127.0.0.1", port=_free_port(), block=False)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-app-") as downloads:
            client = Client(url, verbose=False, download_files=downloads)
            request = {"face_video": handle_file(str(clip)), "audio": handle_file(str(clip))}
            pieces: list[float] = []
            start = time.perf_counter()
            if spec["mode"] == "lipsync":
                _, _, details = client.predict(**request, api_name="/lipsync")
            else:
                job = client.submit(**request, api_name="/lipsync_stream")
                for update in job:
                    if isinstance(update[0], str) and update[0].endswith(".m3u8"):
                        pieces.append(time.perf_counter() - start)
                details = job.result()[3]
            total = time.perf_counter() - start
    finally:
        demo.close()
    figures = {
        "mode": spec["mode"], "seconds": spec["seconds"], "n_frames": details["n_frames"], "e2e_s": total,
        "load_s": load_s, "pieces_s": pieces, "engine_timings": details["timings"], "peak_rss_mb": peak_rss_mb(),
        "lse_d": details["output"]["lse_d"], "input_lse_d": (details["input"] or {}).get("lse_d"),
        **{f"{name}_{k}": v for name, det in planted.items() for k, v in det.stats().items()},
    }
    write_result(result_path, figures)


def report(runs: list[tuple[str, ChildRun]]) -> None:
    rows = []
    for label, run in runs:
        r = run.result
        if "error" in r:
            rows.append([label, r["error"]] + [""] * 7)
            continue
        pieces = r["pieces_s"]
        lipsync_s = sum(r["engine_timings"].values())
        rows.append([label, r["n_frames"], r["e2e_s"], lipsync_s, r["e2e_s"] - lipsync_s,
                     pieces[0] if pieces else "-", pieces[1] if len(pieces) > 1 else "-", len(pieces),
                     f"{run.maxrss_mb:.0f}", f"{run.others_share:.0%}"])
    print_table(["run", "frames", "request s", "lip sync s", "scoring + rest s", "1st piece s", "2nd piece s",
                 "pieces", "peak RSS MB", "others' CPU"], rows)
    print("\nrequest s: from the call to the last output at the client (gradio_client, localhost). lip sync s: the "
          "engine's stages added up; the rest is scoring the output and the input, and the app. Nth piece s: when the "
          "client got the stream's Nth piece (the page plays a piece once it is in).")
    _targets(runs)


def _targets(runs: list[tuple[str, ChildRun]]) -> None:
    done = {(r.result["mode"], r.result["seconds"]): r.result for _, r in runs if "error" not in r.result}
    print("\ntargets:")
    if ("lipsync", 10) in done:
        value = done["lipsync", 10]["e2e_s"]
        print(f"  /lipsync, 10 s 720p, both scorings: {value:.1f} s (<= {TARGET_REQUEST_10S:g} s) "
              f"{verdict(value, TARGET_REQUEST_10S)}")
    if ("lipsync_stream", 30) in done and done["lipsync_stream", 30]["pieces_s"]:
        value = done["lipsync_stream", 30]["pieces_s"][0]
        print(f"  /lipsync_stream, 30 s 720p, first piece: {value:.1f} s (<= {TARGET_FIRST_PIECE_30S:g} s) "
              f"{verdict(value, TARGET_FIRST_PIECE_30S)}")
    for seconds in sorted({s for _, s in done}):
        if ("lipsync", seconds) in done and ("lipsync_stream", seconds) in done:
            plain, streamed = done["lipsync", seconds]["e2e_s"], done["lipsync_stream", seconds]["e2e_s"]
            limit = plain * (1 + TARGET_STREAM_OVERHEAD)
            print(f"  {seconds} s: /lipsync_stream {streamed:.1f} s against /lipsync {plain:.1f} s "
                  f"({streamed / plain - 1:+.0%}; <= {TARGET_STREAM_OVERHEAD:+.0%}) {verdict(streamed, limit)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoints", nargs="+", choices=ENDPOINTS, default=list(ENDPOINTS))
    add_common_arguments(parser, "app")
    parser.set_defaults(seconds=[10, 30])
    args = parser.parse_args()
    if args.child:
        import json

        child(json.loads(args.child), args.result)
        return
    run_all("benchmarks.bench_app", args, args.endpoints, {}, report)


if __name__ == "__main__":
    main()
