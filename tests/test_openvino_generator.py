"""The generator run by OpenVINO (precision auto on a CPU without native bf16) against torch's float32."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from lipsync import openvino_generator, precision, weights
from lipsync.fused import load_folded_wav2lip
from lipsync.model import generate
from lipsync.options import LipSyncOptions
from lipsync.pipeline import LipSync


@pytest.fixture
def cache(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("LIPSYNC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("LIPSYNC_OPENVINO", raising=False)
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def inputs() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    crops = rng.integers(0, 256, (21, 96, 96, 3), dtype=np.uint8)
    crops[12:] = crops[12]  # a still photo's batch: one crop, encoded once
    return rng.standard_normal((21, 80, 16)).astype(np.float32), crops


def test_openvino_matches_torch_fp32_within_a_grey_level_and_is_exported_once(
        weights_dir, cache, inputs, monkeypatch):
    checkpoint = weights.resolve("wav2lip_gan", weights_dir=weights_dir)
    model = openvino_generator.load(checkpoint)  # exported in a child process, then compiled here
    assert isinstance(model, openvino_generator.OpenVINOGenerator)
    folder = openvino_generator.cache_folder(checkpoint)
    assert folder.parent == cache / "openvino" and sorted(p.name for p in folder.glob("*.xml")) == [
        "decoder.xml", "encoder.xml"]

    mels, crops = inputs
    ours = generate(model, mels, crops, batch_size=8)
    torch_fp32 = generate(load_folded_wav2lip(checkpoint), mels, crops, batch_size=8)
    diff = np.abs(ours.astype(np.int16) - torch_fp32)
    # measured: at most 1 grey level, in about 6 of a million values (float32 sums in another order)
    assert diff.max() <= 1 and diff.mean() < 1e-4
    np.testing.assert_array_equal(ours[12:], generate(model, mels[12:], crops[12:]))  # still photo: same mouths

    def no_export(*_):
        raise AssertionError("exported again")

    monkeypatch.setattr(openvino_generator, "_export_in_child", no_export)
    np.testing.assert_array_equal(generate(openvino_generator.load(checkpoint), mels, crops, batch_size=8), ours)


def test_auto_on_a_cpu_without_native_bf16_runs_openvino_and_fp32_stays_torch(weights_dir, cache, monkeypatch):
    engine = LipSync(weights_dir=weights_dir, device="cpu")
    monkeypatch.setattr(precision, "native_bf16", lambda: False)
    assert engine.runtime(LipSyncOptions()) == "openvino"
    assert engine.runtime(LipSyncOptions(precision="fp32")) == "torch"
    assert engine.runtime(LipSyncOptions(precision="bf16")) == "torch"
    monkeypatch.setenv("LIPSYNC_OPENVINO", "0")
    assert engine.runtime(LipSyncOptions()) == "torch"
    monkeypatch.delenv("LIPSYNC_OPENVINO")
    monkeypatch.setattr(precision, "native_bf16", lambda: True)  # auto is bf16 there: torch's
    assert engine.runtime(LipSyncOptions()) == "torch"


def test_a_failed_export_runs_torch_instead(weights_dir, cache, monkeypatch, caplog):
    def broken(checkpoint, folder):
        raise RuntimeError("exporting the generator to OpenVINO failed (no space left on device)")

    monkeypatch.setattr(openvino_generator, "_export_in_child", broken)
    engine = LipSync(weights_dir=weights_dir, device="cpu")
    with caplog.at_level(logging.WARNING, logger="lipsync.openvino_generator"):
        model = engine.generator("wav2lip", torch.float32, "openvino")
    assert isinstance(model, torch.nn.Module)
    assert "no space left on device" in caplog.text and "running it with torch in float32" in caplog.text
    assert engine.generator("wav2lip", torch.float32, "torch") is model  # one torch model for both keys
