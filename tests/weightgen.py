"""Deterministic full-size checkpoints in the real file layouts (see tests/data/golden/README.md §1).

The formula is the one the golden arrays were computed with, so loading these files into our
networks must reproduce the golden outputs. The key order and shapes come from the manifests of
the real checkpoints, not from our own modules, so a naming mistake in a module shows up as a
load error instead of being generated away.
"""

from __future__ import annotations

import json
import math
import zlib
from collections import OrderedDict
from pathlib import Path

import torch

MANIFESTS = Path(__file__).parent / "data" / "manifests"

# canonical file name -> manifest describing its real layout
CHECKPOINT_MANIFESTS = {
    "wav2lip.pth": "wav2lip.json",
    "wav2lip_gan.pth": "wav2lip.json",
    "s3fd.pth": "s3fd.json",
    "syncnet_v2.model": "syncnet_v2.json",
    "sfd_face.pth": "sfd_face.json",
}


def golden_value(name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The golden weight formula for one state-dict entry (``name`` without any ``module.`` prefix)."""
    g = torch.Generator().manual_seed(zlib.crc32(name.encode("utf-8")))
    if name.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.int64)
    if name.endswith("running_mean"):
        return 0.1 * torch.randn(shape, generator=g)
    if name.endswith("running_var"):
        return 1.0 + 0.1 * torch.rand(shape, generator=g)
    if name.endswith("bias"):
        return 0.1 * torch.randn(shape, generator=g)
    if len(shape) == 1:
        return 1.0 + 0.1 * torch.randn(shape, generator=g)
    fan_in = math.prod(shape[1:])
    return torch.randn(shape, generator=g) / math.sqrt(fan_in)


def manifest_entries(manifest: str) -> list[tuple[str, tuple[int, ...]]]:
    data = json.loads((MANIFESTS / manifest).read_text())
    return [(key, tuple(shape)) for key, shape, _dtype in data["state_dict"]]


def golden_state_dict(manifest: str) -> OrderedDict[str, torch.Tensor]:
    """State dict with the file's own keys (``module.`` kept where the real file has it)."""
    sd: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, shape in manifest_entries(manifest):
        bare = key[len("module.") :] if key.startswith("module.") else key
        sd[key] = golden_value(bare, shape)
    return sd


def write_checkpoint(file_name: str, directory: Path) -> Path:
    """Write ``file_name`` (a canonical name) into ``directory`` in the real checkpoint's layout."""
    manifest = CHECKPOINT_MANIFESTS[file_name]
    sd = golden_state_dict(manifest)
    if manifest == "wav2lip.json":
        # the training scripts' save format; the Adam state is left empty to keep the file small
        param_groups = [{"lr": 1e-4, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0,
                         "amsgrad": False, "params": list(range(302))}]
        payload: object = {"state_dict": sd, "optimizer": {"state": {}, "param_groups": param_groups},
                           "global_step": 0, "global_epoch": 0}
    else:
        payload = sd
    path = Path(directory) / file_name
    torch.save(payload, path)
    return path


def write_all(directory: Path) -> Path:
    """Write every canonical checkpoint into ``directory`` (usable as LIPSYNC_WEIGHTS_DIR)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name in CHECKPOINT_MANIFESTS:
        if not (directory / name).exists():
            write_checkpoint(name, directory)
    return directory


if __name__ == "__main__":
    import sys

    print(write_all(Path(sys.argv[1] if len(sys.argv) > 1 else "weights")))
