"""The batch machinery without Ray: input listing, the journal and table, filters, keys, resume and
interruption rules (with the workers run in this process), and the two jobs' rows and summaries.

The same code on a real local Ray, with real videos, is in tests/test_batch.py.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from batch import cluster, runner
from batch.expr import compile_filter
from batch.journal import Journal, check_table_path, journal_path, read_table, write_table
from batch.listing import read_entries
from common.errors import DependencyError, InputError, LipSyncError

REPO = Path(__file__).resolve().parents[1]


def touch(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# -- input listing -----------------------------------------------------------------------------------

def test_folder_lists_videos_recursively_sorted_absolute(tmp_path: Path, monkeypatch):
    for name in ("b/two.MP4", "a/one.mkv", "a/notes.txt", "three.webm", "a/deep/four.mov"):
        touch(tmp_path / "data" / name)
    monkeypatch.chdir(tmp_path)
    entries, _ = read_entries("data", ("video", "reference"))
    paths = [e.path("video", Path.cwd()) for e in entries]
    assert [p.relative_to(tmp_path / "data").as_posix() for p in paths] == [
        "a/deep/four.mov", "a/one.mkv", "b/two.MP4", "three.webm"]
    assert all(p.is_absolute() for p in paths) and [e.number for e in entries] == [1, 2, 3, 4]


def test_glob_matches_files(tmp_path: Path, monkeypatch):
    for name in ("x/a.mp4", "x/b.mp4", "x/c.avi"):
        touch(tmp_path / name)
    monkeypatch.chdir(tmp_path)
    entries, base = read_entries("x/*.mp4", ("video",))
    assert [Path(e.values["video"]).name for e in entries] == ["a.mp4", "b.mp4"]
    with pytest.raises(InputError, match="no files match"):
        read_entries("x/*.mov", ("video",))
    with pytest.raises(InputError, match="does not exist"):
        read_entries("nothing-here", ("video",))


def test_csv_with_header_and_relative_paths_from_the_list_folder(tmp_path: Path):
    lists = tmp_path / "lists"
    touch(lists / "set.csv", "video,reference\nclips/a.mp4,real/a.mp4\n\n\"clips/b, with comma.mp4\",\n")
    entries, base = read_entries(lists / "set.csv", ("video", "reference"))
    assert base == lists
    assert [e.number for e in entries] == [2, 4]
    assert entries[0].path("video", base) == lists / "clips/a.mp4"
    assert entries[0].path("reference", base) == lists / "real/a.mp4"
    assert entries[1].path("video", base) == lists / "clips/b, with comma.mp4"
    assert entries[1].path("reference", base) is None


def test_headerless_csv_and_txt_lists(tmp_path: Path):
    touch(tmp_path / "plain.csv", "/data/a.mp4,/data/ref.mp4\n/data/b.mp4\n")
    entries, _ = read_entries(tmp_path / "plain.csv", ("video", "reference"))
    assert [e.values for e in entries] == [{"video": "/data/a.mp4", "reference": "/data/ref.mp4"},
                                           {"video": "/data/b.mp4"}]
    touch(tmp_path / "list.txt", "# my test set\n/data/a b.mp4\t/data/ref.mp4\n\n  /data/c.mp4\n")
    entries, _ = read_entries(tmp_path / "list.txt", ("video", "reference"))
    assert [e.values for e in entries] == [{"video": "/data/a b.mp4", "reference": "/data/ref.mp4"},
                                           {"video": "/data/c.mp4"}]


def test_list_errors_name_the_line_and_the_columns(tmp_path: Path):
    touch(tmp_path / "wide.csv", "a.mp4,b.mp4,c.mp4\n")
    with pytest.raises(InputError, match=r"line 1: 3 columns, expected at most 2"):
        read_entries(tmp_path / "wide.csv", ("video", "reference"))
    touch(tmp_path / "pairs.csv", "face,voice\nf.mp4,a.wav\n")
    with pytest.raises(InputError, match=r"unknown columns \['voice'\].*face, audio required"):
        read_entries(tmp_path / "pairs.csv", ("face", "audio", "output"), required=2, header=True)
    touch(tmp_path / "holes.csv", "face,audio\nf.mp4,\n")
    with pytest.raises(InputError, match="line 2: the audio column is empty"):
        read_entries(tmp_path / "holes.csv", ("face", "audio", "output"), required=2, header=True)
    with pytest.raises(InputError, match="is a folder: give a CSV"):
        read_entries(tmp_path, ("face", "audio", "output"), required=2, header=True)
    touch(tmp_path / "empty.txt", "# nothing\n")
    with pytest.raises(InputError, match="lists no files"):
        read_entries(tmp_path / "empty.txt", ("video",))


# -- journal and table -------------------------------------------------------------------------------

def test_journal_drops_a_torn_last_line_and_appends_after_it(tmp_path: Path):
    path = tmp_path / "r.journal.jsonl"
    with Journal(path) as journal:
        journal.append({"key": "a", "status": "ok"})
        journal.append({"key": "b", "status": "failed"})
    with open(path, "ab") as fh:
        fh.write(b'{"key": "c", "sta')  # a run killed while writing
    with Journal(path) as journal:
        assert [r["key"] for r in journal.read()] == ["a", "b"]
        journal.append({"key": "c", "status": "ok"})
    with Journal(path) as journal:
        assert [r["key"] for r in journal.read()] == ["a", "b", "c"]
    assert path.read_bytes().count(b"\n") == 3


def test_journal_allows_one_writer(tmp_path: Path):
    path = tmp_path / "r.journal.jsonl"
    with Journal(path), pytest.raises(LipSyncError, match="another batch run is writing"):
        Journal(path).open()
    Journal(path).open()  # free again


COLUMNS = {"name": "str", "count": "int", "value": "float"}
ROWS = [{"name": "a, \"quoted\"", "count": 3, "value": 0.1 + 0.2},
        {"name": "b", "count": None, "value": None},
        {"name": None, "count": -1, "value": 1e-300}]


def test_csv_table_round_trips_numbers_exactly(tmp_path: Path):
    path = tmp_path / "r.csv"
    write_table(ROWS, COLUMNS, path)
    back = read_table(path)
    assert [float(r["value"]) if r["value"] else None for r in back] == [0.1 + 0.2, None, 1e-300]
    assert [r["name"] for r in back] == ["a, \"quoted\"", "b", None]
    assert [r["count"] for r in back] == ["3", None, "-1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv"]  # no temporary file left


def test_parquet_table_keeps_types(tmp_path: Path):
    path = tmp_path / "r.parquet"
    write_table(ROWS, COLUMNS, path)
    assert read_table(path) == ROWS
    write_table(ROWS[:1], COLUMNS, path)  # rewritten in place
    assert read_table(path) == ROWS[:1]


def test_csv_needs_no_pyarrow_and_parquet_says_how_to_get_it(tmp_path: Path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow now raises ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    check_table_path(tmp_path / "r.csv")
    write_table(ROWS, COLUMNS, tmp_path / "r.csv")
    with pytest.raises(DependencyError, match=r"pyarrow: pip install '\.\[batch\]'.*or give a \.csv"):
        check_table_path(tmp_path / "r.parquet")


def test_table_path_checks(tmp_path: Path):
    with pytest.raises(InputError, match="must end in .parquet or .csv"):
        check_table_path(tmp_path / "r.xlsx")
    with pytest.raises(InputError, match="does not exist: create it first"):
        check_table_path(tmp_path / "missing" / "r.csv")


# -- filters -----------------------------------------------------------------------------------------

NAMES = ("lse_d", "lse_c", "offset", "frames")


def test_filter_of_the_issue():
    keep = compile_filter("lse_c >= 3 and abs(offset) <= 6", NAMES)
    assert keep({"lse_c": 3.0, "offset": -6}) and keep({"lse_c": 7.5, "offset": 0})
    assert not keep({"lse_c": 2.99, "offset": 0}) and not keep({"lse_c": 5, "offset": 7})
    assert not keep({"lse_c": None, "offset": 0}) and not keep({"lse_c": math.nan, "offset": 0})


def test_filter_arithmetic_chains_and_functions():
    keep = compile_filter("1 < lse_c <= 9 and not (lse_d - lse_c > 2 * 3) or max(frames, 0) / 25 > 100", NAMES)
    assert keep({"lse_c": 5, "lse_d": 8, "frames": 0})
    assert not keep({"lse_c": 0.5, "lse_d": 8, "frames": 0})
    assert not keep({"lse_c": 5, "lse_d": 12, "frames": 0})
    assert keep({"lse_c": 0, "lse_d": 0, "frames": 2501})
    assert not compile_filter("lse_c / frames > 1", NAMES)({"lse_c": 1, "frames": 0})  # no ZeroDivisionError


@pytest.mark.parametrize(("text", "message"), [
    ("lse_c >= 3 and offset.real", "filters do not allow"),
    ("__import__('os').system('true')", "calls __import__"),
    ("open('x')", "calls open"),
    ("lse_c >= 'a'", "filters do not allow"),
    ("lse_e > 1", "names 'lse_e', which is not a column; the columns are frames, lse_c, lse_d, offset"),
    ("lse_c >=", "cannot read the filter"),
    ("[x for x in lse_c]", "filters do not allow"),
    ("lse_c if lse_d else 1", "filters do not allow"),
    ("abs(x=lse_c)", "calls abs"),
])
def test_filter_refuses_what_it_does_not_know(text: str, message: str):
    with pytest.raises(InputError, match=re.escape(message)):
        compile_filter(text, NAMES)


# -- keys --------------------------------------------------------------------------------------------

def test_key_follows_content_and_settings_not_the_path(tmp_path: Path):
    a = touch(tmp_path / "a.mp4", "same bytes")
    b = touch(tmp_path / "renamed.mp4", "same bytes")
    c = touch(tmp_path / "c.mp4", "other bytes")

    def key(path: Path, settings: dict) -> str:
        inputs = {"video": str(path)}
        return runner.task_key("score", inputs, {"video": runner.hash_or_none(path)}, settings)

    assert key(a, {"vshift": 15}) == key(b, {"vshift": 15})
    assert key(a, {"vshift": 15}) != key(c, {"vshift": 15})
    assert key(a, {"vshift": 15}) != key(a, {"vshift": 10})
    missing = tmp_path / "missing.mp4"
    assert runner.hash_or_none(missing) is None
    assert key(missing, {}) != key(tmp_path / "other-missing.mp4", {})


# -- a run, with the workers in this process ---------------------------------------------------------

class CountWorker:
    """Reads a number from a text file: "bad" is the user's error, "bug" an unforeseen one, "stop" Ctrl-C."""

    def __init__(self, factor: int) -> None:
        self.factor = factor

    def versions(self) -> dict[str, str]:
        return {"count-worker": "1"}

    def run(self, task: runner.Task) -> dict[str, Any]:
        text = Path(task.inputs["file"]).read_text()
        if text == "bad":
            raise InputError(f"{Path(task.inputs['file']).name} is bad")
        if text == "bug":
            raise ZeroDivisionError("division by zero")
        if text == "stop":
            raise KeyboardInterrupt
        return {"result": {"value": int(text) * self.factor}}


