"""The only module that knows where weights come from.

A model name resolves to a local file in this order:
1. an explicit path (CLI flag / argument), or ``LIPSYNC_<NAME>_PATH``;
2. ``$LIPSYNC_WEIGHTS_DIR/<canonical file name>`` (no Hub access at all);
3. a download from the Hugging Face Hub (cached by ``huggingface_hub``, honours ``HF_HUB_OFFLINE``),
   repo/file/revision overridable with ``LIPSYNC_<NAME>_REPO`` / ``_FILE`` / ``_REVISION``.

Every file used has its SHA-256 logged and compared with the digest of the published file. A
download from the registry's Hub mirror that differs is deleted and refused; a file the user gave
(1, 2, or a download from an overridden repo or file) is used with a warning, so re-saved and
fine-tuned checkpoints still work. Checkpoints are loaded with ``torch.load(weights_only=True)``, so
a file cannot run code on load.
"""

from __future__ import annotations

import logging
import os
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from common.errors import WeightsError
from common.hashing import file_sha256

log = logging.getLogger(__name__)

WEIGHTS_DIR_ENV = "LIPSYNC_WEIGHTS_DIR"


@dataclass(frozen=True)
class WeightSpec:
    name: str
    file_name: str  # canonical name inside LIPSYNC_WEIGHTS_DIR
    repo_id: str
    filename: str  # path inside the Hub repo
    revision: str = "main"
    sha256: str | None = None  # full digest of the published file


# The original files live on Google Drive / SharePoint / university servers; these are public Hub
# mirrors of the same files. Their commit hashes could not be read from here, so revisions default
# to "main" and can be pinned with LIPSYNC_<NAME>_REVISION. Each digest is one that independent
# public sources (download scripts, model manifests, Hub cache blob names) give for the file.
REGISTRY: dict[str, WeightSpec] = {
    spec.name: spec
    for spec in (
        # 435,801,865 bytes
        WeightSpec("wav2lip_gan", "wav2lip_gan.pth", "camenduru/Wav2Lip", "checkpoints/wav2lip_gan.pth",
                   sha256="ca9ab7b7b812c0e80a6e70a5977c545a1e8a365a6c49d5e533023c034d7ac3d8"),
        # 435,807,851 bytes; the same digest for the SadTalker, rippertnt/wav2lip and numz/wav2lip_studio copies
        WeightSpec("wav2lip", "wav2lip.pth", "numz/wav2lip_studio", "Wav2lip/wav2lip.pth",
                   sha256="b78b681b68ad9fe6c6fb1debc6ff43ad05834a8af8a62ffc4167b7b34ef63c37"),
        # 89,843,225 bytes, published as s3fd-619a316812.pth (torch.hub names carry the digest's first 10 digits)
        WeightSpec("s3fd", "s3fd.pth", "camenduru/Wav2Lip", "face_detection/detection/sfd/s3fd.pth",
                   sha256="619a31681264d3f7f7fc7a16a42cbbe8b23f31a256f75a366e5a1bcd59b33543"),
        WeightSpec("syncnet_v2", "syncnet_v2.model", "lithiumice/syncnet", "syncnet_v2.model",
                   sha256="961e8696f888fce4f3f3a6c3d5b3267cf5b343100b238e79b2659bff2c605442"),
        # 89,844,381 bytes; the digest of the Oxford file, which several audio-visual projects pin
        WeightSpec("sfd_face", "sfd_face.pth", "lithiumice/syncnet", "sfd_face.pth",
                   sha256="d54a87c2b7543b64729c9a25eafd188da15fd3f6e02f0ecec76ae1b30d86c491"),
    )
}


def spec_for(name: str) -> WeightSpec:
    """The registry entry for ``name`` with any ``LIPSYNC_<NAME>_REPO/_FILE/_REVISION`` overrides."""
    try:
        spec = REGISTRY[name]
    except KeyError:
        raise WeightsError(f"unknown model '{name}'; available: {', '.join(REGISTRY)}") from None
    prefix = f"LIPSYNC_{name.upper()}_"
    overrides = {
        field: os.environ[prefix + env]
        for field, env in (("repo_id", "REPO"), ("filename", "FILE"), ("revision", "REVISION"))
        if os.environ.get(prefix + env)
    }
    return replace(spec, **overrides) if overrides else spec


def _how_to_provide(spec: WeightSpec) -> str:
    return (
        f"put '{spec.file_name}' (from the Hub repo '{spec.repo_id}', file '{spec.filename}') in a folder "
        f"and set {WEIGHTS_DIR_ENV}=that/folder, or set LIPSYNC_{spec.name.upper()}_PATH=/path/to/the/file"
    )


