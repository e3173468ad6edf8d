"""A VGG block (3x3 convolutions, each with a ReLU, then a 2x2 max-pool) run over a large map in row strips.

On a full 720p frame S3FD's first blocks work on maps of 60-240 MB (64 channels at 1280x720), far
beyond a CPU's caches, so every layer streams its whole input and output through memory. Cut into
strips of rows, one strip goes through all the block's layers while it is still in cache.

A strip of pooled output rows ``[r0, r1)`` comes from block-input rows ``[2 r0 - k, 2 r1 + k)`` (k
convolutions, each widening the need by one row per side) clipped to the map. Each convolution pads
its input by one zero row, which is the network's own padding where the strip meets the map's edge,
and is wrong one row deep where the strip was cut; that row is dropped after each convolution. Every
value left is computed from exactly the inputs the whole-map convolution uses, so the result is the
same (bit for bit with oneDNN's direct convolutions, tested).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

Layer = Callable[[torch.Tensor], torch.Tensor]


def strip_rows(map_hw: tuple[int, int], channels: int, values: int | None) -> int | None:
    """Pooled output rows per strip so that one strip's widest map holds about ``values`` values
    (at least one row); None, meaning the whole map at once, when ``values`` is None or the map fits."""
    height, width = map_hw
    if values is None or height * width * channels <= values:
        return None
    # a strip of r pooled rows makes 2r convolution rows of the map's width
    return max(1, values // (2 * width * channels))


def vgg_block(x: torch.Tensor, convs: Sequence[Layer], *, strip_values: int | None = None,
              keep_pre_pool: bool = False) -> tuple[torch.Tensor | None, torch.Tensor]:
    """``relu(conv)`` for each of ``convs`` (3x3, stride 1, padding 1, with ``out_channels``), then
    ``max_pool2d(2, 2)``, as the whole-map layers compute them.

    Returns ``(pre_pool, pooled)``: the last ReLU's output (None unless ``keep_pre_pool``) and the
    pooled map. ``strip_values``: run the block in strips of rows whose widest map holds about this
    many values (see :func:`strip_rows`); None runs each layer on the whole map.
    """
    height, width = x.shape[2:]
    pooled_height = height // 2
    rows = strip_rows((height, width), max(conv.out_channels for conv in convs), strip_values)
    if rows is None or rows >= pooled_height:
        for conv in convs:
            x = F.relu(conv(x), inplace=True)
        return (x if keep_pre_pool else None), F.max_pool2d(x, 2, 2)
    depth = len(convs)
    layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    channels = convs[-1].out_channels
    pooled = x.new_empty((x.shape[0], channels, pooled_height, width // 2)).contiguous(memory_format=layout)
    pre_pool = x.new_empty((x.shape[0], channels, height, width)).contiguous(memory_format=layout) \
        if keep_pre_pool else None
    for r0 in range(0, pooled_height, rows):
        r1 = min(pooled_height, r0 + rows)
        top, bottom = max(0, 2 * r0 - depth), min(height, 2 * r1 + depth)
        h = x[:, :, top:bottom]
        for conv in convs:
            h = F.relu(conv(h), inplace=True)
            cut_top, cut_bottom = int(top > 0), int(bottom < height)  # rows padded where the strip was cut
            h = h[:, :, cut_top:h.shape[2] - cut_bottom]
            top, bottom = top + cut_top, bottom - cut_bottom
        start = 2 * r0 - top
        if pre_pool is not None:
            # the last strip also fills an odd map's bottom row, which the pool drops
            stop = 2 * r1 if r1 < pooled_height else height
            pre_pool[:, :, 2 * r0:stop] = h[:, :, start:start + stop - 2 * r0]
        pooled[:, :, r0:r1] = F.max_pool2d(h[:, :, start:start + 2 * (r1 - r0)], 2, 2)
    return pre_pool, pooled
