"""S3FD as packaged by syncnet_python (``sfd_face.pth``), used by the LSE-D/LSE-C evaluation pipeline.

Same weights as Wav2Lip's ``s3fd.pth`` under other names (``vgg.N``, ``L2Norm3_3.weight``, ``extras.N``,
``loc.N``, ``conf.N``) and two architectural differences: fc6 is dilated (padding 6, dilation 6) and
the max-pool after conv3_3 rounds up (``ceil_mode``). Both change the outputs, so each checkpoint
runs in its own net.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from face_detection.postprocess import ssd_detect, ssd_priors
from face_detection.rewrites import TrimmedDilatedConv, merged_conv
from face_detection.s3fd import L2NORM_SCALES, L2Norm, maxout_background
from face_detection.strips import vgg_block

# VGG16 conv channels per block; "M" = 2x2 max-pool, "C" = the same with ceil_mode (after conv3_3)
_VGG_PLAN = (64, 64, "M", 128, 128, "M", 256, 256, 256, "C", 512, 512, 512, "M", 512, 512, 512, "M")
POOLS = tuple(item for item in _VGG_PLAN if item in ("M", "C"))  # the max-pools, in order
# indices into ``vgg`` after which the conv3_3 / conv4_3 features are taken (after their ReLU), and
# where conv5_3's ReLU ends; the layer numbers are the checkpoint's ``vgg.N`` names
_CONV3_3_END, _CONV4_3_END, _CONV5_3_END = 16, 23, 30
_FC6 = 31  # the dilated fc6, right after conv5_3's ReLU and the last pool
# where the first two blocks start in ``vgg``: conv, ReLU, conv, ReLU, 2x2 max-pool (rounding down) each
_FIRST_BLOCKS = (0, 5)
# (in, out) channels of the extra layers: 1x1 reduce, then 3x3 stride 2
_EXTRAS = ((1024, 256, 1), (256, 512, 3), (512, 128, 1), (128, 256, 3))
_SOURCE_CHANNELS = (256, 512, 512, 1024, 512, 256)


class SFDOutput(NamedTuple):
    loc: torch.Tensor  # (B, P, 4) raw SSD offsets
    conf: torch.Tensor  # (B, P, 2) softmax [background, face]
    feature_hw: tuple[tuple[int, int], ...]  # map size of each of the 6 levels (for the priors)


def _vgg() -> nn.ModuleList:
    layers: list[nn.Module] = []
    channels = 3
    for item in _VGG_PLAN:
        if item in ("M", "C"):
            layers.append(nn.MaxPool2d(2, 2, ceil_mode=item == "C"))
        else:
            layers += [nn.Conv2d(channels, int(item), 3, padding=1), nn.ReLU(inplace=True)]
            channels = int(item)
    # fc6 dilated by 6 keeps the map size (padding = dilation for a 3x3 kernel); fc7 is 1x1
    layers += [nn.Conv2d(512, 1024, 3, padding=6, dilation=6), nn.ReLU(inplace=True),
               nn.Conv2d(1024, 1024, 1), nn.ReLU(inplace=True)]
    return nn.ModuleList(layers)


class SFDFace(nn.Module):
    """``forward(x (B, 3, H, W) float32, mean-subtracted RGB)`` -> :class:`SFDOutput`."""

    def __init__(self) -> None:
        super().__init__()
        self.vgg = _vgg()
        self.L2Norm3_3 = L2Norm(256, L2NORM_SCALES["conv3_3_norm"])
        self.L2Norm4_3 = L2Norm(512, L2NORM_SCALES["conv4_3_norm"])
        self.L2Norm5_3 = L2Norm(512, L2NORM_SCALES["conv5_3_norm"])
        self.extras = nn.ModuleList(
            nn.Conv2d(cin, cout, k, stride=1 if k == 1 else 2, padding=k // 2) for cin, cout, k in _EXTRAS
        )
        self.loc = nn.ModuleList(nn.Conv2d(c, 4, 3, padding=1) for c in _SOURCE_CHANNELS)
        # level 1 has 3 background logits + 1 face logit (max-out), the others 2
        self.conf = nn.ModuleList(
            nn.Conv2d(c, 4 if i == 0 else 2, 3, padding=1) for i, c in enumerate(_SOURCE_CHANNELS)
        )

        self.merged_heads: list[nn.Conv2d] | None = None  # see use_rewrites
        # the first two VGG blocks run maps larger than this many values in strips of rows (the same
        # result; see face_detection.strips); None: whole maps
        self.strip_values: int | None = None

    def use_rewrites(self) -> None:
        """For inference, after the weights are loaded and the net is on its device, dtype and layout:
        fc6 leaves out the taps that only read padding, and each level's loc and conf heads run as
        one convolution (:mod:`face_detection.rewrites`; the same outputs). The net's ``state_dict()``
        then names fc6 ``vgg.31.conv``."""
        if not isinstance(self.vgg[_FC6], TrimmedDilatedConv):
            self.vgg[_FC6] = TrimmedDilatedConv(self.vgg[_FC6])
        self.merged_heads = [merged_conv([loc, conf]) for loc, conf in zip(self.loc, self.conf, strict=True)]

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, torch.Tensor]) -> SFDFace:
        """Build the net and load ``state_dict`` strictly (raises on any missing/unexpected key)."""
        net = cls()
        net.load_state_dict(state_dict, strict=True)
        return net.eval()

    def forward(self, x: torch.Tensor) -> SFDOutput:
        sources = []
        start = 0
        if self.strip_values is not None:  # the first two blocks in strips of rows (face_detection.strips)
            for first in _FIRST_BLOCKS:
                _, x = vgg_block(x, [self.vgg[first], self.vgg[first + 2]], strip_values=self.strip_values)
            start = _FIRST_BLOCKS[-1] + 5
        for end, norm in ((_CONV3_3_END, self.L2Norm3_3), (_CONV4_3_END, self.L2Norm4_3),
                          (_CONV5_3_END, self.L2Norm5_3), (len(self.vgg), None)):
            for layer in self.vgg[start:end]:
                x = layer(x)
            sources.append(x if norm is None else norm(x))
            start = end
        for k, layer in enumerate(self.extras):
            x = F.relu(layer(x), inplace=True)
            if k % 2 == 1:
                sources.append(x)

        locs, confs = [], []
        for i, source in enumerate(sources):
            if self.merged_heads is None:
                loc, c = self.loc[i](source), self.conf[i](source)
            else:
                both = self.merged_heads[i](source)
                loc, c = both[:, :4], both[:, 4:]
            if i == 0:
                c = maxout_background(c)
            locs.append(loc.permute(0, 2, 3, 1).flatten(1, 2))
            confs.append(c.permute(0, 2, 3, 1).flatten(1, 2))
        return SFDOutput(
            loc=torch.cat(locs, 1),
            conf=torch.cat(confs, 1).softmax(dim=-1),
            feature_hw=tuple((int(s.shape[2]), int(s.shape[3])) for s in sources),
        )

    @torch.inference_mode()
    def detect(self, x: torch.Tensor) -> np.ndarray:
        """The reference net's full output: (B, 2, 750, 5) [score, x1, y1, x2, y2] normalised (see ssd_detect)."""
        out = self(x)
        priors = ssd_priors(tuple(x.shape[2:]), out.feature_hw)
        return ssd_detect(out.loc.float().cpu().numpy(), out.conf.float().cpu().numpy(), priors)

