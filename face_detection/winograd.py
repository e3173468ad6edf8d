"""3x3 convolutions by Winograd's minimal filtering F(m x m, 3x3), for the detectors' deep VGG layers on CPU.

Each m x m block of output pixels is computed from an (m+2) x (m+2) input tile with (m+2)^2 multiplications
per channel pair instead of 9 m^2: F(4x4, 3x3) does 36 instead of 144, so the matrix products shrink by
4x while the tile transforms cost a few passes over memory. The result equals a direct convolution up to
float32 rounding (relative error ~5e-6 per layer for m = 4, ~1e-6 for m = 2; a direct float32
convolution is at ~1e-6). On a CPU this pays off for layers with 128 or more input channels at the
detectors' input sizes; on the first layers the transforms' memory traffic costs more than they save,
and on a GPU cuDNN chooses its own algorithm, so :func:`use_winograd` is meant for CPU inference.
The transformed kernels take (m+2)^2 / 9 times the memory of the weights (4x for m = 4: about 230 MB
instead of 58 MB for the converted S3FD layers).

The transform matrices follow the Toom-Cook construction (Lavin & Gray, "Fast Algorithms for
Convolutional Neural Networks", 2016) with interpolation points 0, 1, -1, 2, -2, ... and infinity:
for a 1-D input tile d (m+2 values) and kernel g (3 values), the m outputs of the correlation are
``A^T [(G g) * (B^T d)]``; in 2-D, ``A^T [(G g G^T) * (B^T d B)] A``.
"""

from __future__ import annotations

import logging
from fractions import Fraction
from functools import cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

# Output block size: 4 (F(4x4, 3x3)) measured fastest on a 2-core AVX2 CPU at the detectors' 320x180
# input, one frame, channels-last, against oneDNN's direct convolution: 128->256 at 80x45 16 -> 11 ms,
# 256->256 at 80x45 30 -> 17 ms, 512->512 at 40x23 29 -> 14 ms; m = 2 saves less, m = 6 loses accuracy.
DEFAULT_BLOCK = 4
# Layers with fewer input or output channels stay direct convolutions: 64->64 at 320x180 is 37 ms
# direct and 66 ms as F(4x4, 3x3); 128->128 at 160x90 gains nothing within the noise (~30 ms both).
MIN_IN_CHANNELS, MIN_OUT_CHANNELS = 128, 256
# Where the tile transforms run as compiled loops (single-threaded torch, see runs_compiled), the first
# layers gain too (64->64 at 320x180 37.6 -> 27.7 ms on one thread): layers from this many input and
# output channels become Winograd convolutions that run as direct ones elsewhere.
MIN_COMPILED_CHANNELS = 64
# The compiled path transforms this many bytes of tiles at a time (a few tile rows of a large map), or
# the kernel's size where that is more. Single-threaded, one 320x180 frame: 64->64 26.7 -> 20.7 ms and
# 128->128 20.8 -> 16.6 ms against whole maps; strips of 2 MB on 512->512 at 40x23 (a 37.7 MB kernel
# read three times) 16.2 -> 22.3 ms, hence the kernel's size.
COMPILED_STRIP_BYTES = 2 << 20
_POINTS = (Fraction(0), Fraction(1), Fraction(-1), Fraction(2), Fraction(-2), Fraction(1, 2), Fraction(-1, 2))


def _poly_mul(a: list[Fraction], b: list[Fraction]) -> list[Fraction]:
    out = [Fraction(0)] * (len(a) + len(b) - 1)
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            out[i + j] += x * y
    return out


