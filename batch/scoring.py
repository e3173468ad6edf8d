"""``python -m syncnet batch INPUT --out RESULTS``: LSE-D / LSE-C of every video of a dataset, on Ray.

INPUT is a folder, a glob or a CSV/TXT list (see :mod:`batch.listing`) with a ``video`` column and
optionally a ``reference`` one (the real video a generated one was made from: scored too, and summed
up as its own set, as papers put "real videos" beside each method). Every video is scored with the
single-video command's options by workers that load SyncNet (and the face detector) once.

The table has one row per video and face track (a failed video: one row with its error), written
as the run goes (see :mod:`batch.journal`); a re-run with the same ``--out`` skips what is done.
Beside it: ``RESULTS.summary.json`` (mean and median LSE-D / LSE-C per set, counts, options) and,
with ``--keep``, ``RESULTS.keep.txt``: the videos that pass a filter such as
``"lse_c >= 3 and abs(offset) <= 6"``, one path per line (LatentSync filters its training data so).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batch import runner
from batch.expr import compile_filter
from batch.journal import ColumnType, beside
from batch.listing import read_entries
from common import optspec
from common.cli import add_model_arguments, command_name
from common.errors import InputError, LipSyncError
from syncnet.options import CHECKPOINTS, EvalOptions

COLUMNS: dict[str, ColumnType] = {
    "path": "str", "role": "str", "reference": "str", "sha256": "str",
    "track": "int", "first_frame": "int", "last_frame": "int", "frames": "int", "windows": "int",
    "lse_d": "float", "lse_c": "float", "offset": "int",
    "video_lse_d": "float", "video_lse_c": "float", "video_offset": "float", "video_frames": "int",
    "tracks": "int", "source_fps": "float", "notes": "str",
}
# what --keep can test, per video: the video's means over its tracks, and its size
FILTER_COLUMNS = ("lse_d", "lse_c", "offset", "frames", "tracks", "windows", "source_fps")
ROLES = ("video", "reference")


@dataclass(frozen=True)
class ScoreWorkerSpec:
    """How each worker builds its evaluator (pickled to the workers; calling it builds one)."""

    options: EvalOptions
    weights_dir: str | None = None
    device: str | None = None
    syncnet: str = "syncnet_v2"
    detector: str = "sfd_face"

    def __call__(self) -> ScoreWorker:
        return ScoreWorker(self)


class ScoreWorker:
    """A SyncNet evaluator with its models loaded, scoring one video per task."""

    def __init__(self, spec: ScoreWorkerSpec) -> None:
        from common import weights
        from syncnet.evaluate import SyncNetEvaluator

        self.options = spec.options
        self.evaluator = SyncNetEvaluator(spec.weights_dir, spec.device, syncnet=spec.syncnet, detector=spec.detector)
        self.evaluator.syncnet  # noqa: B018 - load now: once per worker, and a missing file stops the run
        checkpoints = {"syncnet": weights.resolve(spec.syncnet, weights_dir=spec.weights_dir)}
        if spec.options.mode == "tracks":
            self.evaluator.detector  # noqa: B018
            checkpoints["detector"] = weights.resolve(spec.detector, weights_dir=spec.weights_dir)
        self._versions = runner.software_versions(checkpoints, str(self.evaluator.device))

    def versions(self) -> dict[str, str]:
        return self._versions

    def run(self, task: runner.Task) -> dict[str, Any]:
        result = self.evaluator.evaluate(task.inputs["video"], self.options, progress=False)
        tracks = [{"first_frame": t.first_frame, "last_frame": t.last_frame, "n_windows": t.n_windows,
                   "lse_d": t.lse_d, "lse_c": t.lse_c, "offset": t.offset} for t in result.tracks]
        return {"result": {"lse_d": result.lse_d, "lse_c": result.lse_c, "offset": result.offset,
                           "n_frames": result.n_frames, "source_fps": result.source_fps, "tracks": tracks,
                           "messages": result.messages, "timings": result.timings}}


class ScoreJob:
    kind = "score"
    label = "scoring"
    unit = "video"
    columns = COLUMNS

    def __init__(self, spec: ScoreWorkerSpec) -> None:
        self.spec = spec
        # the key's settings: what changes the numbers (not the device, not the weights folder)
        self.settings = {"options": dataclasses.asdict(spec.options), "syncnet": spec.syncnet,
                         "detector": spec.detector if spec.options.mode == "tracks" else None}

    def make_worker(self) -> Callable[[], ScoreWorker]:
        return self.spec

    def tasks(self, entries: Sequence[tuple[int, Path, Path | None]], *, progress: bool = False) -> list[runner.Task]:
        """One task per video and one per distinct reference, keyed by content, role and settings."""
        from tqdm import tqdm

        out = []
        for number, video, reference in tqdm(entries, desc="hashing", unit="video", disable=not progress,
                                             leave=False):
            for role, path in (("video", video), ("reference", reference)):
                if path is None:
                    continue
                digest = runner.hash_or_none(path)
                inputs = {"video": str(path)}
                key = runner.task_key(self.kind, inputs, {"video": digest}, {**self.settings, "role": role})
                info = {"sha256": digest, "role": role,
                        "reference": str(reference) if role == "video" and reference else None}
                out.append(runner.Task(key, number, inputs, info))
        return out

    def rows(self, record: Mapping[str, Any]) -> list[dict[str, Any]]:
        info = record["info"]
        base = {"path": record["inputs"]["video"], "role": info["role"], "reference": info.get("reference"),
                "sha256": info.get("sha256")}
        result = record.get("result")
        if record["status"] != "ok" or not result:
            return [base]
        video = {"video_lse_d": result["lse_d"], "video_lse_c": result["lse_c"], "video_offset": result["offset"],
                 "video_frames": result["n_frames"], "tracks": len(result["tracks"]),
                 "source_fps": result["source_fps"], "notes": " | ".join(result["messages"]) or None}
        return [{**base, **video, "track": i, "first_frame": t["first_frame"], "last_frame": t["last_frame"],
                 "frames": t["last_frame"] - t["first_frame"] + 1, "windows": t["n_windows"], "lse_d": t["lse_d"],
                 "lse_c": t["lse_c"], "offset": t["offset"]}
                for i, t in enumerate(result["tracks"])]

    def is_done(self, record: Mapping[str, Any]) -> bool:
        return True


def filter_values(record: Mapping[str, Any]) -> dict[str, Any]:
    """What --keep sees of a scored video (None everywhere for a failed one)."""
    result = record.get("result") if record["status"] == "ok" else None
    if not result:
        return dict.fromkeys(FILTER_COLUMNS)
    return {"lse_d": result["lse_d"], "lse_c": result["lse_c"], "offset": result["offset"],
            "frames": result["n_frames"], "tracks": len(result["tracks"]),
            "windows": sum(t["n_windows"] for t in result["tracks"]), "source_fps": result["source_fps"]}


def summarise(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per set (videos, references): entries, scored, failed, mean and median LSE-D, LSE-C and offset."""
    sets: dict[str, Any] = {}
    for role in ROLES:
        mine = [r for r in records if r["info"]["role"] == role]
        if role == "reference" and not mine:
            continue
        scored = [r["result"] for r in mine if r["status"] == "ok" and r.get("result")]
        sets[role + "s"] = {
            "entries": len(mine), "scored": len(scored), "failed": len(mine) - len(scored),
            **{name: runner.mean_median([s[name] for s in scored]) for name in ("lse_d", "lse_c", "offset")},
            "abs_offset": runner.mean_median([abs(s["offset"]) for s in scored]),
        }
    return sets


