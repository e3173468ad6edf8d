"""Winograd F(m x m, 3x3) convolutions equal direct ones (the detectors' golden outputs with Winograd layers
are checked in test_face_detection.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from face_detection.s3fd import S3FD
from face_detection.sfd_face import SFDFace
from face_detection.winograd import (
    WinogradConv2d,
    conv3x3,
    runs_compiled,
    transform_kernel,
    transform_matrices,
    use_winograd,
)
from tests.weightgen import golden_state_dict


@pytest.mark.parametrize(("batch", "cin", "cout", "height", "width"),
                         [(1, 8, 16, 6, 10), (2, 5, 3, 7, 9), (3, 4, 4, 1, 1), (1, 16, 8, 2, 13), (2, 3, 7, 11, 4)])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("block", [2, 4, 6])
def test_conv3x3_equals_direct_convolution(batch, cin, cout, height, width, with_bias, block):
    gen = torch.Generator().manual_seed(batch * 100 + cin + height)
    x = torch.randn(batch, cin, height, width, generator=gen)
    w = torch.randn(cout, cin, 3, 3, generator=gen)
    b = torch.randn(cout, generator=gen) if with_bias else None
    ref = F.conv2d(x.double(), w.double(), None if b is None else b.double(), padding=1)
    out = conv3x3(x, transform_kernel(w, block), b)
    assert out.shape == ref.shape and out.dtype == torch.float32
    np.testing.assert_allclose(out.double().numpy(), ref.numpy(), rtol=0, atol=1e-5 * float(ref.abs().max()))


@pytest.mark.parametrize("block", [1, 2, 3, 4, 5, 6])
def test_transform_matrices_compute_a_1d_correlation(block):
    a_t, g, b_t = transform_matrices(block)
    rng = np.random.default_rng(block)
    d, k = torch.from_numpy(rng.normal(size=block + 2)), torch.from_numpy(rng.normal(size=3))
    expected = torch.stack([d[i:i + 3] @ k for i in range(block)])
    torch.testing.assert_close(a_t @ ((g @ k) * (b_t @ d)), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("block", "kernel"), [(3, 4), (2, 4), (1, 4), (2, 5), (4, 2)])
def test_transform_matrices_of_other_kernel_lengths_compute_a_1d_correlation(block, kernel):
    a_t, g, b_t = transform_matrices(block, kernel)
    assert a_t.shape == (block, block + kernel - 1) and g.shape == (block + kernel - 1, kernel)
    rng = np.random.default_rng(10 * block + kernel)
    d, k = torch.from_numpy(rng.normal(size=block + kernel - 1)), torch.from_numpy(rng.normal(size=kernel))
    expected = torch.stack([d[i:i + kernel] @ k for i in range(block)])
    torch.testing.assert_close(a_t @ ((g @ k) * (b_t @ d)), expected, rtol=0, atol=1e-12)


def test_f3x3_4x4_shares_the_input_transform_of_f4x4_3x3():
    """The compiled loops' B^T serves both: it depends on the points alone (six of them in each)."""
    assert torch.equal(transform_matrices(3, 4)[2], transform_matrices(4)[2])
    with pytest.raises(ValueError, match="finite points"):
        transform_matrices(6, 4)


def test_conv3x3_accepts_channels_last_and_contiguous_inputs():
    x = torch.randn(2, 6, 9, 8)
    w = torch.randn(5, 6, 3, 3)
    kernel = transform_kernel(w)
    a = conv3x3(x, kernel)
    b = conv3x3(x.contiguous(memory_format=torch.channels_last), kernel)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    ref = F.conv2d(x, w, padding=1)
    torch.testing.assert_close(a, ref, rtol=0, atol=1e-5 * float(ref.abs().max()))


@pytest.mark.parametrize("max_tile_bytes", [1, 5000, 20000])
def test_conv3x3_in_parts_of_the_batch_gives_the_same_result(max_tile_bytes):
    # one image's tiles here: 36 components x 3 x 3 tiles x 7 channels x 4 bytes = 9072 bytes, so the
    # parts are 1 (1 and 5000 bytes) or 2 images (20000); the whole batch of 5 in one go is the reference
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(5, 6, 11, 9, generator=gen)
    w, b = torch.randn(7, 6, 3, 3, generator=gen), torch.randn(7, generator=gen)
    kernel = transform_kernel(w, 4)
    whole = conv3x3(x, kernel, b, max_tile_bytes=None)
    parts = conv3x3(x, kernel, b, max_tile_bytes=max_tile_bytes)
    assert parts.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(parts, whole, rtol=0, atol=1e-6 * float(whole.abs().max()))
    ref = F.conv2d(x, w, b, padding=1)
    torch.testing.assert_close(parts, ref, rtol=0, atol=1e-5 * float(ref.abs().max()))


