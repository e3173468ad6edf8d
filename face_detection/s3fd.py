"""S3FD face detector network as used by Wav2Lip (``s3fd.pth`` = ``s3fd-619a316812.pth``).

Layer names are the checkpoint's own (``conv1_1`` ... ``conv7_2``, ``conv3_3_norm``,
``conv3_3_norm_mbox_conf`` ...), so the file loads with a strict ``load_state_dict`` and no renaming.
Zhang et al., "S3FD: Single Shot Scale-invariant Face Detector", ICCV 2017.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from face_detection.strips import vgg_block

# ||x||_2 over channels gets this added before dividing, so an all-zero feature vector stays zero
L2NORM_EPS = 1e-10
# Initial L2Norm scales from the paper (the checkpoint stores the learned values)
L2NORM_SCALES = {"conv3_3_norm": 10.0, "conv4_3_norm": 8.0, "conv5_3_norm": 5.0}
# conv3_3's classifier predicts 3 background logits and 1 face logit ("max-out background label",
# paper section 3.3); the background score is their maximum
MAXOUT_BACKGROUND = 3
# The 2x2 stride-2 max-pools of the backbone, in order (after conv1_2, 2_2, 3_3, 4_3, 5_3); "M"
# rounds the map size down, as every pool of this net does (see face_detection.detector.MIN_SIDE)
POOLS = ("M",) * 5


class L2Norm(nn.Module):
    """Scale each position's channel vector to unit L2 norm, then by a learned per-channel weight."""

    def __init__(self, channels: int, scale: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), float(scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = x.pow(2).sum(dim=1, keepdim=True).sqrt() + L2NORM_EPS
        # (x / norm) * weight, with the product in place: on a 720p frame conv3_3's map is 59 MB
        return (x / norm).mul_(self.weight.view(1, -1, 1, 1))


def maxout_background(cls1: torch.Tensor) -> torch.Tensor:
    """(B, 4, H, W) conv3_3 logits -> (B, 2, H, W): [max of the 3 background logits, face logit]."""
    background = cls1[:, :MAXOUT_BACKGROUND].amax(dim=1, keepdim=True)
    return torch.cat([background, cls1[:, MAXOUT_BACKGROUND:]], dim=1)


class S3FD(nn.Module):
    """VGG16 backbone + 6 detection levels (strides 4..128).

    ``forward(x (B, 3, H, W) float32, mean-subtracted)`` returns the 12 raw head outputs
    ``[cls1, reg1, ..., cls6, reg6]``: ``cls`` (B, 2, h, w) logits [background, face] (level 1
    already max-out reduced), ``reg`` (B, 4, h, w) SSD box offsets.
    """

    def __init__(self) -> None:
        super().__init__()
        conv = nn.Conv2d
        self.conv1_1 = conv(3, 64, 3, padding=1)
        self.conv1_2 = conv(64, 64, 3, padding=1)
        self.conv2_1 = conv(64, 128, 3, padding=1)
        self.conv2_2 = conv(128, 128, 3, padding=1)
        self.conv3_1 = conv(128, 256, 3, padding=1)
        self.conv3_2 = conv(256, 256, 3, padding=1)
        self.conv3_3 = conv(256, 256, 3, padding=1)
        self.conv4_1 = conv(256, 512, 3, padding=1)
        self.conv4_2 = conv(512, 512, 3, padding=1)
        self.conv4_3 = conv(512, 512, 3, padding=1)
        self.conv5_1 = conv(512, 512, 3, padding=1)
        self.conv5_2 = conv(512, 512, 3, padding=1)
        self.conv5_3 = conv(512, 512, 3, padding=1)
        # Wav2Lip's port (from face-alignment) uses padding 3 without dilation, not the paper's
        # dilated fc6: the fc7 map is 4 pixels larger per side than conv5_3's pooled map
        self.fc6 = conv(512, 1024, 3, padding=3)
        self.fc7 = conv(1024, 1024, 1)
        self.conv6_1 = conv(1024, 256, 1)
        self.conv6_2 = conv(256, 512, 3, stride=2, padding=1)
        self.conv7_1 = conv(512, 128, 1)
        self.conv7_2 = conv(128, 256, 3, stride=2, padding=1)

        self.conv3_3_norm = L2Norm(256, L2NORM_SCALES["conv3_3_norm"])
        self.conv4_3_norm = L2Norm(512, L2NORM_SCALES["conv4_3_norm"])
        self.conv5_3_norm = L2Norm(512, L2NORM_SCALES["conv5_3_norm"])

        self.conv3_3_norm_mbox_conf = conv(256, MAXOUT_BACKGROUND + 1, 3, padding=1)
        self.conv3_3_norm_mbox_loc = conv(256, 4, 3, padding=1)
        self.conv4_3_norm_mbox_conf = conv(512, 2, 3, padding=1)
        self.conv4_3_norm_mbox_loc = conv(512, 4, 3, padding=1)
        self.conv5_3_norm_mbox_conf = conv(512, 2, 3, padding=1)
        self.conv5_3_norm_mbox_loc = conv(512, 4, 3, padding=1)
        self.fc7_mbox_conf = conv(1024, 2, 3, padding=1)
        self.fc7_mbox_loc = conv(1024, 4, 3, padding=1)
        self.conv6_2_mbox_conf = conv(512, 2, 3, padding=1)
        self.conv6_2_mbox_loc = conv(512, 4, 3, padding=1)
        self.conv7_2_mbox_conf = conv(256, 2, 3, padding=1)
        self.conv7_2_mbox_loc = conv(256, 4, 3, padding=1)
        # the backbone runs maps larger than this many values in strips of rows (see
        # face_detection.strips: the same result, faster on a CPU); None: always whole maps
        self.strip_values: int | None = None

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, torch.Tensor]) -> S3FD:
        """Build the net and load ``state_dict`` strictly (raises on any missing/unexpected key)."""
        net = cls()
        net.load_state_dict(state_dict, strict=True)
        return net.eval()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        strips = self.strip_values
        _, h = vgg_block(x, [self.conv1_1, self.conv1_2], strip_values=strips)
        _, h = vgg_block(h, [self.conv2_1, self.conv2_2], strip_values=strips)
        f3_3, h = vgg_block(h, [self.conv3_1, self.conv3_2, self.conv3_3], strip_values=strips, keep_pre_pool=True)
        f4_3, h = vgg_block(h, [self.conv4_1, self.conv4_2, self.conv4_3], strip_values=strips, keep_pre_pool=True)
        f5_3, h = vgg_block(h, [self.conv5_1, self.conv5_2, self.conv5_3], strip_values=strips, keep_pre_pool=True)
        h = F.relu(self.fc6(h), inplace=True)
        ffc7 = h = F.relu(self.fc7(h), inplace=True)
        h = F.relu(self.conv6_1(h), inplace=True)
        f6_2 = h = F.relu(self.conv6_2(h), inplace=True)
        h = F.relu(self.conv7_1(h), inplace=True)
        f7_2 = F.relu(self.conv7_2(h), inplace=True)

        f3_3 = self.conv3_3_norm(f3_3)
        f4_3 = self.conv4_3_norm(f4_3)
        f5_3 = self.conv5_3_norm(f5_3)
        return [
            maxout_background(self.conv3_3_norm_mbox_conf(f3_3)), self.conv3_3_norm_mbox_loc(f3_3),
            self.conv4_3_norm_mbox_conf(f4_3), self.conv4_3_norm_mbox_loc(f4_3),
            self.conv5_3_norm_mbox_conf(f5_3), self.conv5_3_norm_mbox_loc(f5_3),
            self.fc7_mbox_conf(ffc7), self.fc7_mbox_loc(ffc7),
            self.conv6_2_mbox_conf(f6_2), self.conv6_2_mbox_loc(f6_2),
            self.conv7_2_mbox_conf(f7_2), self.conv7_2_mbox_loc(f7_2),
        ]
