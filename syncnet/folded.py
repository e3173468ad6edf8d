"""SyncNet for inference: both towers with their batch norms folded in and channels-last, the lip tower as 2-D layers.

The lip tower's first Conv3d spans all 5 frames of a window (time kernel 5, no time padding), so its
output has one time step and every later layer is 2-D in all but name. As 2-D layers on channels-last
tensors, with each eval-mode BatchNorm folded into the convolution before it, the same arithmetic runs
faster on a CPU: on a 2-core AVX2 CPU, batches of 20 windows alternated in one process took 36.7 ms
per window through :class:`syncnet.model.SyncNet` and 30.3 ms through this (medians of 6).
The results equal the model's to float32 rounding (relative ~4e-6).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from common.folding import fold_into
from syncnet.constants import WINDOW_FRAMES
from syncnet.lipconv import WinogradLipConv
from syncnet.model import SyncNet


def _conv2d_from_3d(conv: nn.Conv3d, time_steps: int) -> nn.Conv2d:
    """A Conv3d over ``time_steps`` input steps that leaves one step, as a Conv2d whose input channels
    are (time, channel) pairs, time major (a Conv3d with time kernel 1 on one step is the ``time_steps=1`` case)."""
    kt, kh, kw = conv.kernel_size
    if (conv.stride[0], conv.padding[0], conv.dilation[0], conv.groups) != (1, 0, 1, 1) or kt != time_steps:
        raise ValueError(f"{conv} does not reduce {time_steps} time steps to one")
    if conv.padding_mode != "zeros" or conv.dilation[1:] != (1, 1):
        raise ValueError(f"{conv}: only zero padding without dilation is supported")
    out = nn.Conv2d(conv.in_channels * kt, conv.out_channels, (kh, kw), stride=conv.stride[1:],
                    padding=conv.padding[1:], bias=conv.bias is not None)
    # (out, in, t, h, w) -> (out, t, in, h, w) -> (out, t*in, h, w)
    weight = conv.weight.detach().permute(0, 2, 1, 3, 4).reshape(out.weight.shape)
    with torch.no_grad():
        out.weight.copy_(weight)
        if conv.bias is not None:
            out.bias.copy_(conv.bias.detach())
    return out


def _pool2d_from_3d(pool: nn.MaxPool3d) -> nn.MaxPool2d:
    kernel, stride, padding, dilation = (tuple(v) if isinstance(v, tuple) else (v,) * 3
                                         for v in (pool.kernel_size, pool.stride, pool.padding, pool.dilation))
    if (kernel[0], stride[0], padding[0], dilation[0]) != (1, 1, 0, 1):
        raise ValueError(f"{pool} pools over time")
    return nn.MaxPool2d(kernel[1:], stride[1:], padding[1:], dilation[1:], ceil_mode=pool.ceil_mode)


def fold_tower(tower: nn.Sequential, time_steps: int | None = None) -> nn.Sequential:
    """``tower`` (Conv / BatchNorm / ReLU / MaxPool layers, in eval mode) with its batch norms folded into
    the convolutions before them. With ``time_steps``, a 3-D tower whose first Conv3d reduces that many
    steps to one becomes 2-D, taking (B, time_steps * C, H, W) input, channels time major."""
    layers: list[nn.Module] = []
    steps = time_steps
    for layer in tower:
        if isinstance(layer, nn.Conv3d) and steps is not None:
            layers.append(_conv2d_from_3d(layer, steps))
            steps = 1
        elif isinstance(layer, nn.Conv2d) and time_steps is None:
            layers.append(_copy_conv2d(layer))
        elif isinstance(layer, nn.modules.batchnorm._BatchNorm):
            conv = layers[-1] if layers else None
            if not isinstance(conv, nn.Conv2d):
                raise ValueError(f"{layer.__class__.__name__} must follow a convolution to be folded")
            fold_into(conv, layer)
        elif isinstance(layer, nn.MaxPool3d) and steps == 1:
            layers.append(_pool2d_from_3d(layer))
        elif isinstance(layer, nn.MaxPool2d) and time_steps is None:
            layers.append(nn.MaxPool2d(layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                                       ceil_mode=layer.ceil_mode))
        elif isinstance(layer, nn.ReLU):
            layers.append(nn.ReLU(inplace=True))
        else:
            raise ValueError(f"cannot fold {layer.__class__.__name__} here")
    if steps not in (None, 1):
        raise ValueError("the tower never reduces its time steps to one")
    return nn.Sequential(*layers)


def _copy_conv2d(conv: nn.Conv2d) -> nn.Conv2d:
    out = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                    dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                    padding_mode=conv.padding_mode)
    out.load_state_dict(conv.state_dict())
    return out


class FoldedSyncNet(nn.Module):
    """``forward_lip`` / ``forward_aud`` of a loaded :class:`SyncNet`, for inference only: both conv
    towers folded (:func:`fold_tower`), the lip tower 2-D and channels-last; the heads are the model's.

    ``across_cores``: :meth:`forward_lip_frames` runs the lip tower's first layer and its ReLU as
    :class:`syncnet.lipconv.WinogradLipConv` where that runs (float32 on a CPU), on all cores.
    """

    def __init__(self, model: SyncNet, *, across_cores: bool = False) -> None:
        super().__init__()
        model = model.eval()
        device = next(model.parameters()).device
        self.lip_cnn = fold_tower(model.netcnnlip, WINDOW_FRAMES).to(device).eval()
        self.lip_cnn.to(memory_format=torch.channels_last)
        self.lip_conv: WinogradLipConv | None = None
        if across_cores:
            if not isinstance(self.lip_cnn[1], nn.ReLU):
                raise ValueError("the lip tower's first layer is not followed by a ReLU")
            self.lip_conv = WinogradLipConv(self.lip_cnn[0], WINDOW_FRAMES).to(device)
        # channels-last too: batches of 20 MFCC windows on a 2-core Zen 4 EPYC went from 2.72 to 2.22 ms
        # a window in float32, 1.56 to 1.15 in bfloat16
        self.aud_cnn = fold_tower(model.netcnnaud).to(device).eval().to(memory_format=torch.channels_last)
        self.lip_fc, self.aud_fc = model.netfclip, model.netfcaud

    def forward_aud(self, mfcc: torch.Tensor) -> torch.Tensor:
        """(B,1,13,20) float MFCC -> (B,1024), as :meth:`SyncNet.forward_aud`."""
        return self.aud_fc(self.aud_cnn(mfcc.contiguous(memory_format=torch.channels_last)).flatten(1))

    def forward_lip(self, frames: torch.Tensor) -> torch.Tensor:
        """(B,3,5,224,224) float BGR 0..255 -> (B,1024), as :meth:`SyncNet.forward_lip`."""
        batch, channels, steps, height, width = frames.shape
        # (B, H, W, time, channel) memory is channels-last (B, time*channel, H, W): a view for windows
        # from score.lip_windows, one copy for other layouts
        x = frames.permute(0, 3, 4, 2, 1).reshape(batch, height, width, steps * channels).permute(0, 3, 1, 2)
        return self.lip_fc(self.lip_cnn(x).flatten(1))

    def shares_frames(self) -> bool:
        """Whether :meth:`forward_lip_frames` runs the first layer from the frames (see ``across_cores``)."""
        return self.lip_conv is not None and self.lip_conv.runs(self.lip_conv.kernel.device)

    @torch.inference_mode()
    def forward_lip_frames(self, frames: np.ndarray, n: int) -> torch.Tensor:
        """(n, 1024) float32 embeddings of the windows ``frames[w:w + 5]``, w < n, as :meth:`forward_lip` of
        ``score.lip_windows(frames, n)``; ``frames``: (>= n + 4, 224, 224, 3) uint8 BGR. Only where
        :meth:`shares_frames`."""
        if not self.shares_frames():
            raise RuntimeError("forward_lip_frames needs the first layer's Winograd path (float32 on a CPU, numba)")
        return self.lip_fc(self.lip_cnn[2:](self.lip_conv(frames, n)).flatten(1))