class CountJob:
    kind = "count"
    label = "counting"
    unit = "file"
    columns = {"file": "str", "value": "int"}

    def __init__(self, factor: int = 1) -> None:
        self.factor = factor
        self.settings = {"factor": factor}
        self.ran: list[str] = []

    def make_worker(self):
        return lambda: CountWorker(self.factor)

    def tasks(self, paths: list[Path]) -> list[runner.Task]:
        out = []
        for i, path in enumerate(paths, 1):
            inputs = {"file": str(path)}
            key = runner.task_key(self.kind, inputs, {"file": runner.hash_or_none(path)}, self.settings)
            out.append(runner.Task(key, i, inputs, {}))
        return out

    def rows(self, record):
        result = record.get("result") or {}
        return [{"file": record["inputs"]["file"], "value": result.get("value")}]

    def is_done(self, record) -> bool:
        return True


@pytest.fixture
def in_process(monkeypatch):
    """Run the tasks with the actor's own code, in this process, in order (no Ray)."""
    ran: list[str] = []

    @contextlib.contextmanager
    def outcomes(job, todo, resources):
        actor = cluster._Actor(job.make_worker())
        assert not actor.problem

        def each():
            for task in todo:
                ran.append(Path(task.inputs["file"]).name)
                yield task, actor.run(task)

        yield each()

    monkeypatch.setattr(runner, "_outcomes", outcomes)
    return ran