def format_summary(sets: Mapping[str, Any]) -> str:
    """The summary as a Markdown table, the way papers report LSE-D (lower is better) and LSE-C."""
    def pair(stats: Mapping[str, float | None]) -> str:
        return "-" if stats["mean"] is None else f"{stats['mean']:.3f} / {stats['median']:.3f}"

    header = ["set", "entries", "scored", "failed", "LSE-D ↓ mean / median", "LSE-C ↑ mean / median"]
    rows = [[name, str(s["entries"]), str(s["scored"]), str(s["failed"]), pair(s["lse_d"]), pair(s["lse_c"])]
            for name, s in sets.items()]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in [header, *rows]]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"{command_name('syncnet')} batch", description=(
        "Score every video of a dataset (LSE-D, LSE-C, AV offset) on Ray, with the options of the single-video "
        "command. Results are kept as each video finishes; the same command resumes an interrupted run."))
    p.add_argument("input", metavar="INPUT",
                   help="a folder (searched recursively), a glob in quotes, or a .csv/.txt list with a video and "
                        "optionally a reference column (relative paths: from the list's folder)")
    p.add_argument("--out", type=Path, required=True, metavar="RESULTS",
                   help="results table: .parquet (needs pyarrow) or .csv; the journal, summary and keep list go "
                        "beside it")
    p.add_argument("--keep", metavar="EXPR",
                   help='write the videos that pass, e.g. "lse_c >= 3 and abs(offset) <= 6" (columns: '
                        f"{', '.join(FILTER_COLUMNS)}; the video's means over its tracks)")
    p.add_argument("--keep-out", type=Path, metavar="PATH", help="where --keep writes (default RESULTS.keep.txt)")
    optspec.add_arguments(p.add_argument_group("scoring options"), EvalOptions)
    add_model_arguments(p, CHECKPOINTS)
    runner.add_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        options = optspec.from_namespace(EvalOptions, args)
        resources = runner.resources_from(args)
        keep = compile_filter(args.keep, FILTER_COLUMNS) if args.keep else None
        entries, base = read_entries(args.input, ROLES)
        spec = ScoreWorkerSpec(options, str(args.weights_dir) if args.weights_dir else None, args.device,
                               str(args.syncnet), str(args.detector))
        job = ScoreJob(spec)
        listed = [(e.number, e.path("video", base), e.path("reference", base)) for e in entries]
        tasks = job.tasks(listed, progress=not args.quiet)
        outcome = runner.run(job, tasks, args.out, resources, retry_failed=args.retry_failed,
                               progress=not args.quiet)
        sets = summarise(outcome.records)
        summary: dict[str, Any] = {"results": str(args.out), "interrupted": outcome.interrupted, "sets": sets,
                                   "options": job.settings, "versions": runner.last_versions(outcome.records)}
        if keep is not None:
            summary["keep"] = write_keep(outcome.records, keep, args.keep,
                                         args.keep_out or beside(args.out, "keep.txt"))
        runner.write_json(beside(args.out, "summary.json"), summary)
    except LipSyncError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    runner.report(outcome, args.out, "scored")
    print(format_summary(sets))
    if keep is not None:
        print(f"kept {summary['keep']['kept']} of {summary['keep']['scored']} scored videos: {summary['keep']['list']}",
              file=sys.stderr)
    return runner.exit_status(outcome)


def write_keep(records: Sequence[Mapping[str, Any]], keep: Callable[[Mapping[str, Any]], bool], text: str,
               path: Path) -> dict[str, Any]:
    """The paths of the scored videos that pass, one per line; what was kept, for the summary."""
    videos = [r for r in records if r["info"]["role"] == "video" and r["status"] == "ok"]
    kept = [r["inputs"]["video"] for r in videos if keep(filter_values(r))]
    try:
        path.write_text("".join(f"{p}\n" for p in kept), encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot write the keep list {path}: {exc.strerror}") from exc
    return {"filter": text, "list": str(path), "kept": len(kept), "scored": len(videos)}
