"""The folded Wav2Lip generator (lipsync.fused): the golden numbers, and the model's own to float32 rounding."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from lipsync import weights
from lipsync.fused import FoldedConv, fold_batch_norm, fold_wav2lip, load_folded_wav2lip
from lipsync.model import Conv2d, Conv2dTranspose, Wav2Lip, generate, load_wav2lip, to_u8


@pytest.fixture(scope="module")
def model(weights_dir) -> Wav2Lip:
    return load_wav2lip("wav2lip_gan", weights_dir=weights_dir)


@pytest.fixture(scope="module")
def folded(weights_dir) -> Wav2Lip:
    return load_folded_wav2lip("wav2lip_gan", weights_dir=weights_dir)


def _random_bn(channels: int, seed: int) -> nn.BatchNorm2d:
    gen = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(channels).eval()
    with torch.no_grad():
        bn.weight.copy_(torch.rand(channels, generator=gen) + 0.5)
        bn.bias.copy_(torch.randn(channels, generator=gen))
        bn.running_mean.copy_(torch.randn(channels, generator=gen))
        bn.running_var.copy_(torch.rand(channels, generator=gen) + 0.1)
    return bn


@pytest.mark.parametrize("transposed", [False, True])
def test_fold_batch_norm_equals_conv_then_bn(transposed):
    torch.manual_seed(0)
    conv = (nn.ConvTranspose2d(8, 6, 3, stride=2, padding=1, output_padding=1) if transposed
            else nn.Conv2d(8, 6, 3, padding=1))
    bn = _random_bn(6, 1)
    x = torch.randn(2, 8, 7, 7)
    weight, bias = fold_batch_norm(conv.weight.detach(), conv.bias.detach(), bn, out_dim=1 if transposed else 0)
    op = torch.nn.functional.conv_transpose2d if transposed else torch.nn.functional.conv2d
    extra = {"stride": 2, "padding": 1, "output_padding": 1} if transposed else {"padding": 1}
    with torch.no_grad():
        expected = bn(conv(x))
        got = op(x, weight, bias, **extra)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("residual", [False, True])
def test_folded_block_equals_the_block(residual):
    torch.manual_seed(2)
    block = Conv2d(5, 5, 3, 1, 1, residual=residual).eval()
    block.conv_block[1] = _random_bn(5, 3)
    x = torch.randn(3, 5, 9, 9)
    with torch.inference_mode():
        expected = block(x)
        got = FoldedConv(block)(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert (got >= 0).all()


def test_every_block_is_folded_and_the_layout_kept(folded):
    modules = list(folded.modules())
    assert not any(isinstance(m, (Conv2d, Conv2dTranspose, nn.BatchNorm2d)) for m in modules)
    n_batch_norms = sum(isinstance(m, nn.BatchNorm2d) for m in Wav2Lip().modules())
    assert sum(isinstance(m, FoldedConv) for m in modules) == n_batch_norms == 50
    first = next(folded.parameters())
    assert first.shape == (16, 6, 7, 7)
    assert first.is_contiguous(memory_format=torch.channels_last) and not first.is_contiguous()
    assert not any(p.requires_grad for p in folded.parameters())


def test_fold_refuses_a_training_model():
    with pytest.raises(ValueError, match="eval mode"):
        fold_wav2lip(Wav2Lip())


def test_folded_matches_golden(folded, golden):
    g = golden("wav2lip_generator")
    mel = torch.from_numpy(g["mel_input"])
    face = torch.from_numpy(g["face_input"]).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        output = folded(mel, face)
    np.testing.assert_allclose(output.numpy(), g["output"], atol=1e-5, rtol=1e-5)
    assert np.abs(to_u8(output).astype(int) - g["output_hwc_u8"]).max() <= 1
    out = generate(folded, g["mel_input"][:, 0], g["faces_bgr_u8"])
    assert np.abs(out.astype(int) - g["output_hwc_u8"]).max() <= 1


def test_folded_equals_the_model_to_float32_rounding(model, folded, golden, face_image_bgr):
    """On a real face and the golden inputs, 32 faces: measured max 1 grey level on 0.002% of values."""
    g = golden("wav2lip_generator")
    face = cv2.resize(np.ascontiguousarray(face_image_bgr[20:300, 130:380]), (96, 96))
    rng = np.random.default_rng(5)
    crops = np.stack([*g["faces_bgr_u8"], face, np.ascontiguousarray(face[:, ::-1])] * 8)
    mels = rng.uniform(-4, 1, (len(crops), 80, 16)).astype(np.float32)
    a = generate(model, mels, crops).astype(int)
    b = generate(folded, mels, crops).astype(int)
    diff = np.abs(a - b)
    assert diff.max() <= 1 and (diff > 0).mean() <= 1e-3, (diff.max(), (diff > 0).mean())


def test_a_16_bit_model_is_folded_in_float32(weights_dir):
    """The folded weights are rounded to bfloat16 once, from float32 folding."""
    bf16 = load_folded_wav2lip("wav2lip_gan", weights_dir=weights_dir, dtype=torch.bfloat16)
    fp32 = load_folded_wav2lip("wav2lip_gan", weights_dir=weights_dir)
    for p16, p32 in zip(bf16.parameters(), fp32.parameters(), strict=True):
        assert p16.dtype == torch.bfloat16
        assert torch.equal(p16, p32.to(torch.bfloat16))


def test_the_engine_runs_the_folded_generator(weights_dir):
    from lipsync.pipeline import LipSync

    engine = LipSync(weights_dir=weights_dir, device="cpu")
    net = engine.generator("wav2lip_gan")
    assert any(isinstance(m, FoldedConv) for m in net.modules())
    assert engine.generator("wav2lip_gan") is net
    assert weights.resolve("wav2lip_gan", weights_dir=weights_dir).is_file()
