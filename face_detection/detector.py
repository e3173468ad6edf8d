"""Batched face detection on BGR frames with either S3FD checkpoint.

``variant="s3fd"`` reproduces Wav2Lip (``face_detection.api.FaceAlignment.get_detections_for_batch``
without its "take the first box" step); ``variant="sfd_face"`` reproduces syncnet_python's
``S3FD.detect_faces(image, conf_th=0.9, scales=[scale])`` as run_pipeline.py calls it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import cv2
import numpy as np
import torch

from common.network_batches import in_batches
from face_detection import s3fd, sfd_face
from face_detection.cores import across_cores, workers_for
from face_detection.memory import release_free_memory
from face_detection.postprocess import s3fd_detections, sfd_face_detections, ssd_priors
from face_detection.s3fd import S3FD
from face_detection.sfd_face import SFDFace
from face_detection.winograd import MIN_COMPILED_CHANNELS, load_kernels, use_winograd

Variant = Literal["s3fd", "sfd_face"]

# Both nets see RGB. Wav2Lip flips BGR->RGB and then subtracts the (BGR) training means in RGB
# order; syncnet_python subtracts them in BGR order and then flips, so its R channel gets 123.
MEAN_RGB = {"s3fd": (104.0, 117.0, 123.0), "sfd_face": (123.0, 117.0, 104.0)}
# inference.py --face_det_batch_size
DEFAULT_BATCH_SIZE = 16
# On CPU a batch is capped by pixels, not frames: the first VGG block's 64-channel maps of one 320x180
# frame (15 MB) already fill most of the last-level cache, and bigger batches only spill it. Measured
# on a 2-core AVX2 CPU with sfd_face at 320x180: 16-frame batches ~330 ms per frame, single frames
# ~220 ms. Small frames (e.g. 160x90) still go four at a time.
CPU_BATCH_PIXELS = 64 * 1024
# A batch of the per-core workers (single-threaded, face_detection.cores) holds up to this many pixels:
# two 320x180 frames. Their wide layers then read each Winograd kernel once for both (sfd_face, 2-core
# Zen 4 EPYC: 90-98 ms a frame in batches of one, 84-87 in twos, 93 in fours).
CPU_CORE_BATCH_PIXELS = 2 * CPU_BATCH_PIXELS
# On a GPU a batch is capped by free memory: S3FD's widest maps are conv1's 64 channels at full size,
# and about four of them are alive at once (input, output, ReLU, pooling), so 256 values per pixel.
GPU_VALUES_PER_PIXEL = 64 * 4
# On CPU, S3FD runs maps larger than this in strips of rows (face_detection.strips; the same boxes):
# 2M values (8 MB in float32) per strip map keeps a strip's layers in the last-level cache. On a full
# 720p frame (2-core AVX2 CPU, direct convolutions) peak RSS went from 812 to 603 MB; with Winograd
# convolutions the frame took 3.5 s instead of 5.2 s whole (on whole maps Winograd is slower: 4.9 s).
CPU_STRIP_VALUES = 1 << 21


def pooled_side(side: int, pools: Sequence[str]) -> int:
    """A map side after 2x2 stride-2 max-pools, "M" rounding down, "C" up (ceil_mode); 0: nothing left.

    PyTorch refuses to pool a map of one row or column without ceil_mode (the output would be empty).
    """
    for pool in pools:
        side = -(-side // 2) if pool == "C" else side // 2
    return side


# Smallest frame side (after any detection scaling) each net can run on: the five max-pools must
# leave at least one row and column (fc6 and the stride-2 extras after them never empty a map).
# s3fd floors every pool: floor(side / 32) >= 1, so 32 px. sfd_face rounds its third pool up:
# ceil(floor(side / 4) / 2) must reach 4 for the last two pools to leave a row, so floor(side / 4)
# >= 7: 28 px. Smaller frames get no detections (they are too small to hold a detectable face).
MIN_SIDE: dict[str, int] = {
    variant: next(side for side in range(1, 1 << 10) if pooled_side(side, pools) >= 1)
    for variant, pools in (("s3fd", s3fd.POOLS), ("sfd_face", sfd_face.POOLS))
}


def runs_winograd(device: str | torch.device, dtype: torch.dtype) -> bool:
    """Whether a detector asked for Winograd layers gets them: float32 on a CPU (elsewhere they would
    cost 16-bit formats more rounding than they save, and cuDNN picks its own algorithms)."""
    return torch.device(device).type == "cpu" and dtype == torch.float32


def scaled_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """The size ``cv2.resize(frame, (0, 0), fx=scale, fy=scale)`` gives (rounded to nearest, half to even)."""
    return (width, height) if scale == 1.0 else (round(width * scale), round(height * scale))


def _check_keys(net: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], variant: str) -> None:
    """Raise ValueError naming the first missing/unexpected/mis-shaped key (before load_state_dict's wall of text)."""
    expected = net.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        hint = ""
        other = "sfd_face" if variant == "s3fd" else "s3fd"
        if ("vgg.0.weight" if other == "sfd_face" else "conv1_1.weight") in state_dict:
            hint = f" (this looks like a {other} checkpoint: use variant='{other}')"
        first = f"missing key '{missing[0]}'" if missing else f"unexpected key '{unexpected[0]}'"
        raise ValueError(f"{variant} checkpoint does not fit: {first}; {len(missing)} missing, "
                         f"{len(unexpected)} unexpected{hint}")
    for key, value in expected.items():
        if tuple(state_dict[key].shape) != tuple(value.shape):
            raise ValueError(f"{variant} checkpoint does not fit: '{key}' has shape {tuple(state_dict[key].shape)}, "
                             f"expected {tuple(value.shape)}")


class FaceDetector:
    """S3FD face detector over batches of same-size BGR frames.

    ``state_dict``: the checkpoint's tensors (``s3fd.pth`` for ``"s3fd"``, ``sfd_face.pth`` for
    ``"sfd_face"``), already loaded, without any ``module.`` prefix. ``winograd``: on CPU, the output
    block size m of the Winograd F(m x m, 3x3) convolutions used for the wide layers (see
    :mod:`face_detection.winograd`; 4 is fastest, 2 takes less memory), or None (default) for direct ones;
    float32 only. ``across_cores``: on CPU, run the batches of a call on all cores at once, each on one
    thread (faster on small frames: sfd_face on 320x180 frames in float32 went from 139-150 to 85-95 ms
    a frame with the compiled Winograd transforms, on a 2-core Zen 4; the workers' memory comes on top,
    about 170 MB there, plus numba's 120 MB). ``dtype``: what the network computes in (float32 as
    published; bfloat16/float16 are faster where the hardware has them); frames go in as uint8 and
    boxes come out as float32 either way.
    """

    def __init__(self, state_dict: Mapping[str, torch.Tensor], *, variant: Variant = "s3fd",
                 device: str | torch.device = "cpu", batch_size: int = DEFAULT_BATCH_SIZE,
                 winograd: int | None = None, dtype: torch.dtype = torch.float32, across_cores: bool = False) -> None:
        if variant not in MEAN_RGB:
            raise ValueError(f"unknown detector variant '{variant}'; available: {', '.join(MEAN_RGB)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        net: torch.nn.Module = S3FD() if variant == "s3fd" else SFDFace()
        _check_keys(net, state_dict, variant)
        net.load_state_dict(state_dict, strict=True)
        self.variant: Variant = variant
        self.min_side = MIN_SIDE[variant]
        self.device = torch.device(device)
        net = net.eval().to(self.device, dtype)
        if self.device.type == "cpu":
            # oneDNN's CPU convolutions run fastest with channels-last activations and weights, and
            # the wide 3x3 layers faster still as Winograd convolutions (same result to ~5e-6 in
            # float32; the kernel transforms would cost 16-bit formats far more than that)
            net = net.to(memory_format=torch.channels_last)
            # both nets run their first blocks in strips of rows (sfd_face's took 90 MB less with two
            # workers on two 320x180 frames each, at the same speed)
            net.strip_values = CPU_STRIP_VALUES
            if winograd and runs_winograd(self.device, dtype):
                use_winograd(net, block=winograd, min_compiled=MIN_COMPILED_CHANNELS)
                if across_cores:  # the workers run the compiled loops: loaded now, not in the first call
                    load_kernels()
        if isinstance(net, SFDFace):
            net.use_rewrites()  # fc6 without the taps that read padding, loc and conf as one (same outputs)
        self.net = net
        self.batch_size = batch_size
        self.dtype = dtype
        self.across_cores = across_cores
        release_free_memory()  # the checkpoint's and the kernel transforms' temporaries
        self._mean = torch.tensor(MEAN_RGB[variant], dtype=torch.float32, device=self.device)

    def detect(self, frames: Sequence[np.ndarray] | np.ndarray, *, scale: float = 1.0,
               batch_size: int | None = None) -> list[np.ndarray]:
        """Faces per frame: (n, 5) float32 [x1, y1, x2, y2, score] in the frames' own pixels, best first.

        ``frames``: BGR uint8 (H, W, 3) frames of one size, or a (B, H, W, 3) array. ``scale`` != 1
        resizes them (cv2 INTER_LINEAR) before the net; boxes are mapped back to the full frames.
        Frames whose net input would be under ``min_side`` on a side have no detections.
        ``batch_size`` overrides the detector's for this call. With ``across_cores`` on CPU, small
        frames (up to CPU_BATCH_PIXELS) go in batches that run on all cores at once, one a core
        (:mod:`face_detection.cores`).
        """
        if len(frames) == 0:
            return []
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}")
        shape = frames[0].shape
        if len(shape) != 3 or shape[2] != 3 or any(f.shape != shape for f in frames):
            raise ValueError(f"frames must be (H, W, 3) BGR images of one size; got {shape} and others")
        height, width = shape[:2]
        if min(scaled_size(width, height, scale)) < self.min_side:
            return [np.zeros((0, 5), np.float32) for _ in frames]
        if scale != 1.0:
            frames = [cv2.resize(np.ascontiguousarray(f), (0, 0), fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
                      for f in frames]
        net_h, net_w = frames[0].shape[:2]

        requested = batch_size or self.batch_size
        size = requested
        if self.device.type == "cpu":
            size = max(1, min(size, CPU_BATCH_PIXELS // (net_h * net_w)))
        elif self.device.type == "cuda":
            size = max(1, min(size, self._frames_that_fit(net_h * net_w)))
        results: list[np.ndarray] = []
        per_core = self._per_core_batch(requested, len(frames), net_h * net_w)
        if per_core:
            parts = [frames[start:start + per_core] for start in range(0, len(frames), per_core)]
            try:
                for found in across_cores(lambda part: self._detect_batch(part, (height, width)), parts):
                    results.extend(found)
                return results
            except torch.OutOfMemoryError:  # the batches one after another, halved where they must be
                results.clear()

        def run(start: int, stop: int) -> None:
            results.extend(self._detect_batch(frames[start:stop], (height, width)))

        worked = in_batches(run, len(frames), size, what="face detection", device=self.device)
        if worked < min(size, len(frames)):  # halved on out-of-memory: later calls start from what fitted
            self.batch_size = min(self.batch_size, worked)
        return results

    def _per_core_batch(self, size: int, n_frames: int, pixels: int) -> int | None:
        """Frames per batch when the batches of a call run on all cores at once (face_detection.cores):
        up to CPU_CORE_BATCH_PIXELS, fewer when that leaves a core without one; None: one after another.
        Only small frames: a large one (a 720p frame in strips) gained nothing from it in bfloat16 (1.62 s
        a frame either way) and two at once took 170 MB more."""
        if not self.across_cores or self.device.type != "cpu" or pixels > CPU_BATCH_PIXELS:
            return None
        workers = workers_for(n_frames)
        per_core = max(1, min(size, CPU_CORE_BATCH_PIXELS // pixels, -(-n_frames // workers)))
        return per_core if workers_for(-(-n_frames // per_core)) > 1 else None

    def _frames_that_fit(self, pixels: int) -> int:
        """Frames of ``pixels`` each that half the GPU's free memory holds while S3FD runs on them."""
        free, _ = torch.cuda.mem_get_info(self.device)
        per_frame = pixels * GPU_VALUES_PER_PIXEL * torch.finfo(self.dtype).bits // 8
        return int(free // 2 // per_frame)

    @torch.inference_mode()
    def _detect_batch(self, frames: Sequence[np.ndarray] | np.ndarray, frame_hw: tuple[int, int]) -> list[np.ndarray]:
        batch = torch.from_numpy(np.ascontiguousarray(frames if isinstance(frames, np.ndarray) else np.stack(frames)))
        if self.device.type == "cuda":  # pinned, so the copy does not block the host
            batch = batch.pin_memory()
        # uint8 travels to the device; BGR->RGB, float, mean; NHWC permuted to NCHW (channels-last strides)
        x = (batch.to(self.device, non_blocking=True).flip(-1).float() - self._mean).permute(0, 3, 1, 2)
        x = x.to(self.dtype)
        height, width = frame_hw
        net_h, net_w = x.shape[2:]
        if self.variant == "s3fd":
            heads = [h.float().cpu().numpy() for h in self.net(x)]
            dets = s3fd_detections(heads)
            if (net_h, net_w) != (height, width):
                factor = np.array([width / net_w, height / net_h] * 2, dtype=np.float32)
                for d in dets:
                    d[:, :4] *= factor
            return dets
        out = self.net(x)
        priors = ssd_priors((net_h, net_w), out.feature_hw)
        # normalised boxes times the original frame size, as the reference maps them back
        return sfd_face_detections(out.loc.float().cpu().numpy(), out.conf.float().cpu().numpy(), priors,
                                   (width, height))
