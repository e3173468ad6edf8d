"""``python -m lipsync batch PAIRS.csv --out-dir DIR``: lip-sync many face/audio pairs on Ray.

PAIRS.csv has a header naming the columns ``face``, ``audio`` and optionally ``output`` (relative
paths: face and audio from the CSV's folder, output from DIR; default output name
``<face stem>_<audio stem>.mp4``). Every pair is lip-synced with the single-run command's options by
workers that load Wav2Lip (and the face detector) once, on the same machinery as the scoring batch
(:mod:`batch.runner`): the results table (default ``DIR/results.csv``) is kept as each pair
finishes, a re-run skips the pairs whose output is made, and a failure is a row with its message.

An output is written under a temporary name and renamed when complete, so a killed worker never
leaves a half-written file under the final name.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batch import runner
from batch.journal import ColumnType, beside
from batch.listing import Entry, read_entries
from common import optspec
from common.cli import add_model_arguments, command_name
from common.errors import InputError, LipSyncError
from lipsync.options import LipSyncOptions

COLUMNS: dict[str, ColumnType] = {
    "face": "str", "audio": "str", "output": "str", "face_sha256": "str", "audio_sha256": "str",
    "frames": "int", "fps": "float", "duration": "float", "width": "int", "height": "int",
    "frames_without_face": "int", "no_face_ranges": "str", "notes": "str",
}
PAIR_COLUMNS = ("face", "audio", "output")
DETECTOR = "s3fd"


@dataclass(frozen=True)
class LipSyncWorkerSpec:
    """How each worker builds its engine (pickled to the workers; calling it builds one)."""

    options: LipSyncOptions
    weights_dir: str | None = None
    device: str | None = None

    def __call__(self) -> LipSyncWorker:
        return LipSyncWorker(self)


class LipSyncWorker:
    """A LipSync engine with its models loaded, making one output per task."""

    def __init__(self, spec: LipSyncWorkerSpec) -> None:
        from common import weights
        from lipsync.pipeline import LipSync

        self.options = spec.options
        self.engine = LipSync(weights_dir=spec.weights_dir, device=spec.device)
        self.engine.generator_for(spec.options)  # load now: once per worker, and a missing file stops the run
        checkpoints = {"generator": weights.resolve(spec.options.checkpoint, weights_dir=spec.weights_dir)}
        if spec.options.box is None:
            self.engine.detector()
            checkpoints["detector"] = weights.resolve(DETECTOR, weights_dir=spec.weights_dir)
        self._versions = runner.software_versions(checkpoints, str(self.engine.device))

    def versions(self) -> dict[str, str]:
        return self._versions

    def run(self, task: runner.Task) -> dict[str, Any]:
        output = Path(task.info["output"])
        partial = output.with_name(f".{output.stem}.partial{output.suffix}")
        try:
            output.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot create the folder {output.parent}: {exc.strerror}") from exc
        try:
            result = self.engine.run(task.inputs["face"], task.inputs["audio"], partial, self.options)
            os.replace(partial, output)
        finally:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
        ranges = result.no_face_ranges
        return {"result": {
            "frames": result.n_frames, "fps": result.fps, "duration": result.duration, "width": result.width,
            "height": result.height, "frames_without_face": sum(b - a + 1 for a, b in ranges),
            "no_face_ranges": ", ".join(f"{a}-{b}" if b > a else str(a) for a, b in ranges),
            "message": result.message, "timings": result.timings}}


class LipSyncJob:
    kind = "lipsync"
    label = "lip sync"
    unit = "pair"
    columns = COLUMNS

    def __init__(self, spec: LipSyncWorkerSpec) -> None:
        self.spec = spec
        # the key's settings: what changes the output (not the device, not the weights folder)
        self.settings = {"options": dataclasses.asdict(spec.options)}

    def make_worker(self) -> Callable[[], LipSyncWorker]:
        return self.spec

    def tasks(self, entries: Sequence[Entry], base: Path, out_dir: Path) -> list[runner.Task]:
        """One task per pair, keyed by both files' contents, the output path and the options."""
        seen: dict[str, tuple[int, tuple[str, str]]] = {}
        out = []
        for entry in entries:
            face, audio = entry.path("face", base), entry.path("audio", base)
            assert face is not None and audio is not None  # required columns
            output = entry.path("output", out_dir) or Path(os.path.abspath(out_dir / f"{face.stem}_{audio.stem}.mp4"))
            pair = (str(face), str(audio))
            first = seen.setdefault(str(output), (entry.number, pair))
            if first[1] != pair:
                raise InputError(f"lines {first[0]} and {entry.number} both write {output}: give each pair its own "
                                 "output in an output column")
            inputs = {"face": str(face), "audio": str(audio)}
            hashes = {role: runner.hash_or_none(path) for role, path in inputs.items()}
            key = runner.task_key(self.kind, inputs, hashes, {**self.settings, "output": str(output)})
            info = {"face_sha256": hashes["face"], "audio_sha256": hashes["audio"], "output": str(output)}
            out.append(runner.Task(key, entry.number, inputs, info))
        return out

    def rows(self, record: Mapping[str, Any]) -> list[dict[str, Any]]:
        info, result = record["info"], record.get("result")
        row = {**record["inputs"], "output": info["output"], "face_sha256": info["face_sha256"],
               "audio_sha256": info["audio_sha256"]}
        if record["status"] == "ok" and result:
            row.update({k: result[k] for k in ("frames", "fps", "duration", "width", "height",
                                               "frames_without_face")},
                       no_face_ranges=result["no_face_ranges"] or None, notes=result["message"] or None)
        return [row]

    def is_done(self, record: Mapping[str, Any]) -> bool:
        """Made, and the output is still there (a deleted output is made again)."""
        return Path(record["info"]["output"]).is_file()


