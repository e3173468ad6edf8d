"""Wav2Lip generator: checkpoint layout, golden forward pass, input/output glue, OOM fallback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from common import weights
from common.errors import WeightsError
from lipsync.model import Wav2Lip, distinct_crops, generate, load_wav2lip, prepare_faces, to_u8

MANIFEST = json.loads((Path(__file__).parent / "data" / "manifests" / "wav2lip.json").read_text())


@pytest.fixture(scope="module")
def model(weights_dir) -> Wav2Lip:
    """The generated wav2lip.pth (module.-prefixed, inside the training scripts' save dict)."""
    return load_wav2lip("wav2lip", weights_dir=weights_dir)


@pytest.fixture(scope="module")
def plain_model(weights_dir) -> Wav2Lip:
    """Same weights, default (contiguous) memory format."""
    return weights.load_model(Wav2Lip(), weights_dir / "wav2lip.pth")


def test_state_dict_matches_released_checkpoint_layout():
    expected = [(key.removeprefix("module."), shape) for key, shape, _dtype in MANIFEST["state_dict"]]
    ours = [(key, list(value.shape)) for key, value in Wav2Lip().state_dict().items()]
    assert ours == expected
    assert sum(p.numel() for p in Wav2Lip().parameters()) == MANIFEST["num_parameters"] == 36_298_035


def test_load_wav2lip_eval_channels_last(model):
    assert not model.training
    first = model.face_encoder_blocks[0][0].conv_block[0].weight
    assert first.is_contiguous(memory_format=torch.channels_last) and not first.is_contiguous()


def test_prepare_faces_equals_golden(golden):
    g = golden("wav2lip_generator")
    faces = prepare_faces(g["faces_bgr_u8"])
    assert faces.dtype == np.float32 and faces.shape == (2, 6, 96, 96) and faces.flags.c_contiguous
    np.testing.assert_array_equal(faces, g["face_input"])
    assert not faces[:, :3, 48:].any()


@pytest.mark.parametrize("which", ["model", "plain_model"])
def test_forward_matches_golden(golden, request, which):
    net = request.getfixturevalue(which)
    g = golden("wav2lip_generator")
    mel, face = torch.from_numpy(g["mel_input"]), torch.from_numpy(g["face_input"])
    if which == "model":
        face = face.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        embedding = net.audio_encoder(mel).numpy()
        output = net(mel, face)
    np.testing.assert_allclose(embedding, g["audio_embedding"], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(output.numpy(), g["output"], atol=1e-5, rtol=1e-5)
    u8 = to_u8(output)
    assert u8.shape == (2, 96, 96, 3) and u8.dtype == np.uint8
    assert np.abs(u8.astype(int) - g["output_hwc_u8"]).max() <= 1


def test_to_u8_truncates():
    pred = np.full((1, 3, 96, 96), 0.999, np.float32)  # 254.745 -> 254, not 255
    assert (to_u8(pred) == 254).all()
    assert (to_u8(torch.ones(1, 3, 96, 96)) == 255).all()


def test_generate_matches_golden(model, plain_model, golden):
    g = golden("wav2lip_generator")
    for net in (model, plain_model):
        out = generate(net, g["mel_input"][:, 0], g["faces_bgr_u8"])
        assert out.shape == (2, 96, 96, 3) and out.dtype == np.uint8
        assert np.abs(out.astype(int) - g["output_hwc_u8"]).max() <= 1


def test_forward_5d_equals_4d(model):
    rng = np.random.default_rng(3)
    batch, steps = 2, 3
    mel = torch.from_numpy(rng.uniform(-4, 4, (batch, steps, 1, 80, 16)).astype(np.float32))
    face = torch.from_numpy(rng.uniform(0, 1, (batch, 6, steps, 96, 96)).astype(np.float32))
    with torch.inference_mode():
        out = model(mel, face)
        assert out.shape == (batch, 3, steps, 96, 96)
        for t in range(steps):
            np.testing.assert_allclose(out[:, :, t].numpy(), model(mel[:, t], face[:, :, t]).numpy(), atol=1e-5)


def test_generate_halves_batch_on_oom(model, monkeypatch, golden, caplog):
    g = golden("wav2lip_generator")
    mels = np.repeat(g["mel_input"][:, 0], 3, axis=0)  # 6 faces
    crops = np.repeat(g["faces_bgr_u8"], 3, axis=0)
    expected = generate(model, mels, crops)
    decode, sizes = Wav2Lip.decode, []

    def limited(self, audio, features):
        sizes.append(audio.shape[0])
        if audio.shape[0] > 2:
            raise torch.OutOfMemoryError("simulated: out of memory")
        return decode(self, audio, features)

    monkeypatch.setattr(Wav2Lip, "decode", limited)
    out = generate(model, mels, crops, batch_size=6)
    assert sizes == [6, 3, 1, 1, 1, 1, 1, 1]  # 6 fails, 3 fails, then ones (3 // 2 = 1)
    np.testing.assert_array_equal(out, expected)
    assert "retrying with batch size" in caplog.text


def test_generate_oom_at_batch_one_propagates(model, monkeypatch):
    def always(self, audio, features):
        raise torch.OutOfMemoryError("simulated: out of memory")

    monkeypatch.setattr(Wav2Lip, "decode", always)
    crops = np.zeros((2, 96, 96, 3), np.uint8)
    with pytest.raises(torch.OutOfMemoryError):
        generate(model, np.zeros((2, 80, 16), np.float32), crops)


def test_generate_other_runtime_errors_are_not_swallowed(model, monkeypatch):
    def broken(self, audio, features):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(Wav2Lip, "decode", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        generate(model, np.zeros((2, 80, 16), np.float32), np.zeros((2, 96, 96, 3), np.uint8))


def test_distinct_crops():
    rng = np.random.default_rng(5)
    crops = rng.integers(0, 256, (6, 96, 96, 3), dtype=np.uint8)
    assert distinct_crops(crops)[1] is None and distinct_crops(crops[:1])[1] is None
    crops[3], crops[5] = crops[1], crops[0]
    unique, inverse = distinct_crops(crops)
    assert inverse.tolist() == [0, 1, 2, 1, 3, 0]
    np.testing.assert_array_equal(unique[inverse], crops)


def test_generate_encodes_a_still_face_once(model, golden, monkeypatch):
    """A still photo: the face encoder sees each distinct crop once, and the mouths are those of the
    whole network run on every face (within one grey level: oneDNN may sum in another order for
    another batch size)."""
    g = golden("wav2lip_generator")
    rng = np.random.default_rng(6)
    mels = rng.uniform(-4, 4, (8, 80, 16)).astype(np.float32)
    crops = np.concatenate([np.repeat(g["faces_bgr_u8"][:1], 5, axis=0), np.repeat(g["faces_bgr_u8"][1:], 3, axis=0)])
    with torch.inference_mode():
        face = torch.from_numpy(prepare_faces(crops)).contiguous(memory_format=torch.channels_last)
        reference = to_u8(model(torch.from_numpy(mels[:, None]), face)).astype(int)
    encoded = []
    encode = Wav2Lip.encode_face
    monkeypatch.setattr(Wav2Lip, "encode_face", lambda self, x: encoded.append(len(x)) or encode(self, x))
    out = generate(model, mels, crops).astype(int)
    assert encoded == [2]
    diff = np.abs(out - reference)
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    assert len({out[k].tobytes() for k in range(5)}) == 5  # the same face, five different mouths


def test_generate_empty(model):
    out = generate(model, np.zeros((0, 80, 16), np.float32), np.zeros((0, 96, 96, 3), np.uint8))
    assert out.shape == (0, 96, 96, 3)


def test_wrong_checkpoint_names_first_mismatch(weights_dir):
    with pytest.raises(WeightsError, match=r"face_encoder_blocks\.0\.0\.conv_block\.0\.weight") as info:
        load_wav2lip(weights_dir / "s3fd.pth")
    assert "right file" in str(info.value)


def test_wrong_shape_is_named(tmp_path, weights_dir):
    sd = weights.load_state_dict(weights_dir / "wav2lip.pth")
    sd["audio_encoder.3.conv_block.0.weight"] = torch.zeros(64, 32, 5, 5)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match=r"audio_encoder\.3\.conv_block\.0\.weight.*\(64, 32, 5, 5\)"):
        load_wav2lip(tmp_path / "bad.pth")