def _download(spec: WeightSpec) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(repo_id=spec.repo_id, filename=spec.filename, revision=spec.revision))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as exc:
        raise WeightsError(
            f"could not get the {spec.name} weights from the Hugging Face Hub ({exc.__class__.__name__}); "
            + _how_to_provide(spec)
        ) from exc


def verify(path: Path, spec: WeightSpec | None, *, downloaded: bool = False) -> str:
    """Log the file's SHA-256 and compare it with the published file's. Returns the digest.

    ``downloaded``: the file came from the registry's own Hub mirror; one that differs is deleted from
    the Hugging Face cache and refused. Any other file that differs is used, with a warning.
    """
    digest = file_sha256(path)
    label = spec.name if spec else path.name
    log.info("weights %s: %s sha256=%s", label, path, digest)
    if spec is None or spec.sha256 is None or digest == spec.sha256:
        return digest
    if downloaded:
        _remove_from_cache(path)
        raise WeightsError(
            f"the {spec.name} weights downloaded from the Hub repo '{spec.repo_id}' ('{spec.filename}') are not "
            f"the published file: sha256 {digest}, expected {spec.sha256}; the download was deleted. Try again "
            "later (the mirror may have been changed), or " + _how_to_provide(spec)
        )
    log.warning(
        "WARNING: %s is not the published %s file (sha256 %s, expected %s); using it as given, as for a re-saved "
        "or fine-tuned checkpoint", path, spec.name, digest, spec.sha256,
    )
    return digest


def _remove_from_cache(path: Path) -> None:
    """Delete a downloaded file: the Hugging Face cache's blob and the snapshot's link to it."""
    blob = path.resolve()
    for item in {path, blob}:
        item.unlink(missing_ok=True)


def _local_sources(spec: WeightSpec, weights_dir: str | os.PathLike | None) -> tuple[str | None, str | None]:
    """``(LIPSYNC_<NAME>_PATH, weights folder)``, either unset: where ``resolve`` looks before the Hub."""
    return os.environ.get(f"LIPSYNC_{spec.name.upper()}_PATH") or None, weights_dir or os.environ.get(WEIGHTS_DIR_ENV)


def how_to_replace(name_or_path: str | os.PathLike, path: Path, *,
                   weights_dir: str | os.PathLike | None = None) -> str:
    """What to do about a checkpoint that cannot be used, depending on where ``resolve`` found it."""
    if str(name_or_path) not in REGISTRY:
        return f"replace '{path}' with a complete copy of the original checkpoint"
    spec = spec_for(str(name_or_path))
    explicit, folder = _local_sources(spec, weights_dir)
    if explicit:
        return f"point LIPSYNC_{spec.name.upper()}_PATH at a complete copy, or unset it to use the Hub's"
    if folder:
        return f"replace it with a complete copy: {_how_to_provide(spec)}"
    # the Hub cache links the file name to a blob; without the blob the next run downloads it again
    return f"delete {path.resolve()} (the Hugging Face cache's copy) and it is downloaded again on the next run"


def resolve(name_or_path: str | os.PathLike, *, weights_dir: str | os.PathLike | None = None) -> Path:
    """Local file for a registry name or an explicit path (see module docstring for the order)."""
    if str(name_or_path) not in REGISTRY:
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise WeightsError(
                f"checkpoint file '{path}' does not exist; pass a file path or one of: {', '.join(REGISTRY)}"
            )
        verify(path, None)
        return path
    spec = spec_for(str(name_or_path))
    explicit, folder = _local_sources(spec, weights_dir)
    downloaded = False
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise WeightsError(f"LIPSYNC_{spec.name.upper()}_PATH points to '{path}', which does not exist")
    elif folder:
        path = Path(folder).expanduser() / spec.file_name
        if not path.is_file():
            raise WeightsError(
                f"'{spec.file_name}' is missing from {WEIGHTS_DIR_ENV}={folder}: " + _how_to_provide(spec)
            )
    else:
        path, downloaded = _download(spec), _is_registry_file(spec)
    verify(path, spec, downloaded=downloaded)
    return path


def _is_registry_file(spec: WeightSpec) -> bool:
    """Whether ``spec`` names the registry's own file (a revision may be pinned), not a repo or file of the
    user's choosing (``LIPSYNC_<NAME>_REPO`` / ``_FILE``), whose digest may rightly differ."""
    own = REGISTRY[spec.name]
    return (spec.repo_id, spec.filename) == (own.repo_id, own.filename)


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    """Drop a DataParallel-style prefix from every key that has it."""
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state_dict.items()}


def _is_zip(path: Path) -> bool:
    """A complete zip archive (the torch >= 1.6 format), not the legacy pickle/tar one."""
    with open(path, "rb") as fh:
        magic = fh.read(4)
    return magic == b"PK\x03\x04" and zipfile.is_zipfile(path)