def files(folder: Path, contents: dict[str, str]) -> list[Path]:
    return [touch(folder / name, text) for name, text in contents.items()]


def run(job: CountJob, paths: list[Path], out: Path, **kwargs) -> runner.Outcome:
    return runner.run(job, job.tasks(paths), out, cluster.Resources(), progress=False, **kwargs)


def test_run_records_failures_and_resumes_without_counting_twice(tmp_path: Path, in_process: list[str]):
    paths = files(tmp_path / "in", {"1.txt": "1", "2.txt": "bad", "3.txt": "3", "4.txt": "bug", "5.txt": "5"})
    out = tmp_path / "r.csv"
    outcome = run(CountJob(), paths, out)
    assert (outcome.ran, outcome.ran_failed, outcome.skipped, outcome.interrupted) == (5, 2, 0, False)
    assert runner.exit_status(outcome) == 1
    errors = {Path(r["inputs"]["file"]).name: r["error"] for r in outcome.records}
    assert errors == {"1.txt": None, "2.txt": "2.txt is bad", "3.txt": None,
                      "4.txt": "unexpected ZeroDivisionError: division by zero", "5.txt": None}
    table = read_table(out)
    assert [(Path(r["file"]).name, r["value"], r["status"]) for r in table] == [
        ("1.txt", "1", "ok"), ("2.txt", None, "failed"), ("3.txt", "3", "ok"), ("4.txt", None, "failed"),
        ("5.txt", "5", "ok")]
    assert json.loads(table[0]["options"]) == {"factor": 1}
    assert json.loads(table[0]["versions"]) == {"count-worker": "1"}

    in_process.clear()
    again = run(CountJob(), paths, out)
    assert in_process == [] and (again.ran, again.skipped) == (0, 5)  # failures are done too
    assert read_table(out) == table

    (tmp_path / "in" / "2.txt").write_text("2")  # fixed: new content, new key
    in_process.clear()
    fixed = run(CountJob(), paths, out, retry_failed=True)
    assert in_process == ["2.txt", "4.txt"]
    assert [r["value"] for r in read_table(out)] == ["1", "2", "3", None, "5"]  # each file once
    assert fixed.ran == 2 and fixed.ran_failed == 1 and runner.exit_status(fixed) == 1
    assert len(journal_path(out).read_text().splitlines()) == 7  # 5 + 2: the journal only grows


