"""The batch commands on a real local Ray (2 CPUs, no dashboard), over short generated clips.

One Ray for the module; each run starts its own workers (which load the models) and ends them.
Covered: a list with a corrupt file, a mute one and a reference; numbers equal to the single-video
command's; re-runs that skip what is done; a worker process killed mid-task (retried, or failed on
its own with --retries 0); a video where the detector finds no face; an interrupted driver resumed;
the lip-sync batch with its outputs. The rules themselves (keys, journal, filters) are unit-tested
in tests/test_batchrun.py without Ray.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import ray

from batch.journal import journal_path, read_table
from media.io import VideoWriter, load_audio
from tests.conftest import make_face_clip, speak

REPO = Path(__file__).resolve().parents[1]
SENTENCES = ("Hello there, this is a test.", "One two three four five.", "The quick brown fox jumps.",
             "Lip sync for everyone.", "Scores for a whole data set.", "This one is the real video.")


def descendants(root: int) -> set[int]:
    """Process ids under ``root`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    out, stack = set(), [root]
    while stack:
        for child in children.get(stack.pop(), []):
            out.add(child)
            stack.append(child)
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def gcs_address():
    """A local Ray for the module; afterwards every process it started must be gone."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    started = descendants(os.getpid())
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
    deadline = time.monotonic() + 30
    while any(alive(p) for p in started) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = [p for p in started if alive(p)]
    assert not left, f"Ray processes left behind: {left}"


@pytest.fixture(scope="module")
def clips(tmp_path_factory, face_image_bgr) -> dict[str, Path]:
    """Six short speaking clips (0.8-1.3 s), a corrupt file, a mute clip and a clip without a face."""
    folder = tmp_path_factory.mktemp("batch-clips")
    out: dict[str, Path] = {}
    for i, text in enumerate(SENTENCES):
        wav = speak(text, folder / f"speech{i}.wav")
        out[f"clip{i}"] = make_face_clip(folder / f"clip{i}.mp4", face_image_bgr, wav, seconds=0.8 + 0.1 * i)
        out[f"speech{i}"] = wav
    out["short speech"] = speak("Hello.", folder / "short.wav")  # for lip sync: few frames to make
    out["corrupt"] = folder / "corrupt.mp4"
    out["corrupt"].write_bytes(b"\x00\x00\x00\x18ftypisom" + bytes(range(256)) * 8)
    out["mute"] = make_face_clip(folder / "mute.mp4", face_image_bgr, None, seconds=0.8)
    audio, rate = load_audio(out["speech0"], sample_rate=None, mono=False)
    out["noface"] = folder / "noface.mp4"
    with VideoWriter(out["noface"], 320, 240, Fraction(25), audio=audio, audio_rate=rate) as writer:
        for i in range(30):
            writer.write(np.full((240, 320, 3), 100 + i, np.uint8))
    return out


def write_list(path: Path, rows: list[tuple[Path, Path | None]]) -> Path:
    """A CSV list with a header, paths relative to the list's folder where they can be."""
    def rel(p: Path | None) -> str:
        return "" if p is None else os.path.relpath(p, path.parent)

    path.write_text("video,reference\n" + "".join(f"{rel(v)},{rel(r)}\n" for v, r in rows))
    return path


@pytest.fixture(scope="module")
def dataset(clips, tmp_path_factory) -> Path:
    """clip0..clip4, the corrupt and the mute file as videos; clip5 is the reference of clip0 and clip1."""
    rows = [(clips["clip0"], clips["clip5"]), (clips["clip1"], clips["clip5"])]
    rows += [(clips[f"clip{i}"], None) for i in range(2, 5)] + [(clips["corrupt"], None), (clips["mute"], None)]
    return write_list(tmp_path_factory.mktemp("lists") / "set.csv", rows)


def single_cli(*args: str, weights_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "syncnet", *args, "--weights-dir", str(weights_dir), "-q"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def cli_scores(clips, weights_dir) -> dict[str, dict]:
    """The single-video command's --json records of the six clips, by path."""
    paths = [str(clips[f"clip{i}"]) for i in range(6)]
    proc = single_cli(*paths, "--mode", "whole-frame", "--json", weights_dir=weights_dir)
    assert proc.returncode == 0, proc.stderr
    return {r["path"]: r for r in json.loads(proc.stdout)}


def score(*args: str, weights_dir: Path) -> int:
    from syncnet.__main__ import main

    return main(["batch", *args, "--mode", "whole-frame", "--weights-dir", str(weights_dir), "-q"])


def by_path(rows: list[dict]) -> dict[str, dict]:
    out = {}
    for row in rows:
        assert row["path"] not in out or row["role"] != out[row["path"]]["role"], f"{row['path']} counted twice"
        out[row["path"]] = row
    return out


def assert_same_scores(row: dict, cli: dict) -> None:
    """The batch row against the single command's record: same windows and offset, same numbers (float32
    rounding aside: the worker may use another thread count)."""
    track = cli["tracks"][0]
    assert int(row["windows"]) == track["n_windows"] and int(row["offset"]) == track["offset"]
    assert float(row["lse_d"]) == pytest.approx(track["lse_d"], rel=1e-6)
    assert float(row["lse_c"]) == pytest.approx(track["lse_c"], rel=1e-6)
    assert float(row["video_lse_d"]) == pytest.approx(cli["lse_d"], rel=1e-6)


def journal_keys(results: Path) -> list[str]:
    return [json.loads(line)["key"] for line in journal_path(results).read_text().splitlines()]


def test_scores_a_list_like_the_single_command(gcs_address, dataset, clips, cli_scores, weights_dir, tmp_path,
                                              capsys):
    out = tmp_path / "results.parquet"
    status = score(str(dataset), "--out", str(out), "--keep", "lse_c >= 5 and abs(offset) <= 15",
                   weights_dir=weights_dir)
    assert status == 1  # finished, with failures in the table
    rows = by_path(read_table(out))
    assert len(rows) == 8 and len(journal_keys(out)) == 8  # 7 videos + the shared reference, once
    for i in range(6):
        row = rows[str(clips[f"clip{i}"])]
        assert row["status"] == "ok" and row["error"] is None and row["tracks"] == 1
        assert_same_scores(row, cli_scores[str(clips[f"clip{i}"])])
    assert rows[str(clips["clip5"])]["role"] == "reference"
    assert rows[str(clips["clip0"])]["reference"] == str(clips["clip5"])
    assert rows[str(clips["corrupt"])]["status"] == "failed"
    assert "corrupt.mp4 is not a video" in rows[str(clips["corrupt"])]["error"]
    assert "mute.mp4 has no audio track" in rows[str(clips["mute"])]["error"]
    assert json.loads(rows[str(clips["clip0"])]["options"])["options"]["mode"] == "whole-frame"
    assert json.loads(rows[str(clips["clip0"])]["versions"])["ray"] == ray.__version__

    summary = json.loads(out.with_name("results.summary.json").read_text())
    videos = [r for r in rows.values() if r["role"] == "video" and r["status"] == "ok"]
    assert summary["sets"]["videos"]["entries"] == 7
    assert (summary["sets"]["videos"]["scored"], summary["sets"]["videos"]["failed"]) == (5, 2)
    for name in ("lse_d", "lse_c"):
        values = [r[f"video_{name}"] for r in videos]
        assert summary["sets"]["videos"][name]["mean"] == pytest.approx(statistics.fmean(values))
        assert summary["sets"]["videos"][name]["median"] == pytest.approx(statistics.median(values))
    assert summary["sets"]["references"]["scored"] == 1
    passed = sorted(r["path"] for r in videos if r["video_lse_c"] >= 5 and abs(r["video_offset"]) <= 15)
    keep = out.with_name("results.keep.txt").read_text().splitlines()
    assert sorted(keep) == passed and summary["keep"]["kept"] == len(passed)
    printed = capsys.readouterr()
    assert "| videos     | 7       | 5      | 2      |" in printed.out
    assert "8 run now (6 scored, 2 failed), 0 done before" in printed.err

    # the same command again: nothing runs, nothing is counted twice
    assert score(str(dataset), "--out", str(out), weights_dir=weights_dir) == 1
    assert len(journal_keys(out)) == 8 and by_path(read_table(out)).keys() == rows.keys()
    assert "0 run now (0 scored, 0 failed), 8 done before" in capsys.readouterr().err


class Killer(threading.Thread):
    """SIGKILLs ``count`` worker processes of this test's Ray while they run a task."""

    def __init__(self, count: int = 1) -> None:
        super().__init__(daemon=True)
        self.count = count
        self.killed: list[int] = []
        self.done = threading.Event()

    @staticmethod
    def running_a_task(pid: int) -> bool:
        try:  # Ray titles a worker process "ray::<Class>.<method>" while it runs that method
            return Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::_Actor.run")
        except OSError:
            return False

    def run(self) -> None:
        while len(self.killed) < self.count and not self.done.is_set():
            for pid in descendants(os.getpid()):
                if pid not in self.killed and self.running_a_task(pid):
                    time.sleep(0.2)  # into the task
                    if self.running_a_task(pid):
                        os.kill(pid, signal.SIGKILL)
                        self.killed.append(pid)
                    break
            time.sleep(0.02)

    def __enter__(self) -> Killer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.join()


def test_killed_workers_fail_their_task_alone_or_are_retried(gcs_address, clips, cli_scores, weights_dir,
                                                              tmp_path):
    listing = write_list(tmp_path / "good.csv", [(clips[f"clip{i}"], None) for i in range(3)])
    out = tmp_path / "r.csv"
    # without retries the killed worker's video fails, with the reason; the others go on
    with Killer() as killer:
        status = score(str(listing), "--out", str(out), "--retries", "0", weights_dir=weights_dir)
    assert len(killer.killed) == 1 and status == 1
    rows = read_table(out)
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(rows) == 3 and len(failed) == 1
    assert "the worker process died while processing this file (1 attempt" in failed[0]["error"]
    # run again for it, killing its worker mid-task once more: Ray restarts the worker and retries the task
    with Killer() as killer:
        status = score(str(listing), "--out", str(out), "--retry-failed", weights_dir=weights_dir)
    assert len(killer.killed) == 1 and status == 0
    rows = by_path(read_table(out))
    assert len(rows) == 3 and all(r["status"] == "ok" for r in rows.values())
    assert len(journal_keys(out)) == 4 and len(set(journal_keys(out))) == 3
    redone = rows[failed[0]["path"]]
    assert not redone["worker"].endswith(f":{killer.killed[0]}")
    for i in range(3):
        assert_same_scores(rows[str(clips[f"clip{i}"])], cli_scores[str(clips[f"clip{i}"])])


def test_no_face_is_a_failed_row_with_the_evaluators_message(gcs_address, clips, weights_dir, tmp_path):
    from common.errors import LipSyncError
    from syncnet.__main__ import main
    from syncnet.evaluate import EvalOptions, SyncNetEvaluator

    out = tmp_path / "r.csv"
    listing = write_list(tmp_path / "faces.csv", [(clips["noface"], None), (clips["corrupt"], None)])
    status = main(["batch", str(listing), "--out", str(out), "--min-track", "10", "--num-workers", "1",
                   "--weights-dir", str(weights_dir), "-q"])
    assert status == 1
    rows = by_path(read_table(out))
    evaluator = SyncNetEvaluator(weights_dir, device="cpu")
    for path, kind in ((clips["noface"], "NoFaceError"), (clips["corrupt"], "InputError")):
        with pytest.raises(LipSyncError) as err:
            evaluator.evaluate(path, EvalOptions(min_track=10), progress=False)
        assert type(err.value).__name__ == kind and rows[str(path)]["error"] == str(err.value)
        assert rows[str(path)]["status"] == "failed" and rows[str(path)]["lse_d"] is None


def test_missing_weights_stop_the_run_with_the_message(gcs_address, clips, tmp_path, capsys):
    from syncnet.__main__ import main

    empty = tmp_path / "no-weights"
    empty.mkdir()
    out = tmp_path / "r.csv"
    status = main(["batch", str(clips["clip0"]), "--out", str(out), "--mode", "whole-frame", "--weights-dir",
                   str(empty), "--num-workers", "1", "-q"])
    assert status == 2
    err = capsys.readouterr().err
    assert "error: the batch workers could not load their models: 'syncnet_v2.model' is missing" in err
    assert "Traceback" not in err and journal_path(out).read_text() == ""


def test_an_interrupted_driver_resumes_where_it_stopped(gcs_address, clips, weights_dir, tmp_path):
    listing = write_list(tmp_path / "good.csv", [(clips[f"clip{i}"], None) for i in range(4)])
    out = tmp_path / "r.csv"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    driver = subprocess.Popen(
        [sys.executable, "-m", "syncnet", "batch", str(listing), "--out", str(out), "--address", gcs_address,
         "--num-workers", "1", "--mode", "whole-frame", "--weights-dir", str(weights_dir), "-q"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and driver.poll() is None:
            if journal_path(out).is_file() and journal_path(out).read_text().count("\n") >= 1:
                break
            time.sleep(0.05)
        driver.send_signal(signal.SIGINT)
        stdout, stderr = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 130, stderr
    assert "interrupted: what finished is kept; run the same command again to go on" in stderr
    assert "Traceback" not in stderr
    finished = journal_keys(out)
    assert 1 <= len(finished) < 4
    assert len(read_table(out)) == len(finished)  # the table was written on the way out

    assert score(str(listing), "--out", str(out), weights_dir=weights_dir) == 0
    keys = journal_keys(out)
    assert len(keys) == len(set(keys)) == 4 and keys[:len(finished)] == finished
    assert len(by_path(read_table(out))) == 4


def test_lipsync_batch_makes_each_pair_once(gcs_address, clips, weights_dir, tmp_path, capsys):
    from lipsync.__main__ import main
    from media.io import count_frames

    pairs = tmp_path / "pairs.csv"
    pairs.write_text("face,audio,output\n"
                     f"{clips['clip0']},{clips['short speech']},\n"
                     f"{clips['clip1']},{clips['speech2']},sub/second.mkv\n"
                     f"{clips['corrupt']},{clips['speech0']},\n")
    out_dir = tmp_path / "made"
    args = ["batch", str(pairs), "--out-dir", str(out_dir), "--box", "40", "200", "60", "220",
            "--weights-dir", str(weights_dir), "-q"]
    assert main(args) == 1
    rows = read_table(out_dir / "results.csv")
    assert [Path(r["output"]).relative_to(out_dir).as_posix() for r in rows] == [
        "clip0_short.mp4", "sub/second.mkv", "corrupt_speech0.mp4"]
    assert [r["status"] for r in rows] == ["ok", "ok", "failed"]
    assert "corrupt.mp4 is not a video" in rows[2]["error"] and not Path(rows[2]["output"]).exists()
    for row, speech in zip(rows[:2], (clips["short speech"], clips["speech2"]), strict=False):
        seconds = load_audio(speech, sample_rate=16000)[0].size / 16000
        assert int(row["frames"]) == count_frames(row["output"]) and abs(float(row["duration"]) - seconds) < 0.05
        assert row["frames_without_face"] == "0"
    assert sorted(p.name for p in out_dir.rglob("*") if p.name.startswith(".")) == []  # no partial files
    assert "2 of 3 pairs made (1 failed)" in capsys.readouterr().out

    made = Path(rows[0]["output"])
    before = made.stat().st_mtime_ns
    Path(rows[1]["output"]).unlink()
    assert main(args) == 1
    assert "1 run now (1 made, 0 failed), 2 done before" in capsys.readouterr().err
    assert made.stat().st_mtime_ns == before and Path(rows[1]["output"]).is_file()
    assert len(read_table(out_dir / "results.csv")) == 3
