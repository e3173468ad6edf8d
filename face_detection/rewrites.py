"""Exact rewrites of detector layers for inference: the same sums, fewer passes or fewer taps.

- :class:`TrimmedDilatedConv`: a dilated 3x3 convolution (sfd_face's fc6: dilation and padding 6)
  whose outer kernel rows or columns are left out while the map is no taller or wider than the
  dilation, because those taps then read only the zero padding. On a 320x180 frame fc6 works on a
  10x5 map, so its top and bottom rows never reach the map: 6.14 -> 2.20 ms on one thread (2-core
  Zen 4 EPYC), the outputs equal (the dropped products are exact zeros).
- :func:`merged_conv`: convolutions of one input with the same geometry (a detection level's
  ``loc`` and ``conf`` heads) as one, whose outputs are the parts' stacked: one pass over the source
  map instead of two. sfd_face's first level (256 channels at 80x45): 4.95 -> 2.38 ms on one thread.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class TrimmedDilatedConv(nn.Module):
    """``conv`` (3x3, stride 1, padding = dilation, no groups), leaving out the taps that fall wholly
    in the padding for the map it is given; the weights are shared with ``conv``."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if not is_trimmable(conv):
            raise ValueError(f"not a 3x3 stride-1 convolution padded by its dilation: {conv}")
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (dil_h, dil_w), (height, width) = self.conv.dilation, x.shape[2:]
        # output row y reads input rows y - d and y + d: both outside the map for every y when H <= d
        rows = slice(1, 2) if height <= dil_h else slice(0, 3)
        cols = slice(1, 2) if width <= dil_w else slice(0, 3)
        weight = self.conv.weight[:, :, rows, cols]
        padding = (0 if height <= dil_h else dil_h, 0 if width <= dil_w else dil_w)
        return F.conv2d(x, weight, self.conv.bias, padding=padding, dilation=self.conv.dilation)


def is_trimmable(conv: nn.Module) -> bool:
    return (isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.dilation != (1, 1) and conv.padding == conv.dilation and conv.groups == 1
            and conv.padding_mode == "zeros")


def merged_conv(convs: Sequence[nn.Conv2d]) -> nn.Conv2d:
    """One convolution whose output channels are those of ``convs`` (same input channels, kernel,
    stride, padding and dilation), in order; weights copied, in their dtype, device and layout."""
    first = convs[0]
    geometry = (first.in_channels, first.kernel_size, first.stride, first.padding, first.dilation, first.groups)
    if any((c.in_channels, c.kernel_size, c.stride, c.padding, c.dilation, c.groups) != geometry for c in convs):
        raise ValueError("the convolutions to merge differ in input or geometry")
    if len({c.bias is None for c in convs}) > 1:
        raise ValueError("the convolutions to merge must all have a bias or none")
    merged = nn.Conv2d(first.in_channels, sum(c.out_channels for c in convs), first.kernel_size,
                       stride=first.stride, padding=first.padding, dilation=first.dilation, groups=first.groups,
                       bias=first.bias is not None)
    weight = first.weight
    with torch.no_grad():
        merged.weight = nn.Parameter(torch.cat([c.weight for c in convs]).contiguous(
            memory_format=torch.channels_last if weight.is_contiguous(memory_format=torch.channels_last)
            else torch.contiguous_format), requires_grad=False)
        if merged.bias is not None:
            merged.bias = nn.Parameter(torch.cat([c.bias for c in convs]), requires_grad=False)
    return merged.eval()
