"""An S3FD face detector from a checkpoint: a registry name (resolved and checked by common.weights) or a file."""

from __future__ import annotations

import os

import torch

from common import weights
from common.errors import WeightsError
from face_detection.detector import FaceDetector, Variant


def load_detector(name_or_path: str | os.PathLike, variant: Variant, *, device: str | torch.device = "cpu",
                  weights_dir: str | os.PathLike | None = None, winograd: int | None = None,
                  dtype: torch.dtype = torch.float32, across_cores: bool = False) -> FaceDetector:
    """An S3FD detector from a registry name or file (``s3fd`` for lip sync, ``sfd_face`` for scoring).

    ``winograd`` (see FaceDetector): the block size of the deep layers' Winograd convolutions on the
    CPU in float32, or None for direct ones. The transformed kernels are 4x the weights (about 170 MB
    more for S3FD). ``across_cores``: see FaceDetector.
    """
    path = weights.resolve(name_or_path, weights_dir=weights_dir)
    fix = weights.how_to_replace(name_or_path, path, weights_dir=weights_dir)
    try:
        return FaceDetector(weights.load_state_dict(path, fix=fix), variant=variant, device=device, winograd=winograd,
                            dtype=dtype, across_cores=across_cores)
    except ValueError as exc:  # face_detection reports a checkpoint that does not fit the net this way
        raise WeightsError(f"{path.name}: {exc}") from exc
