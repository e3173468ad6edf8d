"""A VGG block run in strips of rows equals the block on the whole map (and S3FD with strips its golden heads)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from face_detection.detector import FaceDetector
from face_detection.s3fd import S3FD
from face_detection.strips import strip_rows, vgg_block
from face_detection.winograd import WinogradConv2d
from tests.weightgen import golden_state_dict


def _convs(channels: list[int], seed: int) -> list[nn.Conv2d]:
    torch.manual_seed(seed)
    return [nn.Conv2d(cin, cout, 3, padding=1) for cin, cout in zip(channels, channels[1:], strict=False)]


def _whole(x: torch.Tensor, convs) -> tuple[torch.Tensor, torch.Tensor]:
    for conv in convs:
        x = F.relu(conv(x))
    return x, F.max_pool2d(x, 2, 2)


@pytest.mark.parametrize(("height", "width"), [(37, 29), (40, 31), (9, 5), (2, 7), (3, 3)])
@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("channels_last", [False, True])
def test_strips_equal_the_whole_map_bit_for_bit(height, width, depth, channels_last):
    convs = _convs([3, 8, 16, 8][:depth + 1], seed=height * 10 + depth)
    x = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(width))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        ref_pre, ref_pooled = _whole(x, convs)
        widest = max(c.out_channels for c in convs)
        for rows in (1, 2, 3, 5, height):
            pre, pooled = vgg_block(x, convs, strip_values=rows * 2 * width * widest, keep_pre_pool=True)
            assert torch.equal(pre, ref_pre) and torch.equal(pooled, ref_pooled), rows
            assert pooled.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
            _, pooled_only = vgg_block(x, convs, strip_values=rows * 2 * width * widest)
            assert torch.equal(pooled_only, ref_pooled)


def test_strip_rows_fill_the_budget():
    assert strip_rows((720, 1280), 64, None) is None
    assert strip_rows((180, 320), 64, 180 * 320 * 64) is None  # fits: the whole map at once
    assert strip_rows((720, 1280), 64, 1 << 20) == (1 << 20) // (2 * 1280 * 64) == 6
    assert strip_rows((720, 1280), 64, 10) == 1  # never less than one row


def test_winograd_layers_in_strips_stay_within_float_rounding():
    convs = [WinogradConv2d(c) for c in _convs([16, 32, 32], seed=3)]
    x = torch.randn(1, 16, 45, 38, generator=torch.Generator().manual_seed(1)).contiguous(
        memory_format=torch.channels_last)
    with torch.inference_mode():
        ref_pre, ref_pooled = _whole(x, convs)
        pre, pooled = vgg_block(x, convs, strip_values=4 * 2 * 38 * 32, keep_pre_pool=True)
    # F(4x4, 3x3) rounds to ~5e-6 of the map's scale per layer (face_detection.winograd), whatever the
    # strip; a strip cut in the wrong place would be off by the size of the values themselves
    scale = float(ref_pre.abs().max())
    torch.testing.assert_close(pre, ref_pre, rtol=0, atol=2e-5 * scale)
    torch.testing.assert_close(pooled, ref_pooled, rtol=0, atol=2e-5 * scale)


@pytest.fixture(scope="module")
def s3fd_sd() -> dict[str, torch.Tensor]:
    return golden_state_dict("s3fd.json")


def test_s3fd_in_strips_gives_its_whole_map_heads(s3fd_sd, golden):
    g = golden("s3fd_heads")
    x = torch.from_numpy(g["net_input"]).contiguous(memory_format=torch.channels_last)
    net = S3FD.from_state_dict(s3fd_sd).to(memory_format=torch.channels_last)
    with torch.inference_mode():
        whole = net(x)
        net.strip_values = 4 * 2 * 128 * 64  # conv1's maps in strips of 8 rows; blocks 2-4 cut too, block 5 whole
        stripped = net(x)
    for a, b in zip(stripped, whole, strict=True):
        assert torch.equal(a, b)
    np.testing.assert_allclose(stripped[0].numpy(), g["cls1"], atol=2e-5, rtol=1e-4)


def test_cpu_detector_runs_s3fd_in_strips(s3fd_sd):
    assert FaceDetector(s3fd_sd, variant="s3fd").net.strip_values is not None