def _damaged_entry(path: Path) -> str | None:
    """The first archive member whose CRC-32 does not match (tensor bytes torch.load would not check)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip()
    except (zipfile.BadZipFile, OSError) as exc:
        return str(exc)


def load_state_dict(path: Path, *, mmap: bool = False, fix: str | None = None) -> dict[str, torch.Tensor]:
    """Read a checkpoint safely; unwrap ``{"state_dict": ...}`` and strip ``module.``.

    A zip-format file's members are checked against their CRC-32 first (0.25 s for 140 MB), so
    damage inside the tensor data is found too. ``mmap``: map the tensors instead of reading them
    (zip files; older ones are read), for checking a file without its memory cost. ``fix``: what
    the error tells the user to do.
    """
    fix = fix or f"replace '{path}' with a complete copy"
    is_zip = _is_zip(path)
    if is_zip and (damaged := _damaged_entry(path)):
        raise WeightsError(f"cannot read checkpoint '{path}': it is damaged ({damaged} fails its CRC check); {fix}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and is_zip)
    except pickle.UnpicklingError as exc:
        # weights_only admits tensors, containers and numbers; a reference to anything else (a
        # GLOBAL: a function or class) is what lets a pickle run code
        named = [line.strip() for line in str(exc).splitlines() if "GLOBAL" in line]
        if named:
            raise WeightsError(f"refused checkpoint '{path}': it holds Python objects other than tensors "
                               f"({named[0][:160]}), and loading those could run code; {fix}") from exc
        raise WeightsError(f"cannot read checkpoint '{path}': it is not a PyTorch checkpoint, or it is damaged; "
                           f"{fix}") from exc
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        # torch reports a truncated zip archive as RuntimeError, an empty file as EOFError
        detail = str(exc).split(". ")[0][:200]  # torch's messages go on with advice about other cases
        raise WeightsError(f"cannot read checkpoint '{path}' ({exc.__class__.__name__}: {detail}): "
                           f"the file is incomplete or damaged; {fix}") from exc
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"'{path}' is not a state dict of tensors; {fix}")
    return strip_prefix(obj)


def check_state_dict(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], *,
                     label: str, optional_suffixes: tuple[str, ...] = ()) -> None:
    """Raise WeightsError naming the first missing/unexpected key or shape mismatch.

    Keys ending with one of ``optional_suffixes`` may be absent from the file.
    """
    expected = model.state_dict()
    for key, tensor in expected.items():
        if key not in state_dict:
            if key.endswith(optional_suffixes):
                continue
            raise WeightsError(f"{label}: checkpoint lacks '{key}' — is this the right file for {label}?")
        if tuple(state_dict[key].shape) != tuple(tensor.shape):
            raise WeightsError(f"{label}: '{key}' has shape {tuple(state_dict[key].shape)} in the checkpoint, "
                               f"the model expects {tuple(tensor.shape)} — is this the right file for {label}?")
    for key in state_dict:
        if key not in expected:
            raise WeightsError(f"{label}: unexpected key '{key}' in the checkpoint — is this the right file "
                               f"for {label}?")


def load_model(model: torch.nn.Module, name_or_path: str | os.PathLike, *, label: str | None = None,
               weights_dir: str | os.PathLike | None = None,
               optional_suffixes: tuple[str, ...] = ()) -> torch.nn.Module:
    """Resolve, verify, check and load weights into ``model`` (eval mode); returns the model."""
    path = resolve(name_or_path, weights_dir=weights_dir)
    sd = load_state_dict(path, fix=how_to_replace(name_or_path, path, weights_dir=weights_dir))
    label = label or str(name_or_path)
    check_state_dict(model, sd, label=label, optional_suffixes=optional_suffixes)
    model.load_state_dict(sd, strict=not optional_suffixes)
    return model.eval()


def check_file(name_or_path: str | os.PathLike, model: torch.nn.Module, *, label: str,
               weights_dir: str | os.PathLike | None = None, optional_suffixes: tuple[str, ...] = ()) -> Path:
    """Resolve a checkpoint and check that it reads and fits ``model``, without loading its weights.

    The tensors are memory-mapped and only their names and shapes are compared, so ``model`` may
    live on the meta device. WeightsError names the file and what to do about it.
    """
    path = resolve(name_or_path, weights_dir=weights_dir)
    fix = how_to_replace(name_or_path, path, weights_dir=weights_dir)
    state_dict = load_state_dict(path, mmap=True, fix=fix)
    try:
        check_state_dict(model, state_dict, label=label, optional_suffixes=optional_suffixes)
    except WeightsError as exc:
        raise WeightsError(f"{path}: {exc}; {fix}") from exc
    return path
