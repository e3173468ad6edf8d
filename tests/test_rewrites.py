"""The detectors' exact layer rewrites give the layers' own outputs."""

from __future__ import annotations

import pytest
import torch

from face_detection.rewrites import TrimmedDilatedConv, is_trimmable, merged_conv
from face_detection.sfd_face import SFDFace


@pytest.mark.parametrize(("height", "width"), [(5, 10), (10, 5), (4, 6), (7, 13), (1, 1), (6, 7)])
def test_trimmed_dilated_conv_equals_the_convolution(height, width):
    gen = torch.Generator().manual_seed(height * 31 + width)
    conv = torch.nn.Conv2d(8, 5, 3, padding=6, dilation=6).eval()
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen))
    x = torch.randn(2, 8, height, width, generator=gen)
    with torch.inference_mode():
        ref, out = conv(x), TrimmedDilatedConv(conv)(x)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6 * float(ref.abs().max()))


def test_only_dilated_convolutions_padded_by_their_dilation_are_trimmed():
    assert is_trimmable(torch.nn.Conv2d(4, 4, 3, padding=6, dilation=6))
    for conv in (torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.Conv2d(4, 4, 3, padding=3, dilation=6),
                 torch.nn.Conv2d(4, 4, 3, padding=6, dilation=6, stride=2)):
        assert not is_trimmable(conv)
        with pytest.raises(ValueError, match="padded by its dilation"):
            TrimmedDilatedConv(conv)


def test_merged_conv_stacks_the_outputs():
    gen = torch.Generator().manual_seed(3)
    a, b = torch.nn.Conv2d(6, 4, 3, padding=1), torch.nn.Conv2d(6, 2, 3, padding=1)
    a, b = a.to(memory_format=torch.channels_last), b.to(memory_format=torch.channels_last)
    x = torch.randn(1, 6, 9, 11, generator=gen).contiguous(memory_format=torch.channels_last)
    merged = merged_conv([a, b])
    assert merged.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        torch.testing.assert_close(merged(x), torch.cat([a(x), b(x)], 1), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="differ"):
        merged_conv([a, torch.nn.Conv2d(5, 2, 3, padding=1)])
    with pytest.raises(ValueError, match="bias"):
        merged_conv([a, torch.nn.Conv2d(6, 2, 3, padding=1, bias=False)])


def test_sfd_face_rewrites_keep_the_outputs():
    net = SFDFace().eval()
    x = torch.randn(1, 3, 180, 320, generator=torch.Generator().manual_seed(4)) * 50
    with torch.inference_mode():
        ref = net(x)
        net.use_rewrites()
        net.use_rewrites()  # twice is once
        out = net(x)
    assert isinstance(net.vgg[31], TrimmedDilatedConv) and len(net.merged_heads) == 6
    assert out.feature_hw == ref.feature_hw
    torch.testing.assert_close(out.loc, ref.loc, rtol=0, atol=1e-5 * float(ref.loc.abs().max()))
    torch.testing.assert_close(out.conf, ref.conf, rtol=0, atol=1e-6)
