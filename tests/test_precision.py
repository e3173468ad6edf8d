"""The precision policy (common.precision) and the 16-bit paths, bounded against float32.

The bounds are about twice what was measured with the generated (golden-formula) weights on the
golden inputs: generator output mean 0.18 (0.14 folded, as the engine runs it) and max 1 grey level;
S3FD's top ten boxes IoU >= 0.998; sfd_face heads within 0.0067 (loc) and 0.0036 (softmax); SyncNet
embeddings 0.74 % relative error.
The float32 path itself is held to the original's numbers by the golden tests.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from common import precision, weights
from common.errors import InputError
from face_detection.detector import FaceDetector
from face_detection.sfd_face import SFDFace
from face_detection.tracking import iou
from lipsync.folded import load_folded_wav2lip
from lipsync.model import generate, load_wav2lip
from lipsync.options import LipSyncOptions
from lipsync.pipeline import LipSync
from syncnet.folded import FoldedSyncNet
from syncnet.model import load_syncnet
from syncnet.options import EvalOptions

FP32, BF16 = torch.float32, torch.bfloat16


@pytest.mark.parametrize("native, expected", [(True, BF16), (False, FP32)])
def test_auto_follows_the_cpu(monkeypatch, native, expected):
    monkeypatch.setattr(precision, "native_bf16", lambda: native)
    assert precision.resolve("auto", "cpu") == expected
    assert precision.resolve("fp32", "cpu") == FP32
    assert precision.resolve("bf16", "cpu") == BF16  # asked for: runs, emulated where not native


@pytest.mark.parametrize("bf16_gpu, expected", [(True, BF16), (False, torch.float16)])
def test_auto_is_16_bit_on_cuda(monkeypatch, bf16_gpu, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_gpu)
    assert precision.resolve("auto", "cuda") == expected
    assert precision.resolve("bf16", "cuda") == BF16 and precision.resolve("fp16", "cuda") == torch.float16


def test_fp16_on_a_cpu_without_it_is_refused(monkeypatch):
    monkeypatch.setattr(precision, "native_fp16", lambda: False)
    with pytest.raises(InputError, match="fp16 needs a GPU"):
        precision.resolve("fp16", "cpu")
    with pytest.raises(InputError, match="precision must be one of"):
        precision.resolve("fp64", "cpu")


def test_defaults_lip_sync_auto_scoring_fp32(monkeypatch):
    monkeypatch.setattr(precision, "native_bf16", lambda: True)
    assert LipSyncOptions().precision == "auto" and EvalOptions().precision == "fp32"
    engine = LipSync(device="cpu")
    assert engine.dtype(LipSyncOptions()) == BF16
    assert engine.dtype(LipSyncOptions(precision="fp32")) == FP32


def test_generator_bf16_within_a_grey_level(weights_dir, golden, face_image_bgr):
    g = golden("wav2lip_generator")
    face = cv2.resize(np.ascontiguousarray(face_image_bgr[20:300, 130:380]), (96, 96))
    crops = np.stack([*g["faces_bgr_u8"], face, np.ascontiguousarray(face[:, ::-1])])
    mels = np.concatenate([g["mel_input"][:, 0]] * 2)
    reference = generate(load_wav2lip(weights_dir / "wav2lip_gan.pth"), mels, crops).astype(int)
    for load in (load_wav2lip, load_folded_wav2lip):  # the model as published, and as the engine runs it
        out = generate(load(weights_dir / "wav2lip_gan.pth", dtype=BF16), mels, crops).astype(int)
        diff = np.abs(reference - out)
        assert diff.mean() <= 0.35 and diff.max() <= 2, (load.__name__, diff.mean(), diff.max())


def test_s3fd_bf16_boxes_overlap_the_fp32_boxes(weights_dir, golden):
    image = np.ascontiguousarray(golden("s3fd_heads")["image_u8"][..., ::-1])
    sd = weights.load_state_dict(weights_dir / "s3fd.pth")
    fp32, bf16 = (FaceDetector(sd, dtype=dt).detect([image])[0] for dt in (FP32, BF16))
    assert len(fp32) >= 10 and len(bf16) >= 10
    assert min(max(iou(a[:4], b[:4]) for b in bf16) for a in fp32[:10]) >= 0.99
    assert abs(fp32[0, 4] - bf16[0, 4]) < 0.01


def test_sfd_face_bf16_heads_close_to_fp32(weights_dir, golden):
    x = torch.from_numpy(golden("sfd_face_net")["net_input"])[None]
    sd = weights.load_state_dict(weights_dir / "sfd_face.pth")
    heads = {}
    for dt in (FP32, BF16):
        net = SFDFace()
        net.load_state_dict(sd)
        with torch.inference_mode():
            out = net.eval().to(dt)(x.to(dt))
        heads[dt] = (out.loc.float(), out.conf.float())
    assert (heads[FP32][0] - heads[BF16][0]).abs().max() < 0.015
    assert (heads[FP32][1] - heads[BF16][1]).abs().max() < 0.008


def test_syncnet_bf16_embeddings_within_one_and_a_half_percent(weights_dir, golden):
    g = golden("syncnet_embeddings")
    lip = torch.from_numpy(g["lip_input_u8"]).float()
    mfcc = torch.from_numpy(g["audio_input"])
    feats = {}
    for dt in (FP32, BF16):
        net = FoldedSyncNet(load_syncnet(weights_dir / "syncnet_v2.model")).to(dt)
        with torch.inference_mode():
            feats[dt] = (net.forward_lip(lip.to(dt)).float(), net.forward_aud(mfcc.to(dt)).float())
    for a, b in zip(feats[FP32], feats[BF16], strict=True):
        assert ((a - b).norm(dim=1) / a.norm(dim=1)).max() < 0.015


def test_detector_runs_winograd_only_in_fp32(weights_dir):
    from face_detection.winograd import WinogradConv2d

    sd = weights.load_state_dict(weights_dir / "sfd_face.pth")
    det = FaceDetector(sd, variant="sfd_face", winograd=4, dtype=BF16)
    assert not any(isinstance(m, WinogradConv2d) for m in det.net.modules())
    assert next(det.net.parameters()).dtype == BF16
