"""The tile transforms of Winograd F(4x4, 3x3) as compiled single-threaded loops (numba), for CPU float32.

:func:`face_detection.winograd.conv3x3` builds the transforms from whole-tensor torch operations: a
gather, a matrix product and a copy per stage, each a pass over tensors 2.25 times the size of the map,
so on the detectors' 64- and 128-channel layers the passes cost more than the multiplications they save.
Here each tile is transformed while its 6x6 input rows are in cache, with the transforms' integer
coefficients written out (B^T and A^T of the points 0, 1, -1, 2, -2 and infinity, as
``winograd.transform_matrices(4)`` gives them), and the bias is added on the way out: one read of the
map and one write of the tiles, one read of the products and one write of the output.

Single-threaded, 2-core Zen 4 EPYC, one 320x180 frame of sfd_face (input and output transforms and
the tiles' matrix product, against oneDNN's direct convolution): 64->64 at 320x180 27.7 ms against 37.6,
64->128 at 160x90 12.3 against 18.7, 128->128 at 160x90 21.4 against 37.1, 256->256 at 80x45 16.3
against 36.9 (the torch transforms: 76.0, 15.6, 27.4 and 18.7 ms). They run on one thread, so
:func:`face_detection.winograd.conv3x3` uses them where torch has one thread too: in the detectors'
per-core workers (``face_detection.cores``).

The same input transform serves F(3x3, 4x4) (``input_tiles_3x3``, with ``output_map_3x3``): its six points
are those of F(4x4, 3x3), so B^T is too; only the tiles' step (3) and padding (none, a valid correlation)
differ. :mod:`syncnet.lipconv` runs SyncNet's first lip layer with them.

Importing this module imports numba (about 0.25 s); ``face_detection.winograd`` does so on first use.
Loading the machine code from numba's cache takes longer (``load``: ~0.6 s with numba imported, on a
2-core AVX2 EPYC), so the models that run these loops load them when they are built.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# compiled on first call (about 5 s), then cached on disk next to this file (or numba's user cache)
_jit = njit(fastmath=True, cache=True, nogil=True)


@_jit
def _input_tiles(x, first, n, out, base, step, pad, cols):
    # x: (H, W, C) one image; out[:, base:base + n * cols]: (36, n * cols, C) for tile rows first ..
    # first + n - 1, component q * 6 + p for column q, row p; tile row t reads image rows
    # step * t - pad .. step * t - pad + 5 (zeros outside): F(4x4, 3x3) 'same' tiles are step 4, pad 1
    height, width, channels = x.shape
    top = step * first - pad
    padded = np.zeros((step * (n - 1) + 6, step * (cols - 1) + 6, channels), np.float32)
    for r in range(max(0, -top), min(padded.shape[0], height - top)):
        padded[r, pad:pad + min(width, padded.shape[1] - pad)] = x[top + r, :padded.shape[1] - pad]
    rows_done = np.empty((6, 6, channels), np.float32)  # B^T d: [row component p, column j]
    for ty in range(n):
        y0 = step * ty
        for tx in range(cols):
            x0 = step * tx
            for j in range(6):
                r0, r1, r2 = padded[y0, x0 + j], padded[y0 + 1, x0 + j], padded[y0 + 2, x0 + j]
                r3, r4, r5 = padded[y0 + 3, x0 + j], padded[y0 + 4, x0 + j], padded[y0 + 5, x0 + j]
                for c in range(channels):
                    d0, d1, d2, d3, d4, d5 = r0[c], r1[c], r2[c], r3[c], r4[c], r5[c]
                    rows_done[0, j, c] = 4 * d0 - 5 * d2 + d4
                    rows_done[1, j, c] = -4 * (d1 + d2) + d3 + d4
                    rows_done[2, j, c] = 4 * (d1 - d2) - d3 + d4
                    rows_done[3, j, c] = 2 * (d3 - d1) - d2 + d4
                    rows_done[4, j, c] = 2 * (d1 - d3) - d2 + d4
                    rows_done[5, j, c] = 4 * d1 - 5 * d3 + d5
            tile = base + ty * cols + tx
            for p in range(6):
                o0, o1, o2 = out[p, tile], out[6 + p, tile], out[12 + p, tile]
                o3, o4, o5 = out[18 + p, tile], out[24 + p, tile], out[30 + p, tile]
                row = rows_done[p]
                for c in range(channels):
                    d0, d1, d2, d3, d4, d5 = row[0, c], row[1, c], row[2, c], row[3, c], row[4, c], row[5, c]
                    o0[c] = 4 * d0 - 5 * d2 + d4
                    o1[c] = -4 * (d1 + d2) + d3 + d4
                    o2[c] = 4 * (d1 - d2) - d3 + d4
                    o3[c] = 2 * (d3 - d1) - d2 + d4
                    o4[c] = 2 * (d1 - d3) - d2 + d4
                    o5[c] = 4 * d1 - 5 * d3 + d5


@_jit
def _output_map(products, base, bias, first, n, out):
    # products[:, base:base + n * cols]: (36, n * cols, K) for tile rows first .. first + n - 1, as
    # _input_tiles orders them; out: (H, W, K) one image, whose rows 4 first .. 4 (first + n) - 1 (those
    # inside) get A^T m A + bias
    height, width, channels = out.shape
    cols = (width + 3) // 4
    cols_done = np.empty((4, 6, channels), np.float32)  # [output row r, column component q]
    for ty in range(n):
        for tx in range(cols):
            tile = base + ty * cols + tx
            for q in range(6):
                m0, m1, m2 = products[q * 6, tile], products[q * 6 + 1, tile], products[q * 6 + 2, tile]
                m3, m4, m5 = products[q * 6 + 3, tile], products[q * 6 + 4, tile], products[q * 6 + 5, tile]
                for k in range(channels):
                    plus, minus = m1[k] + m2[k], m1[k] - m2[k]
                    plus2, minus2 = m3[k] + m4[k], m3[k] - m4[k]
                    cols_done[0, q, k] = m0[k] + plus + plus2
                    cols_done[1, q, k] = minus + 2 * minus2
                    cols_done[2, q, k] = plus + 4 * plus2
                    cols_done[3, q, k] = minus + 8 * minus2 + m5[k]
            y0 = 4 * (first + ty)
            for r in range(min(4, height - y0)):
                row = cols_done[r]
                target = out[y0 + r]
                for s in range(min(4, width - 4 * tx)):
                    pixel = target[4 * tx + s]
                    for k in range(channels):
                        plus, minus = row[1, k] + row[2, k], row[1, k] - row[2, k]
                        plus2, minus2 = row[3, k] + row[4, k], row[3, k] - row[4, k]
                        if s == 0:
                            value = row[0, k] + plus + plus2
                        elif s == 1:
                            value = minus + 2 * minus2
                        elif s == 2:
                            value = plus + 4 * plus2
                        else:
                            value = minus + 8 * minus2 + row[5, k]
                        pixel[k] = value + bias[k]


@_jit
def _output_map_3x3(products, first, n, bias, floor, out):
    # F(3x3, 4x4): products (36, n * cols, K) for tile rows first .. first + n - 1, as _input_tiles orders
    # them (step 3); out: (H, W, K) one map, whose rows 3 first .. 3 (first + n) - 1 (those inside) get
    # max(A^T m A + bias, floor). A^T = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 1]]
    height, width, channels = out.shape
    cols = (width + 2) // 3
    cols_done = np.empty((3, 6, channels), np.float32)  # [output row r, column component q]
    for ty in range(n):
        y0 = 3 * (first + ty)
        for tx in range(cols):
            tile = ty * cols + tx
            for q in range(6):
                m0, m1, m2 = products[6 * q, tile], products[6 * q + 1, tile], products[6 * q + 2, tile]
                m3, m4, m5 = products[6 * q + 3, tile], products[6 * q + 4, tile], products[6 * q + 5, tile]
                c0, c1, c2 = cols_done[0, q], cols_done[1, q], cols_done[2, q]
                for k in range(channels):
                    plus, minus = m1[k] + m2[k], m1[k] - m2[k]
                    plus2, minus2 = m3[k] + m4[k], m3[k] - m4[k]
                    c0[k] = m0[k] + plus + plus2
                    c1[k] = minus + 2 * minus2
                    c2[k] = plus + 4 * plus2 + m5[k]
            x0 = 3 * tx
            for r in range(min(3, height - y0)):
                v0, v1, v2 = cols_done[r, 0], cols_done[r, 1], cols_done[r, 2]
                v3, v4, v5 = cols_done[r, 3], cols_done[r, 4], cols_done[r, 5]
                pixel = out[y0 + r, x0]
                for k in range(channels):
                    pixel[k] = max(v0[k] + v1[k] + v2[k] + v3[k] + v4[k] + bias[k], floor)
                if x0 + 1 < width:
                    pixel = out[y0 + r, x0 + 1]
                    for k in range(channels):
                        pixel[k] = max(v1[k] - v2[k] + 2 * (v3[k] - v4[k]) + bias[k], floor)
                if x0 + 2 < width:
                    pixel = out[y0 + r, x0 + 2]
                    for k in range(channels):
                        pixel[k] = max(v1[k] + v2[k] + 4 * (v3[k] + v4[k]) + v5[k] + bias[k], floor)


def input_tiles(x: np.ndarray, first: int, n: int, out: np.ndarray, base: int = 0) -> None:
    """Write into ``out[:, base:base + n * ceil(W/4)]`` ((36, tiles, C) float32) the F(4x4, 3x3) input
    tiles ``B^T d B`` of tile rows ``first`` .. ``first + n - 1`` of the image ``x`` (H, W, C) float32,
    zero-padded by one pixel, in the layout ``winograd.conv3x3`` multiplies."""
    _input_tiles(x, first, n, out, base, 4, 1, (x.shape[1] + 3) // 4)


def output_map(products: np.ndarray, base: int, bias: np.ndarray, first: int, n: int, out: np.ndarray) -> None:
    """Write into the rows of ``out`` (H, W, K) float32 that tile rows ``first`` .. ``first + n - 1``
    cover the output transform ``A^T m A`` of ``products[:, base:base + n * ceil(W/4)]`` ((36, tiles, K)),
    plus ``bias`` (K,)."""
    _output_map(products, base, bias, first, n, out)


def input_tiles_3x3(x: np.ndarray, first: int, n: int, out: np.ndarray) -> None:
    """Write into ``out`` ((36, n * ceil((W - 3) / 3), C) float32) the F(3x3, 4x4) input tiles ``B^T d B``
    of tile rows ``first`` .. ``first + n - 1`` of the valid (unpadded) 4x4 correlation of ``x`` (H, W, C)
    float32: tile row t reads rows 3t .. 3t + 5 (zeros past the image)."""
    _input_tiles(x, first, n, out, 0, 3, 0, (x.shape[1] - 1) // 3)


def output_map_3x3(products: np.ndarray, first: int, n: int, bias: np.ndarray, out: np.ndarray, *,
                   relu: bool = False) -> None:
    """Write into the rows of ``out`` (H, W, K) float32 that tile rows ``first`` .. ``first + n - 1``
    cover the F(3x3, 4x4) output transform ``A^T m A`` of ``products`` ((36, n * ceil(W/3), K)), plus
    ``bias`` (K,), through a ReLU if ``relu``."""
    _output_map_3x3(products, first, n, bias, np.float32(0 if relu else -np.inf), out)


def load() -> None:
    """Run each compiled loop once on a few values, with the argument types of the real calls: numba then
    loads (or, the first time on a machine, compiles) its machine code now, not in a model's first call."""
    # an 8x8 map is two tile rows and columns of F(4x4, 3x3), and of F(3x3, 4x4) with a 5x5 result
    image, tiles, bias = np.zeros((8, 8, 1), np.float32), np.zeros((36, 4, 1), np.float32), np.zeros(1, np.float32)
    input_tiles(image, 0, 2, tiles)
    output_map(tiles, 0, bias, 0, 2, image)
    input_tiles_3x3(image, 0, 2, tiles)
    output_map_3x3(tiles, 0, 2, bias, np.zeros((5, 5, 1), np.float32), relu=True)
