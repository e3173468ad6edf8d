"""The folded Wav2Lip generator compiled by OpenVINO: what ``precision="auto"`` runs on a CPU without
native bf16, where the alternative is torch in float32.

Measured on a 2-core AVX2 AMD EPYC (2026-12-02), alternated in one process on the 10 s 720p benchmark
clip: a whole fast lip sync took 30.3-31.1 s against torch's 31.8-34.9 s, its generator 19.7-20.0 s
against 21.3-23.8 s; the uint8 mouths differ from torch's float32 ones by at most one grey level
(a few in a million values). ``precision="fp32"`` stays torch, bit for bit.

The network is exported in two parts, as :class:`lipsync.model.Wav2Lip` is: the face encoder and the
decoder (audio encoder included), so a still photo's crop is still encoded once per batch. Exporting
takes torch about 12 s and a few hundred MB, so it runs once per checkpoint in a child process
(``python -m lipsync.openvino_generator CHECKPOINT FOLDER``) and the result is kept under
``$LIPSYNC_CACHE_DIR/openvino`` keyed by the checkpoint's SHA-256 and the OpenVINO version. Anything
that goes wrong there is logged and the engine runs torch instead. ``LIPSYNC_OPENVINO=0`` turns it off.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from lipsync.hashing import file_sha256
from lipsync.model import FACE_SIZE, Wav2Lip

log = logging.getLogger(__name__)

PARTS = ("encoder", "decoder")
N_FEATURES = 7  # the face encoder's outputs, one per size (96, 48, 24, 12, 6, 3, 1)
EXPORT_FORMAT = 1  # bump when what export() writes changes: old cached folders are then not read
EXPORT_TIMEOUT_S = 600


def enabled() -> bool:
    """Whether OpenVINO may be used: installed, and not turned off with ``LIPSYNC_OPENVINO=0``."""
    if os.environ.get("LIPSYNC_OPENVINO", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def cache_folder(checkpoint: Path) -> Path:
    """Where the exported model of ``checkpoint`` is kept, for this OpenVINO version."""
    import openvino

    version = openvino.__version__.split("-")[0]
    root = Path(os.environ.get("LIPSYNC_CACHE_DIR") or Path.home() / ".cache" / "lipsync")
    return root / "openvino" / f"wav2lip-{file_sha256(checkpoint)[:16]}-ov{version}-f{EXPORT_FORMAT}"


class _Encoder(torch.nn.Module):
    def __init__(self, model: Wav2Lip) -> None:
        super().__init__()
        self.model = model

    def forward(self, face: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.model.encode_face(face))


class _Decoder(torch.nn.Module):
    def __init__(self, model: Wav2Lip) -> None:
        super().__init__()
        self.model = model

    def forward(self, audio: torch.Tensor, *features: torch.Tensor) -> torch.Tensor:
        return self.model.decode(audio, list(features))


def export(model: Wav2Lip, folder: Path) -> None:
    """Write ``model`` (folded, float32, on the CPU) as OpenVINO IR into ``folder`` (made whole or not at all)."""
    import openvino as ov

    face = torch.zeros(2, 6, FACE_SIZE, FACE_SIZE)
    audio = torch.zeros(2, 1, 80, 16)
    model = model.to(memory_format=torch.contiguous_format).eval()
    with torch.no_grad():
        features = [f.contiguous() for f in model.encode_face(face)]
        batch_free = [ov.PartialShape([-1, *t.shape[1:]]) for t in (audio, *features)]
        parts = {"encoder": ov.convert_model(_Encoder(model), example_input=(face,),
                                             input=[ov.PartialShape([-1, *face.shape[1:]])]),
                 "decoder": ov.convert_model(_Decoder(model), example_input=(audio, *features), input=batch_free)}
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    try:
        for name, part in parts.items():
            ov.save_model(part, staging / f"{name}.xml", compress_to_fp16=False)  # float32 weights, as exported
        try:
            staging.rename(folder)
        except OSError:
            if not folder.is_dir():  # not another process's export finished first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _export_in_child(checkpoint: Path, folder: Path) -> None:
    """Run :func:`export` in a fresh process, so its memory is given back when it ends."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[1]),
                                                                     os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "lipsync.openvino_generator", str(checkpoint), str(folder)],
                          capture_output=True, text=True, env=env, timeout=EXPORT_TIMEOUT_S, check=False)
    if done.returncode != 0 or not folder.is_dir():
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"exporting the generator to OpenVINO failed ({tail[0]})")


class OpenVINOGenerator:
    """``encode_face`` / ``decode`` of :class:`lipsync.model.Wav2Lip` on CPU float32 tensors,
    computed by OpenVINO; :func:`lipsync.model.generate` runs it as it runs the torch model."""

    device = torch.device("cpu")
    dtype = torch.float32
    channels_last = False  # it takes NCHW tensors

    def __init__(self, folder: Path, threads: int | None = None) -> None:
        import openvino as ov

        core = ov.Core()
        config = {"INFERENCE_NUM_THREADS": threads or torch.get_num_threads(), "INFERENCE_PRECISION_HINT": "f32"}
        self._compiled = {name: core.compile_model(core.read_model(folder / f"{name}.xml"), "CPU", config)
                          for name in PARTS}

    def encode_face(self, face: torch.Tensor) -> list[torch.Tensor]:
        out = self._compiled["encoder"](_array(face))
        return [torch.from_numpy(out[i]) for i in range(N_FEATURES)]

    def decode(self, audio: torch.Tensor, features: list[torch.Tensor]) -> torch.Tensor:
        out = self._compiled["decoder"]([_array(audio), *(_array(f) for f in features)])
        return torch.from_numpy(out[0])


def _array(tensor: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().numpy(), dtype=np.float32)


def load(checkpoint: Path) -> OpenVINOGenerator | None:
    """The generator of ``checkpoint`` compiled by OpenVINO (exported first if not cached), or None
    (logged) when it cannot be had: the caller then runs torch."""
    try:
        folder = cache_folder(checkpoint)
        if not folder.is_dir():
            log.info("exporting %s to OpenVINO (once per checkpoint, about 15 s) into %s", checkpoint.name, folder)
            _export_in_child(checkpoint, folder)
        return OpenVINOGenerator(folder)
    except Exception as exc:  # noqa: BLE001 - any failure here only costs speed
        log.warning("OpenVINO unavailable for the generator (%s): running it with torch in float32", exc)
        return None


def main(argv: list[str] | None = None) -> int:
    from lipsync.fused import load_folded_wav2lip

    checkpoint, folder = (Path(a) for a in (argv if argv is not None else sys.argv[1:]))
    export(load_folded_wav2lip(checkpoint), folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
