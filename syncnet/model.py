"""SyncNet "S" (syncnet_python's SyncNetModel) with the checkpoint's own layer names.

Two towers map 0.2 s of audio and 0.2 s of mouth video into a shared 1024-d space; the smaller the
Euclidean distance between the two embeddings, the better the lips match the sound. The layer
indices inside each ``nn.Sequential`` (``netcnnaud.0``, ``netcnnaud.4``, ...) are those of
``syncnet_v2.model``, so the file loads without renaming.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from common import weights

EMBED_DIM = 1024
N_MFCC = 13


def _conv2d_bn(cin: int, cout: int, **conv: object) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, **conv), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def _conv3d_bn(cin: int, cout: int, **conv: object) -> list[nn.Module]:
    return [nn.Conv3d(cin, cout, **conv), nn.BatchNorm3d(cout), nn.ReLU(inplace=True)]


def _fc_head(dim: int = 512, out: int = EMBED_DIM) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, dim), nn.BatchNorm1d(dim), nn.ReLU(inplace=True), nn.Linear(dim, out))


class SyncNet(nn.Module):
    """syncnet_python's model S: ``forward_aud`` (B,1,13,20) and ``forward_lip`` (B,3,5,224,224) -> (B,1024).

    Lip input is BGR in 0..255 (no mean/scale), channels first, time second, as the reference feeds it.
    Embeddings are not normalised.
    """

    def __init__(self) -> None:
        super().__init__()
        # (B,1,13,20): 13 MFCC x 20 steps -> (B,512,1,1)
        self.netcnnaud = nn.Sequential(
            *_conv2d_bn(1, 64, kernel_size=3, padding=1),
            nn.MaxPool2d(kernel_size=1, stride=1),
            *_conv2d_bn(64, 192, kernel_size=3, padding=1),
            nn.MaxPool2d(kernel_size=3, stride=(1, 2)),  # 13x20 -> 11x9
            *_conv2d_bn(192, 384, kernel_size=3, padding=1),
            *_conv2d_bn(384, 256, kernel_size=3, padding=1),
            *_conv2d_bn(256, 256, kernel_size=3, padding=1),
            nn.MaxPool2d(kernel_size=3, stride=2),  # 11x9 -> 5x4
            *_conv2d_bn(256, 512, kernel_size=(5, 4)),  # 5x4 -> 1x1
        )
        self.netfcaud = _fc_head()
        # (B,3,5,224,224) -> (B,512,1,1,1); the first conv consumes all 5 frames
        self.netcnnlip = nn.Sequential(
            *_conv3d_bn(3, 96, kernel_size=(5, 7, 7), stride=(1, 2, 2)),  # 224 -> 109
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),  # 109 -> 54
            *_conv3d_bn(96, 256, kernel_size=(1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)),  # 54 -> 26
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),  # 26 -> 13
            *_conv3d_bn(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)),
            *_conv3d_bn(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)),
            *_conv3d_bn(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),  # 13 -> 6
            *_conv3d_bn(256, 512, kernel_size=(1, 6, 6)),  # 6 -> 1
        )
        self.netfclip = _fc_head()

    def forward_aud(self, mfcc: torch.Tensor) -> torch.Tensor:
        """(B,1,13,20) float MFCC -> (B,1024)."""
        mid = self.netcnnaud(mfcc)
        return self.netfcaud(mid.flatten(1))

    def forward_lip(self, frames: torch.Tensor) -> torch.Tensor:
        """(B,3,5,224,224) float BGR 0..255 -> (B,1024)."""
        mid = self.netcnnlip(frames)
        return self.netfclip(mid.flatten(1))


LABEL = "SyncNet (syncnet_v2)"  # how checkpoint errors name the network
# The reference loader copies whatever keys the file has, so a file without the BatchNorm
# ``num_batches_tracked`` counters (unused in eval mode) is accepted too.
OPTIONAL_KEYS = ("num_batches_tracked",)


def load_syncnet(name_or_path: str | os.PathLike = "syncnet_v2", *, device: str | torch.device = "cpu",
                 weights_dir: str | os.PathLike | None = None) -> SyncNet:
    """SyncNet with ``syncnet_v2.model`` weights (a registry name or a file path), in eval mode."""
    model = SyncNet()
    weights.load_model(model, name_or_path, label=LABEL, weights_dir=weights_dir, optional_suffixes=OPTIONAL_KEYS)
    # channels-last 3-D layout: ~20% faster Conv3d on CPU (oneDNN), same results to float rounding;
    # score.lip_windows builds its input in this layout already
    model.netcnnlip.to(memory_format=torch.channels_last_3d)
    return model.to(device).eval()
