"""The lip tower's first layer by Winograd F(3x3, 4x4) over the frames' polyphase components (syncnet.lipconv)
equals the direct layer, and the evaluator's SyncNet uses it only where it runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from syncnet import lipconv, score
from syncnet.embed import LipWindows
from syncnet.evaluate import SyncNetEvaluator
from syncnet.folded import FoldedSyncNet
from syncnet.lipconv import WinogradLipConv
from syncnet.model import load_syncnet

FRAMES = 5


def direct(conv: torch.nn.Conv2d, frames: torch.Tensor, n: int) -> torch.Tensor:
    """relu(conv) of each window frames[w:w + 5] (channels time major, as syncnet.folded builds them), float64."""
    height, width, colours = frames.shape[1:]
    windows = torch.stack([frames[w:w + FRAMES] for w in range(n)])  # (n, T, H, W, C)
    x = windows.permute(0, 2, 3, 1, 4).reshape(n, height, width, FRAMES * colours).permute(0, 3, 1, 2)
    bias = None if conv.bias is None else conv.bias.detach().double()
    return torch.relu(F.conv2d(x.double(), conv.weight.detach().double(), bias, stride=2))


def random_conv(seed: int, out_channels: int = 96, bias: bool = True) -> torch.nn.Conv2d:
    torch.manual_seed(seed)
    conv = torch.nn.Conv2d(FRAMES * 3, out_channels, 7, stride=2, bias=bias)
    with torch.no_grad():
        conv.weight.normal_(0, 0.01)  # crops are 0..255: about the scale of the folded real layer
    return conv


@pytest.mark.parametrize(("n", "height", "width"), [(3, 224, 224), (1, 7, 7), (2, 31, 29), (2, 225, 223), (4, 16, 40)])
@pytest.mark.parametrize("threads", [1, 2])
def test_equals_the_direct_layer(torch_threads, n, height, width, threads):
    torch_threads(threads)
    conv = random_conv(n + height, out_channels=16, bias=n != 1)
    frames = torch.randint(0, 256, (n + FRAMES - 1 + 1, height, width, 3), dtype=torch.uint8)  # one frame spare
    ref = direct(conv, frames, n)
    with torch.inference_mode():
        out = WinogradLipConv(conv, FRAMES)(frames.numpy(), n)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_allclose(out.double().numpy(), ref.numpy(), rtol=0, atol=1e-5 * float(ref.abs().max()))


@pytest.mark.parametrize("strip_bytes", [1, 150_000])
def test_strips_of_tile_rows_give_the_same_result(monkeypatch, torch_threads, strip_bytes):
    """37 tile rows of a 224 crop: one a strip (each worker's strips not adjacent), or strips of a few rows
    whose last is lower; float inputs as well as uint8."""
    torch_threads(2)
    conv = random_conv(3)
    frames = torch.rand(6, 224, 224, 3) * 255
    with torch.inference_mode():
        whole = WinogradLipConv(conv, FRAMES)(frames, 2)
        monkeypatch.setattr(lipconv, "STRIP_BYTES", strip_bytes)
        strips = WinogradLipConv(conv, FRAMES)(frames, 2)
    torch.testing.assert_close(strips, whole, rtol=0, atol=1e-6 * float(whole.abs().max()))
    np.testing.assert_allclose(whole.double().numpy(), direct(conv, frames, 2).numpy(), rtol=0,
                               atol=1e-5 * float(whole.abs().max()))


@pytest.mark.parametrize("conv", [torch.nn.Conv2d(15, 8, 7, stride=1), torch.nn.Conv2d(15, 8, 5, stride=2),
                                  torch.nn.Conv2d(15, 8, 7, stride=2, padding=1), torch.nn.Conv2d(14, 8, 7, stride=2)])
def test_refuses_other_layers(conv):
    with pytest.raises(ValueError, match="7x7 stride-2 unpadded convolution of 5 frames"):
        WinogradLipConv(conv, FRAMES)


def test_refuses_too_few_or_too_small_frames():
    layer = WinogradLipConv(random_conv(1, 8), FRAMES)
    with pytest.raises(ValueError, match="need"):
        layer(np.zeros((5, 20, 20, 3), np.uint8), 2)
    with pytest.raises(ValueError, match="smaller than the 7x7 kernel"):
        layer(np.zeros((5, 6, 20, 3), np.uint8), 1)


@pytest.fixture(scope="module")
def model(weights_dir: Path):
    return load_syncnet(weights_dir=weights_dir)


def test_forward_lip_frames_matches_golden_and_forward_lip(model, golden, torch_threads):
    torch_threads(2)
    g = golden("syncnet_embeddings")
    net = FoldedSyncNet(model, across_cores=True)
    assert net.shares_frames() and not FoldedSyncNet(model).shares_frames()
    with torch.inference_mode():
        # each golden window is 5 frames of its own: one window from each
        lip = torch.cat([net.forward_lip_frames(window.transpose(1, 2, 3, 0), 1) for window in g["lip_input_u8"]])
        assert lip.dtype == torch.float32
        np.testing.assert_allclose(lip.numpy(), g["lip_embedding"], rtol=0,
                                   atol=1e-4 * float(np.abs(g["lip_embedding"]).max()))
        # overlapping windows of a run of frames, as the evaluator streams them
        frames = np.random.default_rng(0).integers(0, 256, (9, 224, 224, 3), dtype=np.uint8)
        ref = net.forward_lip(score.lip_windows(frames, 5))
        np.testing.assert_allclose(net.forward_lip_frames(frames, 5).numpy(), ref.numpy(), rtol=0,
                                   atol=1e-5 * float(ref.abs().max()))


def test_other_number_formats_keep_the_direct_layer(weights_dir):
    # a model of its own: the folded net shares the model's heads, which .to() converts
    net = FoldedSyncNet(load_syncnet(weights_dir=weights_dir), across_cores=True).to(torch.bfloat16)
    assert not net.shares_frames()
    with pytest.raises(RuntimeError, match="float32 on a CPU"):
        net.forward_lip_frames(np.zeros((5, 224, 224, 3), np.uint8), 1)


def test_streamed_windows_are_the_same_either_way(model, torch_threads):
    torch_threads(2)
    frames = np.random.default_rng(1).integers(0, 256, (13, 224, 224, 3), dtype=np.uint8)
    feats = []
    for across in (False, True):
        stream = LipWindows(FoldedSyncNet(model, across_cores=across), torch.device("cpu"), 3, limit=8)
        for frame in frames:
            stream.push(frame)
        feats.append(stream.finish())
    assert feats[0].shape == (8, 1024)
    torch.testing.assert_close(feats[1], feats[0], rtol=0, atol=1e-5 * float(feats[0].abs().max()))


@pytest.mark.parametrize("across", [True, False])
def test_the_evaluator_chooses_it_with_syncnet_across_cores(weights_dir, across):
    evaluator = SyncNetEvaluator(weights_dir=weights_dir, device="cpu", syncnet_across_cores=across)
    assert evaluator.syncnet_for(torch.float32).shares_frames() is across
    assert not evaluator.syncnet_for(torch.bfloat16).shares_frames()
