"""The Wav2Lip generator, with the released checkpoints' layer names, and its input/output glue.

The network: a face encoder (96x96 -> 1x1, seven stages), an audio encoder (80x16 mel -> 1x1),
and a decoder that starts from the audio embedding and upsamples back to 96x96, concatenating
the face encoder's feature of the same size after each stage (U-Net skips). The face input is
the target frame with its lower half blanked (channels 0-2) next to a reference frame (3-5; the
same frame at inference), both BGR /255. The output is the BGR face in [0, 1].
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from common import weights
from common.network_batches import in_batches

FACE_SIZE = 96  # generator input/output side, pixels
MASK_FROM_ROW = FACE_SIZE // 2  # rows 48..95 (mouth half) are hidden from the generator
LABEL = "Wav2Lip"  # how checkpoint errors name the network

Stride = int | tuple[int, int]


class Conv2d(nn.Module):
    """Conv (with bias) -> BatchNorm -> (+ input) -> ReLU; ``conv_block.0`` / ``conv_block.1`` as saved."""

    def __init__(self, cin: int, cout: int, kernel_size: int, stride: Stride, padding: int,
                 residual: bool = False) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel_size, stride, padding), nn.BatchNorm2d(cout))
        self.act = nn.ReLU()
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_block(x)
        if self.residual:
            out = out + x
        return self.act(out)


class Conv2dTranspose(nn.Module):
    """ConvTranspose (with bias) -> BatchNorm -> ReLU."""

    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int, padding: int,
                 output_padding: int = 0) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ConvTranspose2d(cin, cout, kernel_size, stride, padding, output_padding), nn.BatchNorm2d(cout)
        )
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv_block(x))


def _down(cin: int, cout: int, n_residual: int, stride: Stride = 2) -> nn.Sequential:
    """A k3 p1 conv (strided: downsamples) followed by ``n_residual`` same-size residual convs."""
    layers: list[nn.Module] = [Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1)]
    layers += [Conv2d(cout, cout, 3, 1, 1, residual=True) for _ in range(n_residual)]
    return nn.Sequential(*layers)


def _up(cin: int, cout: int, n_residual: int, stride: int = 2) -> nn.Sequential:
    """A k3 transposed conv (stride 2: doubles the size; stride 1, no padding: 1 -> 3) + residual convs."""
    if stride == 1:
        first = Conv2dTranspose(cin, cout, kernel_size=3, stride=1, padding=0)
    else:
        first = Conv2dTranspose(cin, cout, kernel_size=3, stride=stride, padding=1, output_padding=1)
    layers: list[nn.Module] = [first]
    layers += [Conv2d(cout, cout, 3, 1, 1, residual=True) for _ in range(n_residual)]
    return nn.Sequential(*layers)


class Wav2Lip(nn.Module):
    """Wav2Lip generator; ``forward(audio, face)`` with audio first, as the original."""

    def __init__(self) -> None:
        super().__init__()
        # spatial size after each stage: 96, 48, 24, 12, 6, 3, 1
        self.face_encoder_blocks = nn.ModuleList([
            nn.Sequential(Conv2d(6, 16, kernel_size=7, stride=1, padding=3)),
            _down(16, 32, 2),
            _down(32, 64, 3),
            _down(64, 128, 2),
            _down(128, 256, 2),
            _down(256, 512, 1),
            nn.Sequential(Conv2d(512, 512, kernel_size=3, stride=1, padding=0),  # 3x3 -> 1x1
                          Conv2d(512, 512, kernel_size=1, stride=1, padding=0)),
        ])
        # mel 80x16 -> 80x16 -> 27x16 -> 9x6 -> 3x3 -> 1x1; flat Sequential as in the checkpoint
        self.audio_encoder = nn.Sequential(
            *_down(1, 32, 2, stride=1),
            *_down(32, 64, 2, stride=(3, 1)),
            *_down(64, 128, 2, stride=3),
            *_down(128, 256, 1, stride=(3, 2)),
            Conv2d(256, 512, kernel_size=3, stride=1, padding=0),
            Conv2d(512, 512, kernel_size=1, stride=1, padding=0),
        )
        # input channels = previous decoder output + the concatenated encoder skip
        self.face_decoder_blocks = nn.ModuleList([
            nn.Sequential(Conv2d(512, 512, kernel_size=1, stride=1, padding=0)),  # 1x1
            _up(1024, 512, 1, stride=1),  # 1 -> 3
            _up(1024, 512, 2),  # 3 -> 6
            _up(768, 384, 2),  # 6 -> 12
            _up(512, 256, 2),  # 12 -> 24
            _up(320, 128, 2),  # 24 -> 48
            _up(160, 64, 2),  # 48 -> 96
        ])
        self.output_block = nn.Sequential(
            Conv2d(80, 32, kernel_size=3, stride=1, padding=1),
            nn.Conv2d(32, 3, kernel_size=1, stride=1, padding=0),
            nn.Sigmoid(),
        )

    def encode_face(self, face: torch.Tensor) -> list[torch.Tensor]:
        """face (B,6,96,96) -> the face encoder's output at each size, 96x96 first (the decoder's skips)."""
        features = []
        x = face
        for block in self.face_encoder_blocks:
            x = block(x)
            features.append(x)
        return features

    def decode(self, audio: torch.Tensor, features: list[torch.Tensor]) -> torch.Tensor:
        """audio (B,1,80,16) and ``encode_face``'s features of B faces -> (B,3,96,96) in [0, 1]."""
        skips = list(features)
        x = self.audio_encoder(audio)  # (B, 512, 1, 1)
        for block in self.face_decoder_blocks:
            x = torch.cat((block(x), skips.pop()), dim=1)
        return self.output_block(x)

    def forward(self, audio: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
        """audio (B,1,80,16), face (B,6,96,96) -> (B,3,96,96) in [0, 1].

        5-D inputs audio (B,T,1,80,16), face (B,6,T,96,96) -> (B,3,T,96,96) (time folded into batch).
        """
        batch = audio.shape[0]
        sequence = face.dim() > 4
        if sequence:
            # time-major stacking, so the output splits back into chunks of `batch`
            audio = torch.cat(audio.unbind(1), dim=0)
            face = torch.cat(face.unbind(2), dim=0)

        x = self.decode(audio, self.encode_face(face))
        if sequence:
            x = torch.stack(torch.split(x, batch, dim=0), dim=2)
        return x


def load_wav2lip(name_or_path: str | os.PathLike = "wav2lip_gan", *, device: str | torch.device = "cpu",
                 weights_dir: str | os.PathLike | None = None, dtype: torch.dtype = torch.float32) -> Wav2Lip:
    """Build Wav2Lip, load a checkpoint (key/shape checked; WeightsError names the first mismatch).

    Returned in eval mode and channels_last memory format, which lets oneDNN/cuDNN pick faster kernels,
    computing in ``dtype`` (see :mod:`common.precision`).
    """
    model = Wav2Lip()
    weights.load_model(model, name_or_path, label=LABEL, weights_dir=weights_dir)
    return model.to(device=device, dtype=dtype, memory_format=torch.channels_last).eval()


def _faces_nhwc(crops_bgr_u8: np.ndarray) -> np.ndarray:
    """(B,96,96,3) uint8 -> (B,96,96,6) float32: [masked, full] / 255, channels last."""
    crops = np.asarray(crops_bgr_u8)
    if crops.dtype != np.uint8 or crops.ndim != 4 or crops.shape[1:] != (FACE_SIZE, FACE_SIZE, 3):
        raise ValueError(f"expected face crops of shape (B, {FACE_SIZE}, {FACE_SIZE}, 3) uint8, "
                         f"got {crops.shape} {crops.dtype}")
    # the original divides in float64 and casts to float32; per-value lookup gives identical bits
    scale = (np.arange(256, dtype=np.float64) / 255.0).astype(np.float32)
    out = np.empty(crops.shape[:3] + (6,), dtype=np.float32)
    out[..., 3:] = scale[crops]
    out[..., :3] = out[..., 3:]
    out[:, MASK_FROM_ROW:, :, :3] = 0.0
    return out


def prepare_faces(crops_bgr_u8: np.ndarray) -> np.ndarray:
    """Generator face input: (B,96,96,3) BGR uint8 -> (B,6,96,96) float32 (lower half masked + full)."""
    return np.ascontiguousarray(_faces_nhwc(crops_bgr_u8).transpose(0, 3, 1, 2))


def to_u8(pred: torch.Tensor | np.ndarray) -> np.ndarray:
    """Generator output (B,3,96,96) in [0, 1] -> (B,96,96,3) uint8, truncating as the original."""
    if isinstance(pred, torch.Tensor):
        pred = pred.detach().to("cpu", torch.float32).numpy()
    return (pred.transpose(0, 2, 3, 1) * 255).astype(np.uint8)


def to_device(tensor: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``tensor`` on ``device``: to a GPU through pinned memory without blocking (the copy overlaps the
    host's work until the result is needed); unchanged on the CPU but for the dtype."""
    if device.type == "cuda":
        tensor = tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device, dtype) if dtype is not None else tensor


def _uses_channels_last(model: nn.Module) -> bool:
    first = next(model.parameters())  # the first conv's 16x6x7x7 weight (folded or not): unambiguous layout
    return first.is_contiguous(memory_format=torch.channels_last) and not first.is_contiguous()


def distinct_crops(crops: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """``(unique, inverse)`` with ``crops == unique[inverse]``, or ``(crops, None)`` when no two are equal.

    A still photo gives the same crop on every frame, so the face encoder (8 % of the generator's
    work) needs to see it once per batch; only the audio differs from face to face.
    """
    first: dict[bytes, int] = {}  # a crop's bytes -> its index among the distinct crops
    inverse = np.array([first.setdefault(crop.tobytes(), len(first)) for crop in crops], dtype=np.int64)
    if len(first) == len(crops):
        return crops, None
    return np.ascontiguousarray(crops[np.unique(inverse, return_index=True)[1]]), inverse


def generate(model: Wav2Lip, mels: np.ndarray, crops: np.ndarray, *, batch_size: int | None = None) -> np.ndarray:
    """Run the generator: mels (B,80,16) float32, crops (B,96,96,3) BGR uint8 -> (B,96,96,3) uint8.

    The network computes in the dtype of its weights (inputs are cast to it, the output back to float32).
    Equal crops (a still photo) are encoded once (:func:`distinct_crops`).

    Works through the inputs ``batch_size`` at a time (default: all); on torch.OutOfMemoryError the
    batch is halved and the failed part retried, down to one face.
    """
    mels = np.asarray(mels, dtype=np.float32)
    if mels.ndim != 3 or mels.shape[0] != len(crops):
        raise ValueError(f"expected mels (B, 80, 16) matching {len(crops)} crops, got {mels.shape}")
    total = len(crops)
    out = np.empty((total, FACE_SIZE, FACE_SIZE, 3), dtype=np.uint8)
    if total == 0:
        return out
    param = next(model.parameters())
    device, dtype, channels_last = param.device, param.dtype, _uses_channels_last(model)

    cuda = device.type == "cuda"

    def run(start: int, stop: int) -> None:
        audio = to_device(torch.from_numpy(mels[start:stop, None]), device, dtype)  # (b, 1, 80, 16)
        unique, inverse = distinct_crops(crops[start:stop])
        # permuting an NHWC array gives a channels_last tensor without a copy
        face = to_device(torch.from_numpy(_faces_nhwc(unique)), device, dtype).permute(0, 3, 1, 2)
        if not channels_last:
            face = face.contiguous()
        features = model.encode_face(face)
        if inverse is not None:  # each distinct crop encoded once, its features given to every face showing it
            index = torch.from_numpy(inverse).to(device)
            memory_format = torch.channels_last if channels_last else torch.contiguous_format
            features = [f.index_select(0, index).contiguous(memory_format=memory_format) for f in features]
        pred = model.decode(audio, features)
        if cuda:  # to uint8 on the GPU, as to_u8 does (float32 product, truncation): a quarter of the copy back
            out[start:stop] = (pred.float() * 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        else:
            out[start:stop] = to_u8(pred)

    with torch.inference_mode():
        in_batches(run, total, batch_size or total, what="the Wav2Lip generator", device=device)
    return out