def test_changed_settings_run_again_and_renamed_files_do_not(tmp_path: Path, in_process: list[str]):
    paths = files(tmp_path / "in", {"a.txt": "1", "b.txt": "2"})
    out = tmp_path / "r.parquet"
    run(CountJob(), paths, out)
    renamed = paths[0].rename(tmp_path / "in" / "renamed.txt")
    in_process.clear()
    run(CountJob(), [renamed, paths[1]], out)
    assert in_process == []
    outcome = run(CountJob(factor=10), [renamed, paths[1]], out)
    assert in_process == ["renamed.txt", "b.txt"]
    # the table holds this input under these settings only
    assert [(r["value"], json.loads(r["options"])) for r in read_table(out)] == [(10, {"factor": 10}),
                                                                                 (20, {"factor": 10})]
    assert runner.exit_status(outcome) == 0


def test_duplicate_entries_run_once(tmp_path: Path, in_process: list[str]):
    a = touch(tmp_path / "a.txt", "4")
    copy = touch(tmp_path / "copy.txt", "4")
    outcome = run(CountJob(), [a, a, copy], tmp_path / "r.csv")
    assert in_process == ["a.txt"] and outcome.duplicates == 2 and len(read_table(tmp_path / "r.csv")) == 1


def test_interrupted_run_keeps_what_finished_and_resumes(tmp_path: Path, in_process: list[str]):
    paths = files(tmp_path / "in", {"1.txt": "1", "2.txt": "2", "3.txt": "stop", "4.txt": "4"})
    out = tmp_path / "r.csv"
    outcome = run(CountJob(), paths, out)
    assert outcome.interrupted and runner.exit_status(outcome) == 130
    assert [r["value"] for r in read_table(out)] == ["1", "2"]
    (tmp_path / "in" / "3.txt").write_text("3")
    in_process.clear()
    outcome = run(CountJob(), paths, out)
    assert in_process == ["3.txt", "4.txt"] and not outcome.interrupted
    assert [r["value"] for r in read_table(out)] == ["1", "2", "3", "4"]


def test_an_interrupt_just_after_a_record_is_journaled_still_puts_it_in_the_table(
        tmp_path: Path, in_process: list[str], monkeypatch):
    paths = files(tmp_path / "in", {"1.txt": "1", "2.txt": "2", "3.txt": "3"})
    out = tmp_path / "r.csv"
    append = runner.Journal.append

    def append_then_ctrl_c(self, record):
        append(self, record)
        if Path(record["inputs"]["file"]).name == "2.txt":
            raise KeyboardInterrupt  # on disk, not yet among the run's records

    monkeypatch.setattr(runner.Journal, "append", append_then_ctrl_c)
    outcome = run(CountJob(), paths, out)
    assert outcome.interrupted
    assert [r["value"] for r in read_table(out)] == ["1", "2"]
    assert [Path(r["inputs"]["file"]).name for r in outcome.records] == ["1.txt", "2.txt"]


