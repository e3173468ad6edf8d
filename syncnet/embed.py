"""SyncNet embeddings of a stream of lip crops and of MFCC windows, in batches.

Both towers run through :func:`forward`, which halves its batch on out-of-memory (see
``common.network_batches``) and hands back CPU float32 tensors.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from common.network_batches import in_batches
from syncnet.constants import WINDOW_FRAMES
from syncnet.folded import FoldedSyncNet
from syncnet.mfcc import mfcc
from syncnet.model import EMBED_DIM
from syncnet.score import audio_windows, lip_windows


@torch.inference_mode()
def forward(fn: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor, device: torch.device,
            batch_size: int | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``fn`` over ``batch`` (cast to ``dtype``) in pieces of ``batch_size`` (default: all at once)
    -> (n, 1024) CPU float32."""
    if len(batch) == 0:
        return torch.zeros(0, EMBED_DIM)
    parts: list[torch.Tensor] = []

    def run(start: int, stop: int) -> None:
        part = batch[start:stop]
        if device.type == "cuda":  # pinned, so the copy does not block the host
            part = part.pin_memory().to(device, non_blocking=True)
        parts.append(fn(part.to(device, dtype)).float().cpu())

    in_batches(run, len(batch), batch_size or len(batch), what="SyncNet", device=device)
    return torch.cat(parts)


def audio_embeddings(model: FoldedSyncNet, audio: np.ndarray, n_windows: int, device: torch.device,
                     batch_size: int) -> torch.Tensor:
    """(n_windows, 1024) audio embeddings of int16 16 kHz ``audio``, window v = MFCC columns 4v..4v+19."""
    mfcc_t = mfcc(audio).T  # (13, T)
    windows = torch.from_numpy(audio_windows(mfcc_t, 0, n_windows))  # (n, 1, 13, 20), 1 KB each
    return forward(model.forward_aud, windows, device, batch_size, dtype=_dtype(model))


class LipWindows:
    """Lip embeddings of 5-frame windows, computed while the crops arrive.

    Window v (frames v..v+4) is embedded once frame v+5 has arrived: the reference scores
    ``min(frames, audio frames) - 5`` windows, one fewer than would fit. ``limit`` caps the count
    by the audio. Only the crops of unfinished windows are kept (at most a batch plus 5).
    """

    def __init__(self, model: FoldedSyncNet, device: torch.device, batch_size: int, limit: int) -> None:
        self.model, self.device, self.batch_size, self.limit = model, device, batch_size, limit
        self.buffer: list[np.ndarray] = []  # crops from the first window not yet embedded
        self.done = 0
        self.seen = 0
        self.feats: list[torch.Tensor] = []

    def _ready(self) -> int:
        return max(0, min(self.limit, self.seen - WINDOW_FRAMES))

    @property
    def full(self) -> bool:
        """True once every frame the scored windows need has arrived (later crops are not looked at)."""
        return self.done + len(self.buffer) >= self.limit + WINDOW_FRAMES - 1

    def push(self, crop: np.ndarray | None) -> None:
        """Add the next frame's crop (``None`` is allowed once ``full``: only counted)."""
        self.seen += 1
        if self.full:
            return
        self.buffer.append(crop)
        if self._ready() - self.done >= self.batch_size:
            self._run(self.batch_size)

    def finish(self) -> torch.Tensor:
        while self._ready() > self.done:
            self._run(min(self.batch_size, self._ready() - self.done))
        return torch.cat(self.feats) if self.feats else torch.zeros(0, EMBED_DIM)

    def _run(self, n: int) -> None:
        frames = np.stack(self.buffer[:n + WINDOW_FRAMES - 1])
        if isinstance(self.model, FoldedSyncNet) and self.model.shares_frames():
            self.feats.append(self.model.forward_lip_frames(frames, n))
        else:
            windows = lip_windows(frames, n)
            self.feats.append(forward(self.model.forward_lip, windows, self.device, dtype=_dtype(self.model)))
        del self.buffer[:n]
        self.done += n


def _dtype(model: FoldedSyncNet) -> torch.dtype:
    """What ``model`` computes in (float32 for a stand-in without parameters, as tests plant)."""
    parameters = getattr(model, "parameters", None)
    param = next(parameters(), None) if parameters is not None else None
    return param.dtype if param is not None else torch.float32
