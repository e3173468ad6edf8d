"""The pure parts of the side-by-side benchmark (benchmarks/bench_original.py, benchmarks/original.py):
planted answers, where the generated checkpoints are linked, the load clock, the score hooks and the plan
of runs. None of it needs the originals' checkouts: the runs themselves are the benchmark's job."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

from benchmarks import bench_original, original
from benchmarks._common import HEIGHT, PLANTED_SCORE, WIDTH, ChildRun, draw_index, planted_row, say_background
from face_detection.loading import load_detector

BOXES = np.array([[100.0, 80.0, 300.0, 320.0], [500.0, 200.0, 700.0, 460.0], [40.0, 40.0, 240.0, 280.0]],
                 dtype=np.float32)


def _frame(index: int) -> np.ndarray:
    frame = np.full((HEIGHT, WIDTH, 3), 90, np.uint8)
    draw_index(frame, index)
    return frame


@pytest.mark.parametrize("scale", [1.0, 0.25])
def test_planted_row_is_the_box_of_the_frame_shown_in_its_pixels(scale: float):
    frame = cv2.resize(_frame(1), None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    row = planted_row(frame, BOXES)
    np.testing.assert_allclose(row[:4], BOXES[1] * scale, rtol=1e-6)
    assert row[4] == pytest.approx(PLANTED_SCORE)


def test_planted_row_is_none_for_a_frame_past_the_boxes():
    assert planted_row(_frame(len(BOXES)), BOXES) is None


def test_detector_calls_count_unreadable_codes():
    calls = original.DetectorCalls(BOXES)
    assert calls.answer(_frame(2)) is not None
    assert calls.answer(_frame(7)) is None
    assert calls.stats()["unreadable_codes"] == 1


def _weights(tmp_path: Path) -> Path:
    weights = tmp_path / "weights"
    weights.mkdir()
    for name in ("syncnet_v2.model", "sfd_face.pth"):
        (weights / name).write_bytes(name.encode())
    return weights


def test_link_checkpoints_links_where_the_original_reads_and_again_without_harm(tmp_path: Path):
    weights, checkout = _weights(tmp_path), tmp_path / "checkout"
    for _ in range(2):
        original.link_checkpoints(checkout, weights, original.SYNCNET_CHECKPOINTS)
    for relative, name in original.SYNCNET_CHECKPOINTS.items():
        target = checkout / relative
        assert target.is_symlink() and target.resolve() == (weights / name).resolve()


def test_link_checkpoints_replaces_a_stale_link(tmp_path: Path):
    weights, checkout = _weights(tmp_path), tmp_path / "checkout"
    elsewhere = tmp_path / "old.model"
    elsewhere.write_bytes(b"old")
    target = checkout / "data" / "syncnet_v2.model"
    target.parent.mkdir(parents=True)
    target.symlink_to(elsewhere)
    original.link_checkpoints(checkout, weights, {"data/syncnet_v2.model": "syncnet_v2.model"})
    assert target.resolve() == (weights / "syncnet_v2.model").resolve()
    assert elsewhere.read_bytes() == b"old"


def test_link_checkpoints_never_overwrites_a_real_file(tmp_path: Path):
    weights, checkout = _weights(tmp_path), tmp_path / "checkout"
    real = checkout / "data" / "syncnet_v2.model"
    real.parent.mkdir(parents=True)
    real.write_bytes(b"downloaded")
    with pytest.raises(original.OriginalError, match="real file"):
        original.link_checkpoints(checkout, weights, original.SYNCNET_CHECKPOINTS)
    assert not real.is_symlink() and real.read_bytes() == b"downloaded"


def test_link_checkpoints_says_which_generated_file_is_missing(tmp_path: Path):
    with pytest.raises(original.OriginalError, match="s3fd.pth is missing"):
        original.link_checkpoints(tmp_path / "checkout", _weights(tmp_path), original.WAV2LIP_CHECKPOINTS)
    assert not (tmp_path / "checkout" / "face_detection").exists()


def test_load_clock_counts_nested_loads_once(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(original, "time", SimpleNamespace(perf_counter=lambda: now[0]))

    class Model:
        def load(self, inner: bool) -> None:
            now[0] += 2.0 if inner else 1.0  # seconds of this call's own work
            if inner:
                self.load(False)

    clock = original.LoadClock()
    clock.wrap(Model, "load")
    Model().load(True)
    assert clock.seconds == 3.0  # the outer call's 3 s, not 3 + the inner call's 1
    Model().load(False)
    assert clock.seconds == 4.0


def test_background_hooks_leave_no_face_candidate():
    """After the hook, no anchor passes the detectors' 0.05 face threshold, whatever the random logits."""
    torch.manual_seed(0)
    outputs = [torch.randn(1, 2, 8, 8) * 30, torch.randn(1, 4, 8, 8), torch.randn(1, 2, 4, 4) * 30,
               torch.randn(1, 4, 4, 4)]
    hooked = say_background(None, None, outputs)
    for k in (0, 2):
        assert torch.softmax(hooked[k], dim=1)[:, 1].max() < 0.05
        torch.testing.assert_close(hooked[k][:, 0], outputs[k][:, 0])
    for k in (1, 3):
        assert hooked[k] is outputs[k]
    probs = say_background(None, None, torch.rand(1, 750, 2))
    assert probs[..., 1].max() == 0 and probs[..., 0].min() == 1


