"""The app's service (service/), without Gradio: the page's handlers are tested in test_app.py."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from service import folders, results
from service.gpu import GPU_START_SECONDS, gpu_seconds

ROOT = Path(__file__).resolve().parent.parent


def test_the_service_works_where_gradio_cannot_be_imported():
    code = ("import sys; sys.modules['gradio'] = None\n"
            "import service.folders, service.gpu, service.models, service.results, service.settings\n"
            "print(service.settings.Settings.from_env().describe())")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Limits: face video and audio up to" in done.stdout


def test_each_request_gets_a_fresh_folder_and_old_empty_ones_are_pruned(tmp_path):
    root = tmp_path / "outputs"
    first, second = folders.request_dir(root, 3600), folders.request_dir(root, 3600)
    assert first != second and first.parent == second.parent == root
    old_empty, old_full = root / "old-empty", root / "old-full"
    old_empty.mkdir()
    old_full.mkdir()
    (old_full / "result.mp4").write_bytes(b"x")
    hour_ago = time.time() - 7200
    for folder in (old_empty, old_full):
        os.utime(folder, (hour_ago, hour_ago))
    folders.request_dir(root, 3600)
    assert not old_empty.exists() and old_full.exists() and first.exists()  # first: young, may be in use


def test_safe_stems_name_outputs():
    assert folders.safe_stem("/up/my clip (final).mp4") == "my_clip_final"
    assert folders.safe_stem("/up/???.mp4") == "video"
    assert len(folders.safe_stem("a" * 100 + ".mp4")) == 40


def test_scores_as_the_page_shows_them():
    assert results.result_dict(None, "no face track") == {"lse_d": None, "lse_c": None, "offset": None,
                                                           "messages": ["no face track"]}
    assert results.rounded(1.23456) == 1.235 and results.rounded(float("nan")) is None
    table = results.scores_markdown([("output", {"lse_d": 7.5, "lse_c": float("inf"), "offset": -2,
                                                 "messages": ["short clip"]})])
    assert "| output | 7.50 | – | -2 |" in table and "- output: short clip" in table


def test_gpu_time_grows_with_the_request():
    assert gpu_seconds(0, 0) == GPU_START_SECONDS
    assert gpu_seconds(10, 20) > gpu_seconds(10, 0) > gpu_seconds(0, 0)