def test_models_that_cannot_load_stop_the_run(tmp_path: Path):
    def broken():
        raise LipSyncError("'syncnet_v2.model' is missing")

    actor = cluster._Actor(broken)
    assert actor.ready() == {"problem": "'syncnet_v2.model' is missing"}


def test_worker_count_fits_the_cluster():
    class FakeRay:
        def __init__(self, cpus: float, gpus: float = 0) -> None:
            self.total = {"CPU": cpus, "GPU": gpus}

        def cluster_resources(self):
            return self.total

    assert cluster.worker_count(FakeRay(16), cluster.Resources(), 1243) == 16
    assert cluster.worker_count(FakeRay(16), cluster.Resources(cpus_per_worker=3), 1243) == 5
    assert cluster.worker_count(FakeRay(16), cluster.Resources(), 3) == 3
    assert cluster.worker_count(FakeRay(32, 4), cluster.Resources(gpus_per_worker=0.25), 1243) == 16
    assert cluster.worker_count(FakeRay(2), cluster.Resources(num_workers=1), 8) == 1
    with pytest.raises(LipSyncError, match="asks for 1 CPUs and 1 GPUs, but the cluster has 2 CPUs and 0 GPUs"):
        cluster.worker_count(FakeRay(2), cluster.Resources(gpus_per_worker=1), 8)


# -- the scoring job's rows and summary --------------------------------------------------------------

def score_record(path: str, role: str, tracks: list[tuple[float, float, int]] | None, error: str | None = None):
    result = None
    if tracks is not None:
        result = {"lse_d": statistics.fmean(t[0] for t in tracks), "lse_c": statistics.fmean(t[1] for t in tracks),
                  "offset": statistics.fmean(t[2] for t in tracks), "n_frames": 100, "source_fps": 25.0,
                  "messages": ["a note"],
                  "tracks": [{"first_frame": 10 * i, "last_frame": 10 * i + 49, "n_windows": 45, "lse_d": d,
                              "lse_c": c, "offset": o} for i, (d, c, o) in enumerate(tracks)]}
    return {"key": path, "inputs": {"video": path}, "info": {"role": role, "sha256": "ab", "reference": None},
            "status": "ok" if result else "failed", "error": error, "result": result}


def test_score_rows_one_per_track_and_summary_per_video():
    from batch.scoring import ScoreJob, ScoreWorkerSpec, filter_values, format_summary, summarise
    from syncnet.options import EvalOptions

    records = [score_record("/a.mp4", "video", [(7.0, 5.0, 1), (9.0, 3.0, -3)]),
               score_record("/b.mp4", "video", [(6.0, 8.0, 0)]),
               score_record("/c.mp4", "video", None, "no face"),
               score_record("/d.mp4", "video", [(10.0, 1.0, 4)]),
               score_record("/real.mp4", "reference", [(6.5, 7.5, 0)])]
    rows = ScoreJob(ScoreWorkerSpec(EvalOptions())).rows(records[0])
    assert [(r["track"], r["lse_d"], r["video_lse_d"], r["frames"], r["windows"], r["notes"]) for r in rows] == [
        (0, 7.0, 8.0, 50, 45, "a note"), (1, 9.0, 8.0, 50, 45, "a note")]
    assert ScoreJob(ScoreWorkerSpec(EvalOptions())).rows(records[2]) == [
        {"path": "/c.mp4", "role": "video", "reference": None, "sha256": "ab"}]
    sets = summarise(records)
    assert sets["videos"] == {"entries": 4, "scored": 3, "failed": 1,
                              "lse_d": {"mean": 8.0, "median": 8.0}, "lse_c": {"mean": 13 / 3, "median": 4.0},
                              "offset": {"mean": 1.0, "median": 0.0}, "abs_offset": {"mean": 5 / 3, "median": 1.0}}
    assert sets["references"]["scored"] == 1 and sets["references"]["lse_c"] == {"mean": 7.5, "median": 7.5}
    table = format_summary(sets)
    assert "| videos     | 4       | 3      | 1      | 8.000 / 8.000" in table
    assert filter_values(records[0]) == {"lse_d": 8.0, "lse_c": 4.0, "offset": -1.0, "frames": 100, "tracks": 2,
                                         "windows": 90, "source_fps": 25.0}
    assert set(filter_values(records[2]).values()) == {None}


