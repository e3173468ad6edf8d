"""LSE-D / LSE-C / AV offset from SyncNet embeddings: the arithmetic of syncnet_python's evaluate().

Everything here is pure (arrays in, arrays out) so tests can plant known answers.

Windows: video frame v is paired with the 5 frames v..v+4 and the 20 MFCC columns 4v..4v+19
(100 Hz MFCC / 25 fps = 4 columns per frame). The reference stops at ``min_length - 5`` windows,
one fewer than would fit; that is kept so the numbers match.

Distances: audio embeddings are padded with ``vshift`` zero rows on each side and every lip window i
is compared with audio windows i-vshift .. i+vshift. ``offset = vshift - argmin``: a positive offset
means the audio matching video frame i sits at index i - offset (the audio leads the video).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.signal import medfilt

from syncnet.constants import MFCC_PER_FRAME, SAMPLES_PER_FRAME, WINDOW_FRAMES, WINDOW_MFCC
from syncnet.options import VSHIFT

PAIRWISE_EPS = 1e-6  # torch.nn.functional.pairwise_distance adds it to the difference
CONF_MEDFILT = 9  # kernel of the median filter over the per-window confidence curve
_DIST_CHUNK = 256  # lip windows per distance block: 256 x 31 x 1024 float32 = 32 MB


def usable_frames(n_frames: int, n_samples: int) -> int:
    """The reference's ``min_length``: frames covered by both the video and the 16 kHz audio."""
    return min(n_frames, n_samples // SAMPLES_PER_FRAME)


def window_count(n_frames: int, n_samples: int) -> int:
    """Number of 5-frame windows the reference scores (``min_length - 5``, never negative)."""
    return max(0, usable_frames(n_frames, n_samples) - WINDOW_FRAMES)


def audio_windows(mfcc_t: np.ndarray, start: int, stop: int) -> np.ndarray:
    """(stop-start, 1, 13, 20) float32 MFCC windows for windows ``start..stop-1`` of ``mfcc_t`` (13, T)."""
    cols = MFCC_PER_FRAME * np.arange(start, stop)[:, None] + np.arange(WINDOW_MFCC)[None, :]
    return np.ascontiguousarray(mfcc_t[:, cols].transpose(1, 0, 2)[:, None]).astype(np.float32)


def lip_windows(frames: np.ndarray, n: int) -> torch.Tensor:
    """(n, 3, 5, H, W) float32 windows from ``frames`` (>= n+4, H, W, 3) uint8 BGR, 0..255 as the net expects.

    Window k holds ``frames[k:k+5]``; a caller streaming a long sequence passes a rolling buffer
    that starts at its next window's first frame.
    """
    if frames.shape[0] < n + WINDOW_FRAMES - 1:
        raise ValueError(f"need {n + WINDOW_FRAMES - 1} frames for {n} windows, got {frames.shape[0]}")
    clip = torch.from_numpy(np.ascontiguousarray(frames[: n + WINDOW_FRAMES - 1]))  # (n+4, H, W, 3) uint8
    height, width = clip.shape[1:3]
    # (n, H, W, time, channel) memory, seen as (n, 3, 5, H, W): the layout syncnet.folded.FoldedSyncNet
    # reads as channels-last 2-D input without another copy; gathered as uint8, then made float in one pass
    windows = torch.empty(n, height, width, WINDOW_FRAMES, 3, dtype=torch.uint8)
    for t in range(WINDOW_FRAMES):
        windows[:, :, :, t] = clip[t:t + n]
    return windows.float().permute(0, 4, 3, 1, 2)


def offset_distances(lip_feat: np.ndarray | torch.Tensor, aud_feat: np.ndarray | torch.Tensor,
                     vshift: int = VSHIFT) -> np.ndarray:
    """(N, 2*vshift+1) float32: ``dists[i, j] = ||lip[i] - audpad[i+j] + 1e-6||`` for all windows and offsets.

    Computed block-wise (one broadcast operation per block of lip windows) so memory stays bounded.
    """
    lip = torch.as_tensor(lip_feat, dtype=torch.float32)
    aud = torch.as_tensor(aud_feat, dtype=torch.float32)
    if lip.ndim != 2 or lip.shape != aud.shape:
        raise ValueError(f"lip and audio features must have the same (N, D) shape, got {tuple(lip.shape)} "
                         f"and {tuple(aud.shape)}")
    audpad = F.pad(aud, (0, 0, vshift, vshift))  # (N + 2*vshift, D)
    span = 2 * vshift + 1
    blocks = []
    for lo in range(0, lip.shape[0], _DIST_CHUNK):
        hi = min(lo + _DIST_CHUNK, lip.shape[0])
        idx = torch.arange(lo, hi)[:, None] + torch.arange(span)[None, :]  # (b, span)
        blocks.append(F.pairwise_distance(lip[lo:hi, None, :], audpad[idx], eps=PAIRWISE_EPS))
    if not blocks:
        return np.zeros((0, span), np.float32)
    return torch.cat(blocks).numpy()


@dataclass(frozen=True)
class SyncScore:
    """Scores of one sequence (a face track or a whole video)."""

    offset: int  # AV offset in frames (vshift - argmin); positive: audio leads
    min_dist: float  # LSE-D: lowest mean distance over offsets (lower is better)
    conf: float  # LSE-C: median minus minimum of the mean distances (higher is better)
    mdist: np.ndarray  # (2*vshift+1,) mean distance per offset, offset +vshift first
    fdist: np.ndarray  # (N,) per-window distance at the best offset
    fconf: np.ndarray  # (N,) per-window confidence: median(mdist) - fdist
    fconfm: np.ndarray  # (N,) fconf median-filtered (kernel 9, zero-padded ends), what the reference prints


def score_distances(dists: np.ndarray, vshift: int = VSHIFT) -> SyncScore:
    """Reduce (N, 2*vshift+1) distances to offset, LSE-D, LSE-C and the per-window curves."""
    d = torch.as_tensor(dists, dtype=torch.float32)
    if d.ndim != 2 or d.shape[0] == 0 or d.shape[1] != 2 * vshift + 1:
        raise ValueError(f"expected (N>0, {2 * vshift + 1}) distances, got {tuple(d.shape)}")
    mdist = d.mean(dim=0)
    minidx = int(torch.argmin(mdist))
    minval = mdist[minidx]
    med = torch.median(mdist)  # 2*vshift+1 values: the middle one
    fdist = d[:, minidx].numpy()
    fconf = med.numpy() - fdist
    with warnings.catch_warnings():
        # a track shorter than the kernel is zero-padded, as scipy (and so the reference) does
        warnings.filterwarnings("ignore", message="kernel_size exceeds volume extent")
        fconfm = medfilt(fconf, kernel_size=CONF_MEDFILT)
    return SyncScore(offset=vshift - minidx, min_dist=float(minval), conf=float(med - minval),
                     mdist=mdist.numpy(), fdist=fdist, fconf=fconf, fconfm=np.asarray(fconfm, dtype=np.float32))


def score_features(lip_feat: np.ndarray | torch.Tensor, aud_feat: np.ndarray | torch.Tensor,
                   vshift: int = VSHIFT) -> SyncScore:
    """Offset, LSE-D and LSE-C from per-window lip and audio embeddings (N, 1024) each."""
    return score_distances(offset_distances(lip_feat, aud_feat, vshift), vshift)
