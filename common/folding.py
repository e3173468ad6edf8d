"""Folding an eval-mode BatchNorm into the convolution before it: one affine map per output channel,
computed in float64 and stored in the weights' dtype, so that inference skips a pass over every
activation. Used by the Wav2Lip generator and SyncNet alike."""

from __future__ import annotations

import torch
from torch import nn


def fold_batch_norm(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.modules.batchnorm._BatchNorm, *,
                    out_dim: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of a convolution (any kernel rank) followed by eval-mode ``bn``.

    ``out_dim`` is the weight's output-channel dimension: 0 for convolutions, 1 for transposed ones
    (their weights are (in, out, ...)).
    """
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    b = torch.zeros_like(scale) if bias is None else bias.double()
    shape = [1] * weight.dim()
    shape[out_dim] = -1
    folded_w = weight.double() * scale.view(shape)
    folded_b = (b - bn.running_mean.double()) * scale + bn.bias.double()
    return folded_w.to(weight.dtype), folded_b.to(weight.dtype)


def fold_into(conv: nn.Conv2d | nn.ConvTranspose2d, bn: nn.modules.batchnorm._BatchNorm) -> None:
    """Fold eval-mode ``bn`` into ``conv``'s weight and bias, in place (``conv`` gains a bias if it had
    none); the weight keeps its memory layout."""
    weight, bias = fold_batch_norm(conv.weight.detach(), None if conv.bias is None else conv.bias.detach(), bn,
                                   out_dim=1 if isinstance(conv, nn.modules.conv._ConvTransposeNd) else 0)
    if conv.bias is None:
        conv.bias = nn.Parameter(torch.empty_like(bias))
    with torch.no_grad():
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
