import dataclasses
import hashlib
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from common import weights
from common.errors import WeightsError


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
    with pytest.raises(WeightsError, match="refused checkpoint .*Python objects other than tensors"):
        weights.load_state_dict(evil)


def test_the_published_digests_are_pinned():
    for spec in weights.REGISTRY.values():
        assert spec.sha256 is not None and len(spec.sha256) == 64 and int(spec.sha256, 16) >= 0, spec
    # torch.hub's name for the S3FD file carries its digest's first 10 digits
    assert weights.REGISTRY["s3fd"].sha256.startswith("619a316812")


@pytest.mark.parametrize("given", ["weights dir", "path variable"])
def test_a_users_own_file_that_differs_is_used_with_a_warning(weights_dir, caplog, monkeypatch, given):
    """The generated test weights are not the published files: used all the same, with a warning."""
    if given == "path variable":
        monkeypatch.delenv("LIPSYNC_WEIGHTS_DIR")
        monkeypatch.setenv("LIPSYNC_S3FD_PATH", str(weights_dir / "s3fd.pth"))
    with caplog.at_level(logging.INFO, logger="common.weights"):
        path = weights.resolve("s3fd")
    assert path == weights_dir / "s3fd.pth" and path.is_file()
    digest = weights.file_sha256(path)
    assert any("sha256=" in r.message for r in caplog.records)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and digest in warned[0] and weights.REGISTRY["s3fd"].sha256 in warned[0], warned


def hub(monkeypatch, tmp_path: Path) -> None:
    """An offline Hugging Face cache in ``tmp_path`` and no local weights: resolve() 'downloads' from it."""
    import huggingface_hub.constants as hc

    monkeypatch.delenv("LIPSYNC_WEIGHTS_DIR", raising=False)
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path))


def test_a_download_that_differs_is_deleted_and_refused(weights_dir, tmp_path, monkeypatch):
    hub(monkeypatch, tmp_path)
    spec = weights.spec_for("sfd_face")
    blob = fake_hub_cache(tmp_path, spec, (weights_dir / "sfd_face.pth").read_bytes())
    link = next(tmp_path.glob("models--*/snapshots/*/" + spec.filename))
    with pytest.raises(WeightsError) as err:
        weights.resolve("sfd_face")
    message = str(err.value)
    assert f"sha256 {weights.file_sha256(weights_dir / 'sfd_face.pth')}, expected {spec.sha256}" in message
    assert "sfd_face" in message and "lithiumice/syncnet" in message and "deleted" in message
    assert not blob.exists() and not link.is_symlink()  # the next try downloads it again


def test_a_download_that_matches_is_used(weights_dir, tmp_path, monkeypatch, caplog):
    hub(monkeypatch, tmp_path)
    content = (weights_dir / "sfd_face.pth").read_bytes()
    digest = hashlib.sha256(content).hexdigest()
    monkeypatch.setitem(weights.REGISTRY, "sfd_face", dataclasses.replace(weights.REGISTRY["sfd_face"], sha256=digest))
    blob = fake_hub_cache(tmp_path, weights.spec_for("sfd_face"), content)
    with caplog.at_level(logging.WARNING, logger="common.weights"):
        path = weights.resolve("sfd_face")
    assert path.resolve() == blob.resolve() and not caplog.records


def test_a_download_from_a_repo_of_the_users_choosing_is_used_with_a_warning(weights_dir, tmp_path, monkeypatch,
                                                                           caplog):
    hub(monkeypatch, tmp_path)
    monkeypatch.setenv("LIPSYNC_SFD_FACE_REPO", "me/finetuned")
    blob = fake_hub_cache(tmp_path, weights.spec_for("sfd_face"), (weights_dir / "sfd_face.pth").read_bytes())
    with caplog.at_level(logging.WARNING, logger="common.weights"):
        path = weights.resolve("sfd_face")
    assert path.resolve() == blob.resolve() and blob.exists()
    assert "not the published sfd_face file" in caplog.text


# -- damaged and hostile checkpoints ------------------------------------------------------------------

def damage(data: bytes, how: str) -> bytes:
    middle = len(data) // 2
    return {"truncated": data[:middle], "empty": b"",
            "flipped": data[:middle] + bytes(b ^ 0xFF for b in data[middle:middle + 4096]) + data[middle + 4096:],
            "zeroed head": b"\0" * 1024 + data[1024:], "not a checkpoint": b"<html>404 Not Found</html>"}[how]


def weights_folder(tmp_path: Path, source: Path, bad: str, how: str) -> Path:
    """A LIPSYNC_WEIGHTS_DIR with the generated checkpoints (linked) and ``bad`` damaged."""
    folder = tmp_path / "weights"
    folder.mkdir()
    for f in source.iterdir():
        if f.name != bad:
            (folder / f.name).symlink_to(f)
    (folder / bad).write_bytes(damage((source / bad).read_bytes(), how))
    return folder


DAMAGE = ["truncated", "empty", "flipped", "zeroed head", "not a checkpoint"]


@pytest.mark.parametrize("how", DAMAGE)
def test_damaged_checkpoint_in_the_weights_dir_names_file_and_fix(weights_dir, tmp_path, monkeypatch, how):
    from syncnet.model import load_syncnet

    folder = weights_folder(tmp_path, weights_dir, "syncnet_v2.model", how)
    monkeypatch.setenv("LIPSYNC_WEIGHTS_DIR", str(folder))
    with pytest.raises(WeightsError) as err:
        load_syncnet()
    message = str(err.value)
    assert str(folder / "syncnet_v2.model") in message, message
    assert "replace it with a complete copy: put 'syncnet_v2.model'" in message and "lithiumice/syncnet" in message


