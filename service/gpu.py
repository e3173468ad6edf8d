"""How much GPU time a request asks ZeroGPU for: a shorter request waits less in its queue."""

from __future__ import annotations

import math

GPU_START_SECONDS = 15  # a worker starting, the weights moving onto its GPU
GPU_LIPSYNC_PER_SECOND = 0.5  # per second of output
GPU_SCORE_PER_SECOND = 0.5  # per second of video scored
PREVIEW_GPU_SECONDS = 20  # one frame


def gpu_seconds(video_seconds: float, scored_seconds: float) -> int:
    """GPU time to ask ZeroGPU for: a lip sync of ``video_seconds`` and scoring ``scored_seconds`` of video.

    Not measured on ZeroGPU (no GPU was available while this was written): the rates assume a tenth of
    the speed benchmarks/gpu_check.py targets (20x real time for each), plus the worker's start-up.
    """
    return math.ceil(GPU_START_SECONDS + video_seconds * GPU_LIPSYNC_PER_SECOND
                     + scored_seconds * GPU_SCORE_PER_SECOND)