def test_our_planted_detectors_see_background_as_the_originals_do(weights_dir):
    """The same planting on both sides: our networks' random face scores are hooked away too, so our
    post-processing gets no more candidates than the originals' (``--random-scores`` keeps them)."""
    from benchmarks._common import PlantedDetector

    frame = np.random.default_rng(0).integers(0, 255, (96, 128, 3), np.uint8)
    unhooked = load_detector(weights_dir / "s3fd.pth", "s3fd")
    many = sum(len(d) for d in unhooked.detect([frame]))
    assert many > 0  # the random weights' scores pass the 0.05 threshold at many anchors
    PlantedDetector(unhooked, np.zeros((1, 4)), random_scores=True)
    assert sum(len(d) for d in unhooked.detect([frame])) == many
    real = load_detector(weights_dir / "s3fd.pth", "s3fd")
    PlantedDetector(real, np.zeros((1, 4)))
    assert sum(len(d) for d in real.detect([frame])) == 0
    # the evaluator's network (its 0.9 threshold leaves few random candidates anyway): face probability 0
    sfd = load_detector(weights_dir / "sfd_face.pth", "sfd_face")
    x = torch.randn(1, 3, 96, 128)
    assert sfd.net(x).conf[..., 1].max() > 0
    PlantedDetector(sfd, np.zeros((1, 4)))
    assert sfd.net(x).conf[..., 1].max() == 0


def _args(tmp_path: Path, *argv: str):
    return bench_original.build_parser().parse_args(
        ["--original-wav2lip", str(tmp_path), "--original-syncnet", str(tmp_path), "--logs", str(tmp_path / "logs"),
         *argv])


