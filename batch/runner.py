"""One batch run, whatever the job (scoring videos, lip-syncing pairs): resume, run on Ray, keep, sum up.

A job (``batch.scoring.ScoreJob``, ``batch.lip_sync.LipSyncJob``) says how to build a worker, how to
turn a finished task's record into table rows, and which records count as done. This module does
the rest the same way for both:

1. every task has a **key**: the SHA-256 of its input files' contents and of the job's settings
   (options, checkpoints), so a renamed file is still done and changed options run again;
2. the keys already in the journal are skipped (failed ones too, unless ``--retry-failed``);
3. the rest run on a :class:`batch.cluster.Pool`; each finished task is appended to the journal
   at once, and the table is rewritten from the records every few seconds and at the end;
4. Ctrl-C (or SIGTERM) stops the run cleanly: what finished is kept, and the same command resumes.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import platform
import signal
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

from tqdm import tqdm

from batch.cluster import Pool, Resources, Worker, connected, import_ray, worker_count
from batch.journal import ColumnType, Journal, check_table_path, journal_path, latest, write_table
from common.errors import InputError
from common.hashing import file_sha256

TABLE_EVERY_S = 10.0  # the table is rewritten at most this often during a run (the journal at every task)
# the columns every job's table has, after its own
COMMON_COLUMNS: dict[str, ColumnType] = {
    "status": "str", "error": "str", "seconds": "float", "worker": "str", "finished": "str", "key": "str",
    "options": "str", "versions": "str",
}


@dataclass(frozen=True)
class Task:
    """One unit of work: the files it reads (absolute paths), their hashes, and what the job needs to know."""

    key: str
    number: int  # position in the input (1-based): the table's order
    inputs: dict[str, str]  # role -> path
    info: dict[str, Any] = field(default_factory=dict)  # hashes (None: unreadable), job-specific details

    @property
    def name(self) -> str:
        """The file name of its first input (the video scored, the face lip-synced)."""
        return Path(next(iter(self.inputs.values()))).name


class Job(Protocol):
    kind: str  # "score", "lipsync": part of every key
    label: str  # the progress bar's label
    unit: str  # what one task is, for the progress bar: "video", "pair"
    columns: Mapping[str, ColumnType]  # the job's own table columns, before COMMON_COLUMNS
    settings: dict[str, Any]  # options and checkpoints: part of every key, and the table's options column

    def make_worker(self) -> Callable[[], Worker]: ...

    def rows(self, record: Mapping[str, Any]) -> list[dict[str, Any]]: ...

    def is_done(self, record: Mapping[str, Any]) -> bool: ...


@dataclass
class Outcome:
    """What a run leaves: the latest record of every task of this input, in input order."""

    records: list[dict[str, Any]]
    ran: int  # tasks run now
    ran_failed: int  # of which failed
    skipped: int  # tasks found done in the journal
    interrupted: bool
    duplicates: int  # entries whose key another entry already had (same content, same role)

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["status"] != "ok"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of the Ray run and of resuming, shared by both batch commands."""
    group = parser.add_argument_group("running on Ray")
    group.add_argument("--address", default=None,
                       help="join a running Ray cluster: auto (RAY_ADDRESS, or the one on this machine), "
                            "HOST:PORT, or ray://HOST:PORT (needs ray[client]); default: start Ray on this machine")
    group.add_argument("--num-workers", type=int, default=None,
                       help="workers (each loads the models once); default: as many as the CPUs/GPUs allow")
    group.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs per worker (default 1)")
    group.add_argument("--gpus-per-worker", type=float, default=0.0,
                       help="GPUs per worker; fractions put several workers on one GPU, e.g. 0.25 (default 0)")
    group.add_argument("--retries", type=int, default=2,
                       help="times a task runs again after its worker process died (default 2)")
    group.add_argument("--dashboard", action="store_true",
                       help="start Ray's dashboard with the local Ray (needs ray[default])")
    group.add_argument("--worker-logs", action="store_true", help="show the workers' output here")
    parser.add_argument("--retry-failed", action="store_true",
                        help="run the failed entries of an earlier run again (done ones are always skipped)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def resources_from(args: argparse.Namespace) -> Resources:
    if args.num_workers is not None and args.num_workers < 1:
        raise InputError(f"--num-workers must be at least 1, not {args.num_workers}")
    if args.cpus_per_worker < 0 or args.gpus_per_worker < 0 or args.cpus_per_worker + args.gpus_per_worker <= 0:
        raise InputError("--cpus-per-worker and --gpus-per-worker must not be negative, and not both 0")
    if args.retries < 0:
        raise InputError(f"--retries must be 0 or more, not {args.retries}")
    return Resources(address=args.address, num_workers=args.num_workers, cpus_per_worker=args.cpus_per_worker,
                     gpus_per_worker=args.gpus_per_worker, retries=args.retries, dashboard=args.dashboard,
                     worker_logs=args.worker_logs)


def hash_or_none(path: str | os.PathLike) -> str | None:
    """The file's SHA-256, or None when it cannot be read (its task then fails with the reader's message)."""
    try:
        return file_sha256(path)
    except OSError:
        return None


def task_key(kind: str, inputs: Mapping[str, str], hashes: Mapping[str, str | None],
             settings: Mapping[str, Any]) -> str:
    """The content hashes (the path where a file cannot be read), the job and its settings, hashed."""
    contents = {role: hashes.get(role) or f"unreadable:{path}" for role, path in inputs.items()}
    text = json.dumps({"kind": kind, "inputs": contents, "settings": settings}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def run(job: Job, tasks: Sequence[Task], out: Path, resources: Resources, *, retry_failed: bool = False,
        progress: bool = True) -> Outcome:
    """Run the tasks not yet done, appending each to the journal as it finishes; write the table."""
    check_table_path(out)
    import_ray()  # before anything is written: the batch commands need Ray
    unique: dict[str, Task] = {}
    for task in tasks:
        unique.setdefault(task.key, task)
    order = list(unique)
    with Journal(journal_path(out)) as journal:
        records = latest(journal.read())
        todo = [t for t in unique.values() if not _done(job, records.get(t.key), retry_failed)]
        table = _Table(job, order, records, out)
        interrupted = False
        ran = ran_failed = 0
        try:
            with _sigterm_as_interrupt(), contextlib.ExitStack() as stack:
                if todo:
                    outcomes = stack.enter_context(_outcomes(job, todo, resources))
                    # the bar starts once Ray is up, so its rate and time left are the work's
                    bar = stack.enter_context(tqdm(total=len(order), initial=len(order) - len(todo), unit=job.unit,
                                                   desc=job.label, disable=not progress, dynamic_ncols=True))
                    rerun = {t.key for t in todo}
                    failed = sum(records[k]["status"] != "ok" for k in order if k in records and k not in rerun)
                    for task, outcome in outcomes:
                        record = _record(job, task, outcome)
                        journal.append(record)
                        records[task.key] = record
                        ran += 1
                        ran_failed += record["status"] != "ok"
                        failed += record["status"] != "ok"
                        if failed:
                            bar.set_postfix_str(f"{failed} failed", refresh=False)
                        bar.update()
                        table.write(due=True)
        except KeyboardInterrupt:
            interrupted = True
            # the interrupt may land between a record's append and its entry in records: the journal decides
            records.update(latest(journal.read()))
        finally:
            table.write(due=False)
    kept = [records[k] for k in order if k in records]
    return Outcome(kept, ran, ran_failed, len(order) - len(todo), interrupted, len(tasks) - len(order))


def _done(job: Job, record: Mapping[str, Any] | None, retry_failed: bool) -> bool:
    if record is None:
        return False
    if record["status"] != "ok":
        return not retry_failed
    return job.is_done(record)


@contextlib.contextmanager
def _outcomes(job: Job, todo: list[Task], resources: Resources) -> Iterator[Iterator[tuple[Task, dict[str, Any]]]]:
    """``(task, outcome)`` pairs as the tasks finish on Ray; Ray and the workers are ended on leaving."""
    with connected(resources) as ray:
        pool = Pool(ray, job.make_worker(), resources, worker_count(ray, resources, len(todo)))
        with contextlib.closing(pool.run(todo)) as outcomes:
            yield outcomes


def _record(job: Job, task: Task, outcome: Mapping[str, Any]) -> dict[str, Any]:
    return {"key": task.key, "kind": job.kind, "number": task.number, "name": task.name, "inputs": task.inputs,
            "info": task.info,
            "options": job.settings, "result": None, **outcome,
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}


class _Table:
    """The results table of this input's tasks, rewritten from the records (at most every TABLE_EVERY_S)."""

    def __init__(self, job: Job, order: list[str], records: dict[str, dict[str, Any]], path: Path) -> None:
        self.job, self.order, self.records, self.path = job, order, records, path
        self.columns = {**job.columns, **COMMON_COLUMNS}
        self.last = -math.inf

    def write(self, *, due: bool) -> None:
        if due and time.monotonic() - self.last < TABLE_EVERY_S:
            return
        rows = []
        for key in self.order:
            record = self.records.get(key)
            if record is not None:
                common = {"options": json.dumps(record.get("options"), sort_keys=True),
                          "versions": json.dumps(record.get("versions"), sort_keys=True),
                          **{c: record.get(c) for c in ("status", "error", "seconds", "worker", "finished", "key")}}
                rows += [{**row, **common} for row in self.job.rows(record)]
        write_table(rows, self.columns, self.path)
        self.last = time.monotonic()


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """A scheduler's SIGTERM (end of a job's time) stops the run as Ctrl-C does, so the table gets written."""
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def software_versions(checkpoints: Mapping[str, Path], device: str) -> dict[str, str]:
    """What produced a result (called in the worker): packages, checkpoint digests, device."""
    out = {"python": platform.python_version(), "device": device}
    for name in ("lipsync-space", "torch", "ray", "av", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed" if name != "lipsync-space" else "source checkout"
    out.update({f"{name} sha256": file_sha256(path) for name, path in checkpoints.items()})
    return out


def last_versions(records: Sequence[Mapping[str, Any]]) -> dict[str, str] | None:
    """The software of the most recent finished task (for the summary)."""
    dated = sorted((r for r in records if r.get("versions")), key=lambda r: r["finished"])
    return dated[-1]["versions"] if dated else None


def mean_median(values: Sequence[float]) -> dict[str, float | None]:
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return {"mean": None, "median": None}
    return {"mean": statistics.fmean(finite), "median": statistics.median(finite)}


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """``data`` as indented JSON, replacing ``path`` in one step."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def report(outcome: Outcome, out: Path, what: str) -> None:
    """What the run did, on stderr (the summary table goes to stdout)."""
    parts = [f"{outcome.ran} run now ({outcome.ran - outcome.ran_failed} {what}, {outcome.ran_failed} failed)",
             f"{outcome.skipped} done before"]
    if outcome.duplicates:
        parts.append(f"{outcome.duplicates} duplicate entries (same content) counted once")
    print(f"{', '.join(parts)}; results in {out} (journal {journal_path(out).name})", file=sys.stderr)
    for record in outcome.failed:
        print(f"failed: {record['name']}: {record['error']}", file=sys.stderr)
    if outcome.interrupted:
        print("interrupted: what finished is kept; run the same command again to go on", file=sys.stderr)


def exit_status(outcome: Outcome) -> int:
    """130: interrupted; 1: the run finished but some entries failed (see the table); 0: all done."""
    if outcome.interrupted:
        return 130
    return 1 if outcome.failed else 0
