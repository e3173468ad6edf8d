import logging

import pytest
import torch

from lipsync import weights
from lipsync.errors import WeightsError


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3)
        self.bn = torch.nn.BatchNorm2d(2)


def test_unknown_name_lists_available():
    with pytest.raises(WeightsError, match=r"unknown model 'nope'; available: wav2lip_gan, wav2lip, s3fd"):
        weights.spec_for("nope")


def test_missing_file_in_weights_dir_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("LIPSYNC_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(WeightsError) as err:
        weights.resolve("s3fd")
    msg = str(err.value)
    assert "s3fd.pth" in msg and "camenduru/Wav2Lip" in msg and "LIPSYNC_WEIGHTS_DIR" in msg


def test_offline_hub_gives_clear_message(tmp_path, monkeypatch):
    monkeypatch.delenv("LIPSYNC_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(WeightsError) as err:
        weights.resolve("syncnet_v2")
    assert "lithiumice/syncnet" in str(err.value) and "syncnet_v2.model" in str(err.value)


def test_env_overrides_repo_and_path(tmp_path, monkeypatch):
    monkeypatch.setenv("LIPSYNC_WAV2LIP_REPO", "me/mirror")
    monkeypatch.setenv("LIPSYNC_WAV2LIP_REVISION", "abc123")
    spec = weights.spec_for("wav2lip")
    assert (spec.repo_id, spec.filename, spec.revision) == ("me/mirror", "Wav2lip/wav2lip.pth", "abc123")
    f = tmp_path / "x.pth"
    torch.save({"a": torch.zeros(1)}, f)
    monkeypatch.setenv("LIPSYNC_WAV2LIP_PATH", str(f))
    assert weights.resolve("wav2lip") == f


def test_explicit_path_must_exist(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        weights.resolve(tmp_path / "missing.pth")


def test_wrapped_prefixed_checkpoint_loads_into_model(tmp_path):
    model = Tiny()
    sd = {"module." + k: v.clone() + 1 for k, v in model.state_dict().items()}
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": sd, "optimizer": None, "global_step": 3, "global_epoch": 1}, path)
    fresh = weights.load_model(Tiny(), path, label="tiny")
    assert torch.equal(fresh.conv.weight, model.conv.weight + 1)
    assert not fresh.training


def test_shape_mismatch_names_first_key(tmp_path):
    sd = dict(Tiny().state_dict())
    sd["bn.weight"] = torch.ones(3)
    with pytest.raises(WeightsError, match=r"tiny: 'bn.weight' has shape \(3,\)"):
        weights.check_state_dict(Tiny(), sd, label="tiny")
    del sd["bn.weight"]
    with pytest.raises(WeightsError, match="lacks 'bn.weight'"):
        weights.check_state_dict(Tiny(), sd, label="tiny")


def test_optional_buffers_may_be_absent():
    sd = {k: v for k, v in Tiny().state_dict().items() if not k.endswith("num_batches_tracked")}
    weights.check_state_dict(Tiny(), sd, label="tiny", optional_suffixes=("num_batches_tracked",))
    with pytest.raises(WeightsError, match="num_batches_tracked"):
        weights.check_state_dict(Tiny(), sd, label="tiny")


def test_corrupt_and_pickled_code_are_refused(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read checkpoint"):
        weights.load_state_dict(bad)
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "obj": Tiny}, evil)  # a class: needs full unpickling
    with pytest.raises(WeightsError, match="cannot read checkpoint"):
        weights.load_state_dict(evil)


def test_hash_prefix_mismatch_warns_but_loads(weights_dir, caplog):
    with caplog.at_level(logging.INFO, logger="lipsync.weights"):
        path = weights.resolve("s3fd")
    assert path == weights_dir / "s3fd.pth"
    assert any("sha256=" in r.message for r in caplog.records)
    assert any(r.levelno == logging.WARNING and "619a316812" in r.getMessage() for r in caplog.records)


def test_known_full_hash_is_enforced(tmp_path, monkeypatch):
    f = tmp_path / "s3fd.pth"
    f.write_bytes(b"abc")
    monkeypatch.setitem(weights.REGISTRY, "s3fd", weights.WeightSpec("s3fd", "s3fd.pth", "r", "f", sha256="0" * 64))
    monkeypatch.setenv("LIPSYNC_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(WeightsError, match="does not match the known s3fd weights"):
        weights.resolve("s3fd")