def test_plan_runs_ours_then_the_original_and_both_syncnet_scripts_share_a_folder(tmp_path: Path, monkeypatch):
    made = []

    def fake_clip(seconds: int, folder: Path) -> tuple[Path, Path]:
        made.append(seconds)
        return folder / f"{seconds}.mp4", folder / f"{seconds}.boxes.npy"

    monkeypatch.setattr(bench_original, "ensure_clip", fake_clip)
    args = _args(tmp_path, "--seconds", "2", "5", "--repeat", "2")
    jobs = bench_original.plan(args, ["box", "scoring"], tmp_path / "weights", tmp_path / "work")
    assert made == [2, 5]
    names = [job.name for job in jobs if job.seconds == 2]
    assert names == 2 * ["ours lipsync box", "inference.py --box", "ours scoring reference", "ours scoring fast",
                         "run_pipeline.py", "run_syncnet.py"]
    assert len(jobs) == 2 * len(names)
    originals = [job for job in jobs if job.module == "benchmarks.bench_original"]
    # each clip and repeat has its own working folders and logs
    assert len({(job.name, job.spec["work"]) for job in originals}) == len(originals)
    assert len({job.spec["log"] for job in originals}) == len(originals)
    for k in range(2):
        folders = {job.name: job.spec.get("work") for job in jobs[6 * k:6 * k + 6]}
        assert folders["run_pipeline.py"] == folders["run_syncnet.py"]  # run_syncnet reads run_pipeline's tracks
        assert folders["inference.py --box"] != folders["run_pipeline.py"]
    assert {job.spec["checkout"] for job in originals} == {str(tmp_path)}
    assert all(job.spec["clip"].endswith(f"{job.seconds}.mp4") for job in jobs)
    assert all(job.spec["log"].startswith(str(tmp_path / "logs")) for job in originals)


def test_default_comparisons_follow_the_checkouts_given(tmp_path: Path):
    parser = bench_original.build_parser()
    assert bench_original.comparisons(parser, parser.parse_args(["--original-wav2lip", str(tmp_path)])) == [
        "lipsync", "box"]
    assert bench_original.comparisons(parser, parser.parse_args(["--original-syncnet", str(tmp_path)])) == [
        "scoring"]
    for argv in ([], ["--original-wav2lip", str(tmp_path), "--compare", "scoring"],
                 ["--original-syncnet", str(tmp_path / "missing")]):
        with pytest.raises(SystemExit):
            bench_original.comparisons(parser, parser.parse_args(argv))


def _run(result: dict, wall_s: float, maxrss_mb: float) -> ChildRun:
    return ChildRun(result=result, maxrss_mb=maxrss_mb, wall_s=wall_s, cpu_s=wall_s, load_before=0.0, load_after=0.0,
                    others_share=0.0)


def test_side_by_side_adds_the_two_syncnet_scripts_and_sets_the_scores_beside_ours(tmp_path: Path, capsys):
    common = {"n_frames": 125, "load_s": 1.0, "detector_frames": 0}
    track = {"track": "00000.avi", "offset": 3, "lse_c": 1.5, "lse_d": 7.25, "windows": 120}
    done = [
        (bench_original.Job("ours scoring reference", 5, "", {}),
         _run({**common, "e2e_s": 20.0, "lse_d": 7.5, "lse_c": 1.25, "offset": 3.0, "tracks": []}, 25.0, 1000.0)),
        (bench_original.Job("run_pipeline.py", 5, "", {}), _run({**common, "e2e_s": 60.0, "n_tracks": 1}, 70.0, 500.0)),
        (bench_original.Job("run_syncnet.py", 5, "", {}), _run({**common, "e2e_s": 20.0, "tracks": [track]}, 30.0,
                                                                1500.0)),
    ]
    args = _args(tmp_path, "--seconds", "5", "--ours-scoring", "reference")
    bench_original.report(done, ["scoring"], args)
    out = capsys.readouterr().out
    side = next(line for line in out.splitlines() if line.startswith("| 5 s  | run_pipeline.py + run_syncnet.py"))
    cells = [c.strip() for c in side.strip("|").split("|")]
    # original 60 + 20 s against ours 20 s; processes 70 + 30 against 25; the higher peak, 1500 against 1000 MB
    assert cells[3:] == ["80.0", "20.0", "4.0x", "4.0x", "1500", "1000", "1.5x"]
    scores = next(line for line in out.splitlines() if line.startswith("| 5 s  | ours scoring reference"))
    assert [c.strip() for c in scores.strip("|").split("|")][2:] == ["7.250", "7.500", "1.500", "1.250", "3", "3"]
