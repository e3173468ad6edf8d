"""The folded Wav2Lip generator (lipsync.folded): the golden numbers, and the model's own to float32 rounding."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from common import precision, weights
from common.folding import fold_batch_norm
from face_detection.winograd import WinogradConv2d
from lipsync.folded import (
    WINOGRAD_BLOCKS,
    WINOGRAD_TILE_BYTES,
    FoldedConv,
    fold_wav2lip,
    load_folded_wav2lip,
    use_winograd,
)
from lipsync.model import Conv2d, Conv2dTranspose, Wav2Lip, generate, load_wav2lip, to_u8
from lipsync.options import LipSyncOptions


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


@pytest.fixture(scope="module")
def winograd(weights_dir) -> Wav2Lip:
    return load_folded_wav2lip("wav2lip_gan", weights_dir=weights_dir, winograd=True)


def test_winograd_replaces_exactly_the_listed_layers(winograd):
    replaced = {name: m for name, m in winograd.named_modules() if isinstance(m, WinogradConv2d)}
    assert sorted(replaced) == sorted(f"{name}.conv" for name in WINOGRAD_BLOCKS)
    for name, block in WINOGRAD_BLOCKS.items():
        assert replaced[f"{name}.conv"].block == block
        assert replaced[f"{name}.conv"].max_tile_bytes == WINOGRAD_TILE_BYTES  # batches in parts: peak memory
    with pytest.raises(ValueError, match="no such blocks"):
        use_winograd(fold_wav2lip(Wav2Lip().eval()), {"face_decoder_blocks.9.1": 4})
    with pytest.raises(ValueError, match="not a folded block"):
        use_winograd(Wav2Lip().eval(), {"face_decoder_blocks.2.1": 3})


def test_winograd_matches_golden_and_the_direct_generator(folded, winograd, golden, face_image_bgr):
    """Measured on a real face and the golden inputs, 32 faces: max 1 grey level on 0.001% of values;
    on the golden batch the float outputs are 3.6e-7 apart."""
    g = golden("wav2lip_generator")
    mel = torch.from_numpy(g["mel_input"])
    face = torch.from_numpy(g["face_input"]).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        np.testing.assert_allclose(winograd(mel, face).numpy(), g["output"], atol=1e-5, rtol=1e-5)
    crop = cv2.resize(np.ascontiguousarray(face_image_bgr[20:300, 130:380]), (96, 96))
    crops = np.stack([*g["faces_bgr_u8"], crop, np.ascontiguousarray(crop[:, ::-1])] * 8)
    mels = np.random.default_rng(5).uniform(-4, 1, (len(crops), 80, 16)).astype(np.float32)
    direct = generate(folded, mels, crops).astype(int)
    assert direct.std() > 10  # outputs that vary, not a saturated image
    diff = np.abs(generate(winograd, mels, crops).astype(int) - direct)
    assert diff.max() <= 1 and (diff > 0).mean() <= 1e-4, (diff.max(), (diff > 0).mean())


@pytest.mark.parametrize("native_bf16, chosen, detection, expected", [
    (False, "auto", "fast", True),       # auto means fp32 here: the fast float32 layers
    (False, "fp32", "fast", False),      # asked for fp32: the published model's numbers, exactly
    (True, "auto", "fast", False),       # auto means bf16: oneDNN's own kernels
    (False, "auto", "original", False),  # full-frame detection dominates: keep the memory instead
])
def test_the_engine_runs_winograd_only_when_auto_means_fp32(monkeypatch, weights_dir, native_bf16, chosen,
                                                            detection, expected):
    from lipsync.pipeline import LipSync

    monkeypatch.setattr(precision, "native_bf16", lambda: native_bf16)
    engine = LipSync(weights_dir=weights_dir, device="cpu")
    options = LipSyncOptions(precision=chosen, detection=detection)
    assert engine.winograd(options) is expected
    if not native_bf16:  # loading the bf16 model is covered elsewhere
        net = engine.generator_for(options)
        assert any(isinstance(m, WinogradConv2d) for m in net.modules()) is expected
        assert engine.generator_for(options) is net