def summarise(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    made = [r["result"] for r in records if r["status"] == "ok" and r.get("result")]
    return {"pairs": len(records), "made": len(made), "failed": len(records) - len(made),
            "frames": sum(m["frames"] for m in made), "duration_s": round(sum(m["duration"] for m in made), 3),
            "frames_without_face": sum(m["frames_without_face"] for m in made)}


def format_summary(s: Mapping[str, Any]) -> str:
    return (f"{s['made']} of {s['pairs']} pairs made ({s['failed']} failed): {s['frames']} frames, "
            f"{s['duration_s']:.1f} s of video, {s['frames_without_face']} frames without a face left unchanged")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"{command_name('lipsync')} batch", description=(
        "Lip-sync every face/audio pair of a CSV on Ray, with the options of the single-run command. Results "
        "are kept as each pair finishes; the same command resumes an interrupted run."))
    p.add_argument("pairs", type=Path, metavar="PAIRS.csv",
                   help="CSV with a header: face, audio and optionally output (relative paths: face and audio "
                        "from the CSV's folder, output from --out-dir)")
    p.add_argument("--out-dir", type=Path, required=True, metavar="DIR", help="where the outputs go")
    p.add_argument("--out", type=Path, metavar="RESULTS",
                   help="results table, .csv or .parquet (default DIR/results.csv); the journal and summary go "
                        "beside it")
    optspec.add_arguments(p.add_argument_group("lip-sync options"), LipSyncOptions)
    add_model_arguments(p)
    runner.add_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    results = args.out or args.out_dir / "results.csv"
    try:
        options = optspec.from_namespace(LipSyncOptions, args)
        resources = runner.resources_from(args)
        entries, base = read_entries(args.pairs, PAIR_COLUMNS, required=2, header=True)
        try:
            args.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot create {args.out_dir}: {exc.strerror}") from exc
        job = LipSyncJob(LipSyncWorkerSpec(options, str(args.weights_dir) if args.weights_dir else None,
                                           args.device))
        tasks = job.tasks(entries, base, args.out_dir)
        outcome = runner.run(job, tasks, results, resources, retry_failed=args.retry_failed,
                               progress=not args.quiet)
        summary = summarise(outcome.records)
        runner.write_json(beside(results, "summary.json"), {
            "results": str(results), "out_dir": str(args.out_dir), "interrupted": outcome.interrupted, **summary,
            "options": job.settings, "versions": runner.last_versions(outcome.records)})
    except LipSyncError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    runner.report(outcome, results, "made")
    print(format_summary(summary))
    return runner.exit_status(outcome)
