"""The Wav2Lip generator for inference: each eval-mode BatchNorm folded into the convolution before it.

Every block of the generator is a convolution (or transposed convolution), a BatchNorm, an optional
residual sum and a ReLU. In eval mode the BatchNorm is an affine map per output channel, so it can be
folded into the convolution's weights and bias (computed in float64, stored in the weights' dtype);
the residual sum and the ReLU then run in place on the convolution's output. That drops one pass over
every activation and two temporaries per block. On a 2-core AVX2 CPU, batches of 16 faces in float32
took 75-76 ms a face through :class:`lipsync.model.Wav2Lip` and 57-65 ms folded. Folded outputs equal
the model's to float32 rounding: on the test weights, 0.002% of the output's grey levels moved by 1,
and both are as far from a float64 forward pass (0.001% of grey levels off by 1).
"""

from __future__ import annotations

import copy
import os

import torch
from torch import nn

from common.folding import fold_into
from face_detection.winograd import WinogradConv2d
from lipsync.model import Conv2d, Conv2dTranspose, Wav2Lip, load_wav2lip

# The generator's 3x3 convolutions that run as Winograd F(m x m, 3x3) (face_detection.winograd) when the
# engine is asked for speed in float32 (precision auto on a CPU without native bf16), with their block m.
# Measured on a 2-core AVX2 AMD EPYC, batches of 16 faces, channels-last, ms per layer, direct -> Winograd:
# the decoder's 512-channel layers at 6x6 14.6 -> 8.1 (m = 3: the tiles fit exactly), its 384-channel ones
# at 12x12 29.7 -> 13.7 and 256-channel ones at 24x24 53 -> 28.8 (m = 4), the encoder's 256-channel ones at
# 6x6 3.3 -> 2.1 and 128-channel ones at 12x12 3.3 -> 2.3. The rest stay direct: with 128 channels at 48x48
# Winograd lost (55 -> 79-96 ms), with fewer channels or at 3x3 it lost or gained under a millisecond.
# The transformed kernels add 87 MB. The whole generator went from 775-811 to 663-667 ms a batch (best of 8).
WINOGRAD_BLOCKS = {
    **{f"face_encoder_blocks.3.{i}": 4 for i in (1, 2)},
    **{f"face_encoder_blocks.4.{i}": 3 for i in (1, 2)},
    **{f"face_decoder_blocks.2.{i}": 3 for i in (1, 2)},
    **{f"face_decoder_blocks.3.{i}": 4 for i in (1, 2)},
    **{f"face_decoder_blocks.4.{i}": 4 for i in (1, 2)},
}
# Their batches run a few faces at a time (face_detection.winograd.conv3x3): the 256-channel 24x24 layer on
# 16 faces at once rose 118-170 MB above its input, in parts of 3 faces 48 MB, at the same speed within
# the noise; the whole generator's peak over its loaded size went from 225-231 to 184-186 MB (direct: 140).
WINOGRAD_TILE_BYTES = 4 << 20


class FoldedConv(nn.Module):
    """A :class:`lipsync.model.Conv2d` or :class:`Conv2dTranspose` block with its BatchNorm folded in."""

    def __init__(self, block: Conv2d | Conv2dTranspose) -> None:
        super().__init__()
        conv, bn = block.conv_block
        self.conv = copy.deepcopy(conv)
        fold_into(self.conv, bn)
        self.residual = getattr(block, "residual", False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)  # a new tensor: safe to change in place
        if self.residual:
            out += x
        return out.relu_()


def fold_wav2lip(model: Wav2Lip) -> Wav2Lip:
    """``model`` (loaded, in eval mode) with every Conv2d / Conv2dTranspose block replaced, in place, by a
    :class:`FoldedConv`; returns it. For inference only: the model no longer trains, and its
    ``state_dict()`` no longer has the checkpoint's keys, so load the weights first."""
    if model.training:
        raise ValueError("fold_wav2lip needs a model in eval mode (its BatchNorms' running statistics)")
    _replace_blocks(model)
    return model.requires_grad_(False)


def use_winograd(model: Wav2Lip, blocks: dict[str, int] | None = None) -> int:
    """Make the convolutions of the folded ``model``'s blocks named in ``blocks`` (default
    :data:`WINOGRAD_BLOCKS`) Winograd F(m x m, 3x3) ones, in place; returns how many. Their outputs equal
    the direct convolutions' to about 1e-5 relative (float32 rounding of the tile transforms)."""
    blocks = WINOGRAD_BLOCKS if blocks is None else blocks
    found = {name: module for name, module in model.named_modules() if name in blocks}
    if missing := set(blocks) - set(found):
        raise ValueError(f"no such blocks in the generator: {sorted(missing)}")
    for name, module in found.items():
        if not isinstance(module, FoldedConv):
            raise ValueError(f"{name} is not a folded block (fold the model first)")
        module.conv = WinogradConv2d(module.conv, blocks[name], max_tile_bytes=WINOGRAD_TILE_BYTES)
    return len(found)


def _replace_blocks(module: nn.Module) -> None:
    for name, child in list(module.named_children()):
        if isinstance(child, (Conv2d, Conv2dTranspose)):
            setattr(module, name, FoldedConv(child))
        else:
            _replace_blocks(child)


def load_folded_wav2lip(name_or_path: str | os.PathLike = "wav2lip_gan", *, device: str | torch.device = "cpu",
                        weights_dir: str | os.PathLike | None = None,
                        dtype: torch.dtype = torch.float32, winograd: bool = False) -> Wav2Lip:
    """:func:`lipsync.model.load_wav2lip`, folded (:func:`fold_wav2lip`) in float32 on the CPU and then
    moved to ``device`` and ``dtype``, channels-last: a 16-bit model gets its folded weights rounded once.
    ``winograd``: the layers of :data:`WINOGRAD_BLOCKS` become Winograd convolutions (:func:`use_winograd`)."""
    model = fold_wav2lip(load_wav2lip(name_or_path, weights_dir=weights_dir))
    model = model.to(device=device, dtype=dtype, memory_format=torch.channels_last)
    if winograd:
        use_winograd(model)
    return model