@cache
def transform_matrices(block: int, kernel: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact (A^T (m, a), G (a, r), B^T (a, a)) of F(m, r) in float64, m = ``block``, r = ``kernel``, on
    a = m + r - 1 points (the first a - 1 of 0, 1, -1, 2, -2, 1/2, -1/2, and infinity). F(m, 3) for
    m = 1..6, and F(3, 4) for the lip tower's first layer (syncnet.lipconv), share B^T where a = 6."""
    size = block + kernel - 1
    if block < 1 or kernel < 2 or size - 1 > len(_POINTS):
        raise ValueError(f"F({block}, {kernel}) needs {size - 1} finite points; at most {len(_POINTS)} are known")
    points = _POINTS[:size - 1]
    # A^T: the outputs as values of the product polynomial at the points, plus its leading coefficient
    a_t = [[p ** i for p in points] + [Fraction(int(i == block - 1))] for i in range(block)]
    g, b_t = [], []
    full = [Fraction(1)]
    for p in points:
        others = [q for q in points if q != p]
        denom = Fraction(1)
        poly = [Fraction(1)]
        for q in others:
            denom *= p - q
            poly = _poly_mul(poly, [-q, Fraction(1)])
        g.append([p ** j / denom for j in range(kernel)])  # kernel at p, over the Lagrange denominator
        b_t.append(poly + [Fraction(0)] * (size - len(poly)))
        full = _poly_mul(full, [-p, Fraction(1)])
    g.append([Fraction(0)] * (kernel - 1) + [Fraction(1)])
    b_t.append(full)

    def tensor(rows: list[list[Fraction]]) -> torch.Tensor:
        return torch.tensor([[float(v) for v in row] for row in rows], dtype=torch.float64)

    return tensor(a_t), tensor(g), tensor(b_t)


def transform_kernel(weight: torch.Tensor, block: int = DEFAULT_BLOCK) -> torch.Tensor:
    """(Cout, Cin, 3, 3) kernel -> ((m+2)^2, Cin, Cout) Winograd-domain kernel ``G g G^T`` (computed in
    float64, returned in weight's dtype), indexed by column component * (m+2) + row component."""
    if weight.dim() != 4 or tuple(weight.shape[2:]) != (3, 3):
        raise ValueError(f"expected a (Cout, Cin, 3, 3) kernel, got {tuple(weight.shape)}")
    _, g, _ = transform_matrices(block)
    size = block + 2
    cout, cin = weight.shape[:2]
    # (G g G^T)[i, j] = sum over k, l of G[i, k] G[j, l] g[k, l]: one product with the Kronecker G (x) G,
    # a few output channels at a time so that the float64 temporaries stay near 16 MB
    kron = torch.kron(g, g).to(weight.device)  # (i*size + j, k*3 + l)
    out = torch.empty(size * size, cin, cout, dtype=weight.dtype, device=weight.device)
    step = max(1, (1 << 21) // (cin * size * size))
    for start in range(0, cout, step):
        part = weight[start:start + step].detach().double()
        taps = part.permute(2, 3, 1, 0).reshape(9, -1)  # (k*3 + l, Cin * n)
        u = (kron @ taps).view(size, size, cin, part.shape[0])  # (row i, col j, Cin, n)
        out[:, :, start:start + part.shape[0]] = u.transpose(0, 1).reshape(size * size, cin, -1)
    return out


def conv3x3(x: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor | None = None, *,
            max_tile_bytes: int | None = None) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=1)`` for a 3x3, stride-1 kernel given as ``transform_kernel(weight, m)``.

    ``x``: (B, Cin, H, W); the result is (B, Cout, H, W) with channels-last strides. The temporaries are
    several times the input; ``max_tile_bytes`` bounds them: the batch is then worked on a few images at a
    time so that each part's Winograd-domain tiles take about that much (at least one image). None: the
    whole batch at once, a few percent faster for small images (S3FD on 320x180 frames, 8 at a time).
    """
    batch, channels, height, width = x.shape
    size = round(kernel.shape[0] ** 0.5)
    block = size - 2
    if kernel.dim() != 3 or size * size != kernel.shape[0] or kernel.shape[1] != channels or block < 1:
        raise ValueError(f"kernel {tuple(kernel.shape)} does not fit an input with {channels} channels")
    tiles_per_image = size * size * -(-height // block) * -(-width // block)
    per_image = tiles_per_image * max(channels, kernel.shape[2]) * x.element_size()
    step = batch if max_tile_bytes is None else max(1, max_tile_bytes // per_image)
    if runs_compiled(x, block):
        out = x.new_empty(batch, height, width, kernel.shape[2])
        for start in range(0, batch, step):
            _conv3x3_compiled(x[start:start + step], kernel, bias, out[start:start + step])
        return out.permute(0, 3, 1, 2)
    matrices = tuple(t.to(device=x.device, dtype=x.dtype) for t in transform_matrices(block))
    if step >= batch:
        return _conv3x3_nhwc(x, kernel, bias, matrices).contiguous().permute(0, 3, 1, 2)
    out = x.new_empty(batch, height, width, kernel.shape[2])  # each part is copied straight into its place
    for start in range(0, batch, step):
        out[start:start + step] = _conv3x3_nhwc(x[start:start + step], kernel, bias, matrices)
    return out.permute(0, 3, 1, 2)


def runs_compiled(x: torch.Tensor, block: int) -> bool:
    """Whether :func:`conv3x3` transforms the tiles of ``x`` with the compiled loops of
    :mod:`face_detection.winograd_kernels`: F(4x4, 3x3) in float32 on a CPU where torch runs on one
    thread (they are single-threaded; with more threads the torch operations share the work out)."""
    return (block == 4 and x.device.type == "cpu" and x.dtype == torch.float32 and not x.requires_grad
            and torch.get_num_threads() == 1 and _kernels() is not None)


@cache
def _kernels():
    """:mod:`face_detection.winograd_kernels`, or None (logged once) where numba cannot be imported."""
    try:
        from face_detection import winograd_kernels
    except ImportError as exc:
        log.warning("numba is not usable (%s): the Winograd tile transforms run as torch operations, slower", exc)
        return None
    return winograd_kernels


def load_kernels() -> bool:
    """Import and load the compiled tile transforms now, so that a model's first input does not wait for
    them (numba's import and its cache took ~0.9 s on a 2-core AVX2 EPYC, ~5 s where it compiles);
    False where numba cannot be imported."""
    kernels = _kernels()
    if kernels is not None:
        kernels.load()
    return kernels is not None


def _conv3x3_compiled(x: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor) -> None:
    """:func:`conv3x3` of ``x`` into ``out`` (B, H, W, Cout), the tiles transformed by the compiled loops:
    a strip of tile rows of an image at a time where the map is large (COMPILED_STRIP_BYTES: the
    temporaries stay in cache, not 2.25x the map), else all the images' tiles in one product (the
    kernel, then larger than the tiles, is read once)."""
    kernels = _kernels()
    batch, channels, height, width = x.shape
    rows, cols = -(-height // 4), -(-width // 4)
    per_row = 36 * cols * max(channels, kernel.shape[2]) * x.element_size()
    # each product reads the whole kernel: strips hold at least as many bytes of tiles as it has
    strip = max(1, min(rows, max(COMPILED_STRIP_BYTES, kernel.numel() * kernel.element_size()) // per_row))
    bias_np = np.zeros(kernel.shape[2], np.float32) if bias is None else bias.numpy()
    images = [image.contiguous().numpy() for image in x.permute(0, 2, 3, 1)]
    targets = [target.numpy() for target in out]
    if strip == rows:  # whole maps: every image's tiles, one product
        tiles = x.new_empty(36, batch * rows * cols, channels)
        for b, image in enumerate(images):
            kernels.input_tiles(image, 0, rows, tiles.numpy(), b * rows * cols)
        products = torch.bmm(tiles, kernel)
        del tiles
        for b, target in enumerate(targets):
            kernels.output_map(products.numpy(), b * rows * cols, bias_np, 0, rows, target)
        return
    buffers: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # tiles and products by strip height
    for image, target in zip(images, targets, strict=True):
        for first in range(0, rows, strip):
            n = min(strip, rows - first)  # the last strip may be lower: its own buffers, no stale rows
            if n not in buffers:
                buffers[n] = (x.new_empty(36, n * cols, channels), x.new_empty(36, n * cols, kernel.shape[2]))
            tiles, products = buffers[n]
            kernels.input_tiles(image, first, n, tiles.numpy())
            torch.bmm(tiles, kernel, out=products)
            kernels.output_map(products.numpy(), 0, bias_np, first, n, target)


def _conv3x3_nhwc(x: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor | None,
                  matrices: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """:func:`conv3x3` of the whole of ``x`` at once, as a (B, H, W, Cout) view: the blocks' rows and
    columns past H and W are cut off, not yet copied away."""
    batch, channels, height, width = x.shape
    a_t, _, b_t = matrices
    size = b_t.shape[0]
    block = size - 2
    rows, cols = -(-height // block), -(-width // block)
    # NHWC, padded by 1 on top/left and on bottom/right up to whole tiles
    padded = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, block * cols + 1 - width, 1, block * rows + 1 - height))
    # input transform B^T d B: gather each tile's rows, transform them, then the same for columns; each
    # stage's input is dropped as soon as the next exists, so that two stages are alive at a time, not all
    tile_rows = torch.stack([padded[:, k:k + block * rows:block] for k in range(size)])  # (size, B, rows, W', C)
    del padded
    tile_rows = (b_t @ tile_rows.view(size, -1)).view(tile_rows.shape)
    tiles = torch.stack([tile_rows[:, :, :, j:j + block * cols:block] for j in range(size)])  # (col, row, B, r, c, C)
    del tile_rows
    tiles = (b_t @ tiles.view(size, -1)).view(size * size, batch * rows * cols, channels)
    products = torch.bmm(tiles, kernel)  # (size^2, tiles, Cout)
    del tiles
    out_channels = products.shape[-1]
    if bias is not None:
        # column 1 of A^T is all ones (the point 1), so component (1, 1) reaches every output once
        products[size + 1] += bias
    # output transform A^T m A: rows, then columns
    half = torch.matmul(a_t, products.view(size, size, -1))  # (col, out row, N)
    del products
    out = (a_t @ half.view(size, -1)).view(block, block, batch, rows, cols, out_channels)  # (out col, out row, ...)
    out = out.permute(2, 3, 1, 4, 0, 5).reshape(batch, rows * block, cols * block, out_channels)
    return out[:, :height, :width]


class WinogradConv2d(nn.Module):
    """Inference-only stand-in for a 3x3, stride-1, padding-1 ``nn.Conv2d``, built from it (weights copied);
    ``max_tile_bytes`` as in :func:`conv3x3`. ``compiled_only``: a Winograd convolution only where
    :func:`runs_compiled` holds, a direct one (the conv's own weights) everywhere else."""

    def __init__(self, conv: nn.Conv2d, block: int = DEFAULT_BLOCK, *, max_tile_bytes: int | None = None,
                 compiled_only: bool = False) -> None:
        super().__init__()
        if not is_eligible(conv):
            raise ValueError(f"not a 3x3 stride-1 padding-1 undilated ungrouped convolution: {conv}")
        self.in_channels, self.out_channels, self.block = conv.in_channels, conv.out_channels, block
        self.max_tile_bytes = max_tile_bytes
        self.compiled_only = compiled_only
        self.register_buffer("kernel", transform_kernel(conv.weight.detach(), block), persistent=False)
        bias = None if conv.bias is None else conv.bias.detach().clone()
        self.register_buffer("bias", bias, persistent=False)
        self.register_buffer("weight", conv.weight.detach().clone() if compiled_only else None, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.compiled_only and not runs_compiled(x, self.block):
            return F.conv2d(x, self.weight, self.bias, padding=1)
        return conv3x3(x, self.kernel, self.bias, max_tile_bytes=self.max_tile_bytes)

    def extra_repr(self) -> str:
        only = ", compiled transforms only (else direct)" if self.compiled_only else ""
        return f"{self.in_channels}, {self.out_channels}, F({self.block}x{self.block}, 3x3){only}"


def is_eligible(conv: nn.Module) -> bool:
    return (isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros")


def use_winograd(net: nn.Module, *, block: int = DEFAULT_BLOCK, min_in: int = MIN_IN_CHANNELS,
                 min_out: int = MIN_OUT_CHANNELS, min_compiled: int | None = None) -> int:
    """Replace, in place, every eligible 3x3 conv of ``net`` with at least ``min_in`` input and ``min_out``
    output channels with a :class:`WinogradConv2d`; returns how many were replaced. ``min_compiled``
    (block 4 only): the smaller eligible layers with at least that many input and output channels
    become ``compiled_only`` ones (see MIN_COMPILED_CHANNELS).

    Call after the weights are loaded: the replacements keep their own transformed copies, so the
    net's ``state_dict()`` no longer lists those layers.
    """
    count = 0
    for name, child in list(net.named_children()):
        if is_eligible(child) and child.in_channels >= min_in and child.out_channels >= min_out:
            setattr(net, name, WinogradConv2d(child, block))
            count += 1
        elif (is_eligible(child) and block == 4 and min_compiled is not None
              and min(child.in_channels, child.out_channels) >= min_compiled):
            setattr(net, name, WinogradConv2d(child, block, compiled_only=True))
            count += 1
        else:
            count += use_winograd(child, block=block, min_in=min_in, min_out=min_out, min_compiled=min_compiled)
    return count