def test_score_tasks_share_a_reference_and_keep_roles_apart(tmp_path: Path):
    from batch.scoring import ScoreJob, ScoreWorkerSpec
    from syncnet.options import EvalOptions

    gen_a, gen_b = touch(tmp_path / "gen_a.mp4", "a"), touch(tmp_path / "gen_b.mp4", "b")
    real = touch(tmp_path / "real.mp4", "r")
    job = ScoreJob(ScoreWorkerSpec(EvalOptions(mode="whole-frame")))
    tasks = job.tasks([(1, gen_a, real), (2, gen_b, real), (3, real, None)])
    roles = [(Path(t.inputs["video"]).name, t.info["role"], t.info["reference"]) for t in tasks]
    assert roles == [("gen_a.mp4", "video", str(real)), ("real.mp4", "reference", None),
                     ("gen_b.mp4", "video", str(real)), ("real.mp4", "reference", None), ("real.mp4", "video", None)]
    keys = [t.key for t in tasks]
    assert keys[1] == keys[3] and len(set(keys)) == 4  # the shared reference is one task; as a video, another
    other = ScoreJob(ScoreWorkerSpec(EvalOptions(mode="whole-frame", vshift=10))).tasks([(1, gen_a, None)])
    assert other[0].key != keys[0]


def test_lipsync_tasks_name_outputs_and_refuse_two_pairs_writing_one_file(tmp_path: Path):
    from batch.lip_sync import LipSyncJob, LipSyncWorkerSpec
    from lipsync.options import LipSyncOptions

    touch(tmp_path / "pairs.csv", "face,audio,output\nf.mp4,a.wav,\nf.mp4,b.wav,sub/named.mkv\n")
    entries, base = read_entries(tmp_path / "pairs.csv", ("face", "audio", "output"), required=2, header=True)
    job = LipSyncJob(LipSyncWorkerSpec(LipSyncOptions()))
    tasks = job.tasks(entries, base, tmp_path / "out")
    assert [t.info["output"] for t in tasks] == [str(tmp_path / "out/f_a.mp4"), str(tmp_path / "out/sub/named.mkv")]
    touch(tmp_path / "clash.csv", "face,audio,output\nf.mp4,a.wav,x.mp4\ng.mp4,a.wav,x.mp4\n")
    entries, base = read_entries(tmp_path / "clash.csv", ("face", "audio", "output"), required=2, header=True)
    with pytest.raises(InputError, match="lines 2 and 3 both write"):
        job.tasks(entries, base, tmp_path / "out")


# -- the commands ------------------------------------------------------------------------------------

def test_batch_without_ray_says_how_to_install_it(tmp_path: Path):
    touch(tmp_path / "clips" / "a.mp4")
    code = ("import sys; sys.modules['ray'] = None; from syncnet.__main__ import main; "
            f"sys.exit(main(['batch', {str(tmp_path / 'clips')!r}, '--out', {str(tmp_path / 'r.csv')!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "the batch command runs on Ray, which is not installed: pip install '.[batch]'" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clips"]  # nothing written


@pytest.mark.parametrize(("package", "command", "options"), [("syncnet", "scoring", "scoring options"),
                                                            ("lipsync", "lip_sync", "lip-sync options")])
def test_batch_help_has_the_single_commands_options(package: str, command: str, options: str):
    import argparse

    single = __import__(f"{package}.__main__", fromlist=["build_parser"]).build_parser()
    batch = __import__(f"batch.{command}", fromlist=["build_parser"]).build_parser()

    def flags(parser: argparse.ArgumentParser, title: str) -> set[str]:
        (group,) = [g for g in parser._action_groups if g.title == title]
        return {f for action in group._group_actions for f in action.option_strings}

    assert flags(single, options) and flags(single, options) == flags(batch, options)
    proc = subprocess.run([sys.executable, "-m", package, "batch", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and f"python -m {package} batch" in proc.stdout and "--num-workers" in proc.stdout


def test_bad_batch_options_exit_2(tmp_path: Path):
    from batch.scoring import main

    touch(tmp_path / "a.mp4")
    assert main([str(tmp_path), "--out", str(tmp_path / "r.xlsx")]) == 2
    assert main([str(tmp_path), "--out", str(tmp_path / "r.csv"), "--keep", "lse_x > 1"]) == 2
    assert main([str(tmp_path), "--out", str(tmp_path / "r.csv"), "--gpus-per-worker", "-1"]) == 2
    assert main([str(tmp_path / "nothing"), "--out", str(tmp_path / "r.csv")]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4"]
