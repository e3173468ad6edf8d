"""Which number format the networks run in: one policy for the generator, both detectors and SyncNet.

``fp32`` runs the published models as they are (the golden tests hold it to the original's
numbers). ``bf16`` and ``fp16`` run the same weights rounded to 16-bit formats; ``auto`` picks
what is fast on the hardware at hand, decided at run time, never assumed:

* on CUDA, a 16-bit format: bf16 where the GPU has it (Ampere and later), else fp16. bf16 keeps
  float32's exponent range, which the detectors need: S3FD's L2Norm sums squared activations over
  512 channels, and on the golden image that sum already reaches 45,869 at conv3_3, close to
  fp16's largest value (65,504), beyond which the normalised features would be zeros;
* on a CPU whose runtime reports native bf16 arithmetic (AVX-512 BF16 or AMX), bf16: on such a
  CPU a bf16 matrix product runs about 2.3x faster than fp32;
* on any other CPU, fp32: there bf16 is emulated, and the Wav2Lip generator ran 20x *slower* in
  bf16 than in fp32 on a 2-core AVX2 AMD EPYC (1641 against 83 ms per face), and 3.5x slower on a
  2-core AVX-512 Xeon without BF16 (290 against 84 ms).

Only the arithmetic inside the networks changes: inputs and outputs stay float32 / uint8.
"""

from __future__ import annotations

import functools
import logging
from typing import Literal

import torch

from common.errors import InputError

log = logging.getLogger(__name__)

Precision = Literal["auto", "fp32", "bf16", "fp16"]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@functools.lru_cache(maxsize=1)
def native_bf16() -> bool:
    """Whether this CPU does bf16 arithmetic in hardware (oneDNN's AVX-512 BF16 or AMX kernels)."""
    cpu = torch.cpu
    return bool(cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported())


@functools.lru_cache(maxsize=1)
def native_fp16() -> bool:
    """Whether this CPU does fp16 arithmetic in hardware (AMX-FP16)."""
    return bool(torch.cpu._is_amx_fp16_supported())


def resolve(precision: str, device: str | torch.device) -> torch.dtype:
    """The dtype the networks run in for ``precision`` on ``device``; InputError for fp16 on a CPU without it."""
    device = torch.device(device)
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "cpu" and native_bf16():
            return torch.bfloat16
        _note_fp32_fallback()
        return torch.float32
    if precision not in DTYPES:
        raise InputError(f"precision must be one of auto, {', '.join(DTYPES)}, not {precision!r}")
    dtype = DTYPES[precision]
    if device.type == "cpu" and dtype == torch.float16 and not native_fp16():
        raise InputError("precision fp16 needs a GPU or a CPU with AMX-FP16, which this one lacks: "
                         "use bf16 or fp32 (or auto)")
    if device.type == "cpu" and dtype == torch.bfloat16 and not native_bf16():
        log.warning("precision bf16 on a CPU without native bf16: it is emulated and much slower than fp32")
    return dtype


@functools.lru_cache(maxsize=1)
def _note_fp32_fallback() -> None:
    log.info("precision auto: this CPU has no native bf16 (AVX-512 BF16 / AMX), so the networks run in fp32")
