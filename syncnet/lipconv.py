"""The lip tower's first layer on a CPU in float32: Winograd F(3x3, 4x4) over the frames' 2x2 polyphase
components, each frame's tiles made once for the five windows that hold it.

That layer (see :mod:`syncnet.folded`) is a 7x7, stride-2, unpadded convolution of a window's 5 frames x
3 colours = 15 channels to 96, then a ReLU; it is about half of the lip tower's arithmetic. A stride-2
correlation is the sum, over the four (row, column) parities, of stride-1 correlations of the input's
polyphase components (every other row and column: 112x112 of a 224 crop) with the kernel's taps of the
same parities (4x4, 4x3, 3x4 and 3x3 of them, each padded to 4x4 with zeros). So each frame becomes
4 x 3 = 12 channels, a window 5 x 12 = 60, and the layer a valid 4x4 correlation of those.

Winograd F(3x3, 4x4) makes each 3x3 block of outputs from a 6x6 input tile with 36 multiplications per
channel pair: 36 x 60 per block and output channel, where the direct layer does 9 x 49 x 15 = 6615, 3.06
times as many. The input transform ``B^T d B`` of a frame's tiles does not depend on the window, so it is
done once per frame, for all frames at once, with the channels ordered (frame, parity, colour): window w's
60 channels are then adjacent (frames w .. w + 4), and its products read them in place. The work goes in
strips of tile rows, spread over the CPU's cores (``face_detection.cores``); the tile transforms are the
compiled loops of :mod:`face_detection.winograd_kernels`, and the ReLU is applied on the way out.

The result equals the direct layer to float32 rounding (relative ~2e-6 on 0..255 crops; the direct one
is at ~1e-6).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from face_detection.cores import across_cores, workers_for
from face_detection.winograd import _kernels, transform_matrices

STRIDE = 2
BLOCK = 3  # F(3x3, 4x4): 3x3 outputs a tile
KERNEL = 7
TAPS = -(-KERNEL // STRIDE)  # 4: a parity's taps of the kernel, the fewer ones padded to as many
TILE = BLOCK + TAPS - 1  # 6: the input tile side, as face_detection.winograd_kernels' tiles
PARITIES = STRIDE * STRIDE
# Tiles of this many bytes are transformed at a time (one or two tile rows of all the batch's frames),
# so that they and the products stay in cache between the transforms and the matrix products.
STRIP_BYTES = 4 << 20


class WinogradLipConv(nn.Module):
    """``relu(conv(window))`` for every 5-frame window of a run of frames, from the frames themselves.

    ``conv``: the lip tower's first layer as a 2-D convolution over ``frames`` x C channels, time major
    (:func:`syncnet.folded.fold_tower`), 7x7, stride 2, no padding.
    """

    def __init__(self, conv: nn.Conv2d, frames: int) -> None:
        super().__init__()
        if (conv.stride != (STRIDE, STRIDE) or conv.padding != (0, 0) or conv.dilation != (1, 1) or conv.groups != 1
                or conv.kernel_size != (KERNEL, KERNEL) or conv.in_channels % frames):
            raise ValueError(f"not a 7x7 stride-2 unpadded convolution of {frames} frames: {conv}")
        self.frames, self.colours, self.out_channels = frames, conv.in_channels // frames, conv.out_channels
        weight = conv.weight.detach().double().view(self.out_channels, frames, self.colours, KERNEL, KERNEL)
        # (K, time, row parity, column parity, colour, 4, 4): the channel order of a window's polyphase input
        taps = weight.new_zeros(self.out_channels, frames, STRIDE, STRIDE, self.colours, TAPS, TAPS)
        for r in range(STRIDE):
            for s in range(STRIDE):
                part = weight[..., r::STRIDE, s::STRIDE]
                taps[:, :, r, s, :, :part.shape[-2], :part.shape[-1]] = part
        _, g, _ = transform_matrices(BLOCK, TAPS)
        # G g G^T, indexed as winograd_kernels' tiles: column component * TILE + row component
        kernel = torch.einsum("ik,ockl,jl->jico", g, taps.flatten(1, 4), g).reshape(TILE * TILE, -1, self.out_channels)
        self.register_buffer("kernel", kernel.float().contiguous(), persistent=False)  # (36, 60, K)
        bias = conv.bias.detach().float() if conv.bias is not None else torch.zeros(self.out_channels)
        self.register_buffer("bias", bias.clone(), persistent=False)

    def runs(self, device: torch.device | str = "cpu") -> bool:
        """Whether this path runs: float32 on a CPU, with numba's compiled loops importable."""
        return torch.device(device).type == "cpu" and self.kernel.dtype == torch.float32 and _kernels() is not None

    def forward(self, frames: np.ndarray | torch.Tensor, n: int) -> torch.Tensor:
        """(n, K, H', W') channels-last float32 of the windows ``frames[w:w + 5]``, w < n.

        ``frames``: (>= n + 4, H, W, C) uint8 or float32, in the colour order the layer expects.
        """
        frames = torch.as_tensor(frames)[:n + self.frames - 1]
        if frames.shape[0] < n + self.frames - 1 or frames.dim() != 4 or frames.shape[-1] != self.colours:
            raise ValueError(f"need (>= {n + self.frames - 1}, H, W, {self.colours}) frames, got {tuple(frames.shape)}")
        count, height, width = frames.shape[:3]
        if min(height, width) < KERNEL:
            raise ValueError(f"frames of {height}x{width} are smaller than the 7x7 kernel")
        half_h, half_w = -(-height // STRIDE), -(-width // STRIDE)
        # zero rows and columns up to even sides: they only meet taps that the padded kernel holds as zeros
        frames = F.pad(frames, (0, 0, 0, STRIDE * half_w - width, 0, STRIDE * half_h - height))
        # (count, H, W, C) -> (H/2, W/2, count, row parity, column parity, C), channels frame major
        poly = frames.view(count, half_h, STRIDE, half_w, STRIDE, self.colours).permute(1, 3, 0, 2, 4, 5)
        poly = poly.reshape(half_h, half_w, -1).float().contiguous().numpy()
        out_h, out_w = half_h - TAPS + 1, half_w - TAPS + 1
        out = np.empty((n, out_h, out_w, self.out_channels), np.float32)
        rows, cols = -(-out_h // BLOCK), -(-out_w // BLOCK)
        per_row = TILE * TILE * cols * poly.shape[2] * poly.itemsize
        strip = max(1, min(rows, STRIP_BYTES // per_row))
        firsts = list(range(0, rows, strip))
        workers = workers_for(len(firsts))
        parts = [firsts[k::workers] for k in range(workers)]
        across_cores(lambda part: self._strips(poly, part, strip, rows, n, out), parts)
        return torch.from_numpy(out).permute(0, 3, 1, 2)

    def _strips(self, poly: np.ndarray, firsts: list[int], strip: int, rows: int, n: int, out: np.ndarray) -> None:
        kernels = _kernels()
        per_frame = PARITIES * self.colours
        cols = (poly.shape[1] - TAPS + BLOCK) // BLOCK
        bias = self.bias.numpy()
        buffers: dict[int, tuple[np.ndarray, torch.Tensor]] = {}  # tiles and products by strip height
        for first in firsts:
            height = min(strip, rows - first)  # the last strip may be lower: its own buffers, no stale rows
            if height not in buffers:
                buffers[height] = (np.empty((TILE * TILE, height * cols, poly.shape[2]), np.float32),
                                   torch.empty(TILE * TILE, height * cols, self.out_channels))
            tiles, products = buffers[height]
            kernels.input_tiles_3x3(poly, first, height, tiles)
            for w in range(n):
                window = torch.from_numpy(tiles)[:, :, w * per_frame:(w + self.frames) * per_frame]
                torch.bmm(window, self.kernel, out=products)
                kernels.output_map_3x3(products.numpy(), first, height, bias, out[w], relu=True)

    def extra_repr(self) -> str:
        return (f"{self.frames} frames x {self.colours} -> {self.out_channels}, 7x7, stride 2, "
                f"F({BLOCK}x{BLOCK}, {TAPS}x{TAPS}) over the polyphase components, ReLU")