def test_damaged_checkpoint_given_by_path(weights_dir, tmp_path, monkeypatch):
    bad = tmp_path / "mine.model"
    bad.write_bytes(damage((weights_dir / "syncnet_v2.model").read_bytes(), "truncated"))
    monkeypatch.setenv("LIPSYNC_SYNCNET_V2_PATH", str(bad))
    with pytest.raises(WeightsError, match="incomplete or damaged; point LIPSYNC_SYNCNET_V2_PATH at a complete copy"):
        weights.load_model(Tiny(), "syncnet_v2")
    monkeypatch.delenv("LIPSYNC_SYNCNET_V2_PATH")
    with pytest.raises(WeightsError, match=f"replace '{bad}' with a complete copy"):
        weights.load_model(Tiny(), bad)


def fake_hub_cache(root: Path, spec: weights.WeightSpec, content: bytes) -> Path:
    """The file as huggingface_hub caches it: snapshots/<commit>/<file> linked to blobs/<hash>."""
    repo = root / f"models--{spec.repo_id.replace('/', '--')}"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / spec.revision).write_text(commit)
    blob = repo / "blobs" / "deadbeef"
    blob.parent.mkdir()
    blob.write_bytes(content)
    link = repo / "snapshots" / commit / spec.filename
    link.parent.mkdir(parents=True)
    link.symlink_to(blob)
    return blob


def test_damaged_checkpoint_in_the_hub_cache_says_delete_the_blob(weights_dir, tmp_path, monkeypatch):
    """For a Hub file with no published digest to check it by, loading finds the damage."""
    hub(monkeypatch, tmp_path)
    monkeypatch.setitem(weights.REGISTRY, "syncnet_v2",
                        dataclasses.replace(weights.REGISTRY["syncnet_v2"], sha256=None))
    good = (weights_dir / "syncnet_v2.model").read_bytes()
    blob = fake_hub_cache(tmp_path, weights.spec_for("syncnet_v2"), damage(good, "flipped"))
    with pytest.raises(WeightsError, match=f"delete {blob} \\(the Hugging Face cache's copy\\)"):
        weights.load_state_dict(weights.resolve("syncnet_v2"),
                                fix=weights.how_to_replace("syncnet_v2", weights.resolve("syncnet_v2")))
    blob.unlink()  # the fix: then the cache no longer has the file, and it would be downloaded
    with pytest.raises(WeightsError, match="could not get the syncnet_v2 weights from the Hugging Face Hub"):
        weights.resolve("syncnet_v2")
    blob.write_bytes(good)
    assert weights.load_state_dict(weights.resolve("syncnet_v2"))


class Payload:
    """Unpickling this runs os.mkdir(marker): what a hostile checkpoint would do with worse code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


@pytest.mark.parametrize("zip_format", [True, False])
def test_checkpoint_with_a_pickle_payload_is_refused_without_running_it(tmp_path, zip_format):
    def craft(marker: Path) -> Path:
        path = tmp_path / f"{marker.name}.pth"
        torch.save({"state_dict": Tiny().state_dict(), "extra": Payload(marker)}, path,
                   _use_new_zipfile_serialization=zip_format)
        return path

    live = tmp_path / "ran"
    torch.load(craft(live), weights_only=False)  # the payload is real: a plain unpickling runs it
    assert live.is_dir()
    marker = tmp_path / "must-not-run"
    evil = craft(marker)
    with pytest.raises(WeightsError, match=r"refused checkpoint .*GLOBAL posix.mkdir.*could run code"):
        weights.load_model(Tiny(), evil)
    with pytest.raises(WeightsError, match="refused checkpoint"):
        weights.check_file(evil, Tiny(), label="tiny")
    assert not marker.exists()


def test_check_file_compares_names_and_shapes_on_the_meta_device(weights_dir):
    from lipsync.model import Wav2Lip

    with torch.device("meta"):
        model = Wav2Lip()
    assert weights.check_file("wav2lip_gan", model, label="Wav2Lip", weights_dir=weights_dir) == \
        weights_dir / "wav2lip_gan.pth"
    with pytest.raises(WeightsError, match="sfd_face.pth: Wav2Lip: checkpoint lacks .* right file"):
        weights.check_file(weights_dir / "sfd_face.pth", model, label="Wav2Lip")


def test_cli_with_a_truncated_checkpoint_exits_2(weights_dir, tmp_path):
    folder = weights_folder(tmp_path, weights_dir, "wav2lip_gan.pth", "truncated")
    repo = Path(__file__).resolve().parents[1]
    face, audio = repo / "examples" / "face_still.jpg", repo / "examples" / "speech.wav"
    proc = subprocess.run([sys.executable, "-m", "lipsync", str(face), str(audio), "-o", str(tmp_path / "o.mp4"),
                           "--box", "30", "170", "65", "190", "--weights-dir", str(folder)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{folder / 'wav2lip_gan.pth'}" in proc.stderr and "replace it with a complete copy" in proc.stderr
    assert not (tmp_path / "o.mp4").exists()