def test_module_and_eligibility():
    conv = torch.nn.Conv2d(4, 6, 3, padding=1)
    module = WinogradConv2d(conv)
    x = torch.randn(1, 4, 5, 5)
    with torch.inference_mode():
        torch.testing.assert_close(module(x), conv(x), rtol=1e-5, atol=1e-5)
    assert module.state_dict() == {}
    for bad in (torch.nn.Conv2d(4, 6, 3, padding=1, stride=2), torch.nn.Conv2d(4, 6, 3, padding=6, dilation=6),
                torch.nn.Conv2d(4, 6, 1), torch.nn.Conv2d(4, 6, 3, padding=1, groups=2)):
        with pytest.raises(ValueError, match="not a 3x3 stride-1"):
            WinogradConv2d(bad)
    with pytest.raises(ValueError, match="Cout, Cin, 3, 3"):
        transform_kernel(torch.zeros(2, 2, 1, 1))
    with pytest.raises(ValueError, match="does not fit"):
        conv3x3(torch.zeros(1, 3, 4, 4), transform_kernel(torch.zeros(2, 4, 3, 3)))


@pytest.mark.parametrize(("net_cls", "manifest"), [(S3FD, "s3fd.json"), (SFDFace, "sfd_face.json")])
def test_use_winograd_converts_the_wide_vgg_layers(net_cls, manifest):
    net = net_cls.from_state_dict(golden_state_dict(manifest))
    converted = use_winograd(net)
    wino = [m for m in net.modules() if isinstance(m, WinogradConv2d)]
    # conv3_1 (128->256) through conv5_3; fc6, the stride-2 extras and the thin heads stay direct
    assert converted == len(wino) == 9
    assert sorted((m.in_channels, m.out_channels) for m in wino) == sorted(
        [(128, 256), (256, 256), (256, 256), (256, 512)] + [(512, 512)] * 5)


@pytest.fixture
def one_thread(torch_threads):
    torch_threads(1)


@pytest.mark.parametrize(("batch", "cin", "cout", "height", "width"),
                         [(1, 8, 16, 6, 10), (2, 5, 3, 7, 9), (3, 4, 4, 1, 1), (1, 16, 8, 2, 13), (2, 3, 7, 11, 4),
                          (1, 64, 64, 18, 32)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_compiled_tile_transforms_equal_direct_convolution(one_thread, batch, cin, cout, height, width, with_bias):
    gen = torch.Generator().manual_seed(batch * 100 + cin + height)
    x = torch.randn(batch, cin, height, width, generator=gen)
    w = torch.randn(cout, cin, 3, 3, generator=gen)
    b = torch.randn(cout, generator=gen) if with_bias else None
    assert runs_compiled(x, 4) and not runs_compiled(x, 2) and not runs_compiled(x.double(), 4)
    ref = F.conv2d(x.double(), w.double(), None if b is None else b.double(), padding=1)
    out = conv3x3(x, transform_kernel(w, 4), b)
    assert out.shape == ref.shape and out.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_allclose(out.double().numpy(), ref.numpy(), rtol=0, atol=1e-5 * float(ref.abs().max()))
    torch.set_num_threads(2)  # the torch transforms: the same convolution to float32 rounding
    np.testing.assert_allclose(conv3x3(x, transform_kernel(w, 4), b).numpy(), out.numpy(), rtol=0,
                               atol=1e-5 * float(ref.abs().max()))


@pytest.mark.parametrize(("strip_bytes", "firsts"), [(2 << 20, [0]), (6048, [0, 1, 2]), (12096, [0, 2])])
def test_compiled_tile_transforms_in_parts_and_strips(one_thread, monkeypatch, strip_bytes, firsts):
    from face_detection import winograd, winograd_kernels

    # 11x21 maps: 3 x 6 tiles; a tile row of 7 channels is 36 x 6 x 7 x 4 = 6048 bytes, as much as the
    # kernel, so the strips are the whole map, one tile row, or two and then one
    monkeypatch.setattr(winograd, "COMPILED_STRIP_BYTES", strip_bytes)
    calls = []
    real = winograd_kernels.input_tiles
    monkeypatch.setattr(winograd_kernels, "input_tiles",
                        lambda x, first, n, out, base=0: (calls.append(first), real(x, first, n, out, base)))
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(5, 6, 11, 21, generator=gen)
    w, b = torch.randn(7, 6, 3, 3, generator=gen), torch.randn(7, generator=gen)
    out = conv3x3(x, transform_kernel(w, 4), b, max_tile_bytes=40000)  # 2 images (18144 bytes each) a part
    assert calls == firsts * 5
    ref = F.conv2d(x, w, b, padding=1)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5 * float(ref.abs().max()))


def test_fused_only_layers_are_direct_convolutions_on_more_threads(monkeypatch):
    from face_detection import winograd_kernels

    conv = torch.nn.Conv2d(64, 64, 3, padding=1).to(memory_format=torch.channels_last)
    module = WinogradConv2d(conv, compiled_only=True)
    x = torch.randn(1, 64, 10, 12).contiguous(memory_format=torch.channels_last)
    calls = []
    real = winograd_kernels.output_map
    monkeypatch.setattr(winograd_kernels, "output_map", lambda *a: (calls.append(1), real(*a)))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.inference_mode():
            direct = conv(x)
            torch.testing.assert_close(module(x), direct, rtol=0, atol=0)  # the same operation
            assert calls == []
            torch.set_num_threads(1)
            torch.testing.assert_close(module(x), direct, rtol=0, atol=1e-5 * float(direct.abs().max()))
            assert calls == [1]
    finally:
        torch.set_num_threads(before)
    assert "compiled transforms only" in repr(module) and module.state_dict() == {}


def test_use_winograd_with_the_compiled_transforms_converts_the_first_layers_too():
    net = SFDFace.from_state_dict(golden_state_dict("sfd_face.json"))
    assert use_winograd(net, min_compiled=64) == 12
    compiled_only = sorted((m.in_channels, m.out_channels) for m in net.modules()
                        if isinstance(m, WinogradConv2d) and m.compiled_only)
    assert compiled_only == [(64, 64), (64, 128), (128, 128)]  # conv1_1 (3 channels in) stays direct
    net = SFDFace.from_state_dict(golden_state_dict("sfd_face.json"))
    assert use_winograd(net, block=2, min_compiled=64) == 9  # the compiled transforms are F(4x4, 3x3) only


@pytest.mark.parametrize(("height", "width", "cin", "cout", "strip"), [(6, 6, 1, 1, 1), (11, 9, 5, 7, 1),
                                                                          (11, 9, 5, 7, 2), (20, 17, 12, 4, 7)])
@pytest.mark.parametrize("relu", [True, False])
def test_compiled_f3x3_4x4_transforms_equal_a_valid_correlation(one_thread, height, width, cin, cout, strip, relu):
    """input_tiles_3x3, the tiles' products and output_map_3x3, in strips of tile rows, give the valid 4x4
    correlation (plus bias, through a ReLU or not); the strips' last may be lower than the others."""
    from face_detection import winograd_kernels

    gen = torch.Generator().manual_seed(height * width + cin)
    x, w, b = torch.randn(height, width, cin, generator=gen), torch.randn(cout, cin, 4, 4, generator=gen), \
        torch.randn(cout, generator=gen)
    _, g, _ = transform_matrices(3, 4)
    kernel = torch.einsum("ik,ockl,jl->jico", g, w.double(), g).reshape(36, cin, cout).float()
    ref = F.conv2d(x.permute(2, 0, 1)[None].double(), w.double(), b.double())[0].permute(1, 2, 0)
    ref = ref.clamp(min=0) if relu else ref
    out = np.full((height - 3, width - 3, cout), np.nan, np.float32)
    rows, cols = -(-(height - 3) // 3), -(-(width - 3) // 3)
    for first in range(0, rows, strip):
        n = min(strip, rows - first)
        tiles = np.empty((36, n * cols, cin), np.float32)
        winograd_kernels.input_tiles_3x3(x.numpy(), first, n, tiles)
        products = torch.bmm(torch.from_numpy(tiles), kernel).numpy()
        winograd_kernels.output_map_3x3(products, first, n, b.numpy(), out, relu=relu)
    np.testing.assert_allclose(out, ref.numpy(), rtol=0, atol=1e-5 * float(ref.abs().max()))


def test_loading_the_kernels_leaves_nothing_to_compile_for_the_real_calls(one_thread):
    """load_kernels uses the argument types of the real calls, so the models' own calls find machine
    code for them (a new type would be compiled in the first call, seconds, instead)."""
    from face_detection import winograd_kernels
    from face_detection.winograd import load_kernels
    from syncnet.lipconv import WinogradLipConv

    assert load_kernels()
    compiled = [winograd_kernels._input_tiles, winograd_kernels._output_map, winograd_kernels._output_map_3x3]
    before = [len(f.signatures) for f in compiled]
    assert min(before) >= 1
    x = torch.randn(1, 8, 9, 10)
    conv3x3(x, transform_kernel(torch.randn(4, 8, 3, 3)), torch.randn(4))
    lip = torch.nn.Conv2d(15, 6, 7, stride=2)
    with torch.inference_mode():
        WinogradLipConv(lip, 5)(np.zeros((6, 16, 16, 3), np.uint8), 2)
    assert [len(f.signatures) for f in compiled] == before
