"""From S3FD head outputs to face boxes: anchors/priors, SSD decoding, NMS (pure numpy).

Two post-processing chains are reproduced:

* Wav2Lip's ``batch_detect`` + ``nms`` + ``score > 0.5`` on the 12 head maps of :class:`~face_detection.s3fd.S3FD`
  (anchors in pixels, IoU with ``+1`` widths, threshold 0.3);
* syncnet_python's ``Detect`` (priors normalised by the input size, per-class confidence 0.05, NMS 0.3
  without ``+1``, top 750) followed by its detector's ``conf_th`` and second NMS at 0.1.

The originals decode every candidate in a Python loop and run NMS over all of them; here the
decoding is vectorised and only boxes that can survive the final score threshold are decoded.
That gives the same boxes: greedy NMS decides about a box using only boxes of higher (or equal)
score, so boxes below the final threshold never influence one above it. Exact score ties between
distinct boxes are broken by position (level, row, column) here, where the originals depend on
the order of an unstable sort.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# conv3_3 sits after 2 poolings (stride 4); every later level halves the map: 4, 8, ..., 128
S3FD_STRIDES = tuple(2 ** (level + 2) for level in range(6))
# anchor side = 4 x stride ("equal-proportion interval principle", S3FD paper section 3.1): 16 ... 512 px
ANCHOR_SIDE_PER_STRIDE = 4
S3FD_ANCHOR_SIDES = tuple(ANCHOR_SIDE_PER_STRIDE * s for s in S3FD_STRIDES)
# SSD box-encoding variances (centre offsets, log sizes)
VARIANCES = (0.1, 0.2)

# Wav2Lip (face_detection/detection/sfd): candidates above 0.05, NMS IoU 0.3, keep score > 0.5
S3FD_CANDIDATE_THRESHOLD = 0.05
S3FD_NMS_THRESHOLD = 0.3
S3FD_KEEP_THRESHOLD = 0.5

# syncnet_python detectors/s3fd Detect(): per-class confidence, NMS, boxes kept per class, NMS input cap
SSD_CONF_THRESHOLD = 0.05
SSD_NMS_THRESHOLD = 0.3
SSD_TOP_K = 750
SSD_NMS_TOP_K = 5000
# run_pipeline.py: detect_faces(conf_th=0.9), then nms_(bboxes, 0.1)
SFD_FACE_CONF_THRESHOLD = 0.9
SFD_FACE_FINAL_NMS_THRESHOLD = 0.1

FACE = 1  # class index of "face" in the 2-class heads (0 = background)


def softmax(x: np.ndarray, axis: int) -> np.ndarray:
    """Numerically stable softmax in the input's float dtype."""
    z = np.exp(x - x.max(axis=axis, keepdims=True))
    return z / z.sum(axis=axis, keepdims=True)


def decode(loc: np.ndarray, priors: np.ndarray, variances: tuple[float, float] = VARIANCES) -> np.ndarray:
    """SSD decoding: offsets (..., 4) against priors (..., 4) [cx, cy, w, h] -> boxes (..., 4) x1, y1, x2, y2.

    Same operation order as the references (float32 in, float32 out).
    """
    centre = priors[..., :2] + loc[..., :2] * variances[0] * priors[..., 2:]
    size = priors[..., 2:] * np.exp(loc[..., 2:] * variances[1])
    top_left = centre - size / 2
    return np.concatenate([top_left, size + top_left], axis=-1)


def s3fd_anchors(rows: np.ndarray, cols: np.ndarray, stride: int) -> np.ndarray:
    """Anchors [cx, cy, side, side] in input pixels for the given map positions, (n, 4) float32."""
    anchors = np.empty((len(rows), 4), dtype=np.float32)
    anchors[:, 0] = stride / 2 + cols * stride
    anchors[:, 1] = stride / 2 + rows * stride
    anchors[:, 2:] = ANCHOR_SIDE_PER_STRIDE * stride
    return anchors


def _face_probs(heads: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Face probability per level, (B, h, w) each, from the 12 head maps [cls1, reg1, ..., cls6, reg6]."""
    if len(heads) != 2 * len(S3FD_STRIDES):
        raise ValueError(f"expected {2 * len(S3FD_STRIDES)} S3FD head outputs, got {len(heads)}")
    return [softmax(np.asarray(heads[2 * k], dtype=np.float32), axis=1)[:, FACE] for k in range(len(S3FD_STRIDES))]


def s3fd_candidates(heads: Sequence[np.ndarray], threshold: float = S3FD_CANDIDATE_THRESHOLD) -> np.ndarray:
    """Wav2Lip's ``batch_detect`` output: (N, B, 5) [x1, y1, x2, y2, score] in input pixels.

    One row per map position where the face probability exceeds ``threshold`` in ANY image of the
    batch (positions in ``np.where`` order over (image, row, column), levels in order), holding that
    position's box and score for every image; a position that fires in k images appears k times.
    Kept for fidelity checks; :func:`s3fd_detections` is the fast path.
    """
    probs = _face_probs(heads)
    rows = []
    for k, stride in enumerate(S3FD_STRIDES):
        _, r, c = np.nonzero(probs[k] > threshold)
        if len(r) == 0:
            continue
        reg = np.asarray(heads[2 * k + 1], dtype=np.float32)[:, :, r, c].transpose(0, 2, 1)  # (B, n, 4)
        boxes = decode(reg, s3fd_anchors(r, c, stride)[None])
        rows.append(np.concatenate([boxes, probs[k][:, r, c][..., None]], axis=-1).transpose(1, 0, 2))
    if not rows:
        return np.zeros((0, len(probs[0]), 5), dtype=np.float32)
    return np.concatenate(rows).astype(np.float32, copy=False)


def nms(dets: np.ndarray, threshold: float, *, plus_one: bool, top_k: int | None = None) -> np.ndarray:
    """Greedy non-maximum suppression; returns indices of kept rows, highest score first.

    ``dets`` (n, 5) [x1, y1, x2, y2, score]. A box is dropped when its IoU with an already kept box
    exceeds ``threshold``. ``plus_one``: pixel-inclusive widths (x2 - x1 + 1), as Wav2Lip's bbox.nms;
    syncnet_python's nms/nms_ use plain widths. ``top_k``: only the ``top_k`` best boxes are considered.
    """
    dets = np.asarray(dets)
    if len(dets) == 0:
        return np.zeros(0, dtype=np.intp)
    one = 1 if plus_one else 0
    x1, y1, x2, y2, scores = (dets[:, i] for i in range(5))
    areas = (x2 - x1 + one) * (y2 - y1 + one)
    order = np.argsort(-scores, kind="stable")
    if top_k is not None:
        order = order[:top_k]
    keep = []
    while len(order):
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + one)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + one)
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter)
        order = rest[iou <= threshold]
    return np.asarray(keep, dtype=np.intp)


def s3fd_detections(heads: Sequence[np.ndarray], *, nms_threshold: float = S3FD_NMS_THRESHOLD,
                    keep_threshold: float = S3FD_KEEP_THRESHOLD) -> list[np.ndarray]:
    """Wav2Lip's detections per image: (n, 5) float32 [x1, y1, x2, y2, score] in input pixels, best first.

    Equal to NMS over :func:`s3fd_candidates` followed by ``score > keep_threshold`` (see module
    docstring), but decodes only the boxes above ``keep_threshold``.
    """
    probs = _face_probs(heads)
    out = []
    for b in range(len(probs[0])):
        per_level = []
        for k, stride in enumerate(S3FD_STRIDES):
            r, c = np.nonzero(probs[k][b] > keep_threshold)
            if len(r) == 0:
                continue
            reg = np.asarray(heads[2 * k + 1][b], dtype=np.float32)[:, r, c].T  # (n, 4)
            boxes = decode(reg, s3fd_anchors(r, c, stride))
            per_level.append(np.concatenate([boxes, probs[k][b, r, c][:, None]], axis=1))
        if not per_level:
            out.append(np.zeros((0, 5), dtype=np.float32))
            continue
        dets = np.concatenate(per_level).astype(np.float32, copy=False)
        out.append(dets[nms(dets, nms_threshold, plus_one=True)])
    return out


def ssd_priors(input_hw: tuple[int, int], feature_hw: Sequence[tuple[int, int]],
               steps: Sequence[int] = S3FD_STRIDES, min_sizes: Sequence[int] = S3FD_ANCHOR_SIDES) -> np.ndarray:
    """syncnet_python's PriorBox: (P, 4) float32 [cx, cy, w, h] normalised by the input size.

    Rows level by level, each level row-major over (y, x).
    """
    height, width = input_hw
    levels = []
    for (fh, fw), step, size in zip(feature_hw, steps, min_sizes, strict=True):
        # computed in float64 like the reference's Python floats, stored as float32
        cy, cx = np.meshgrid((np.arange(fh) + 0.5) / (height / step), (np.arange(fw) + 0.5) / (width / step),
                             indexing="ij")
        level = np.empty((fh * fw, 4))
        level[:, 0] = cx.ravel()
        level[:, 1] = cy.ravel()
        level[:, 2] = size / width
        level[:, 3] = size / height
        levels.append(level)
    return np.concatenate(levels).astype(np.float32)


def ssd_detect(loc: np.ndarray, conf: np.ndarray, priors: np.ndarray, *, conf_threshold: float = SSD_CONF_THRESHOLD,
               nms_threshold: float = SSD_NMS_THRESHOLD, top_k: int = SSD_TOP_K,
               nms_top_k: int = SSD_NMS_TOP_K) -> np.ndarray:
    """syncnet_python's ``Detect.forward``: (B, 2, top_k, 5) float32 rows [score, x1, y1, x2, y2] (normalised).

    ``loc`` (B, P, 4) raw offsets, ``conf`` (B, P, 2) softmax scores, ``priors`` (P, 4). Class 0
    (background) stays all zero; zero rows pad the end.
    """
    loc = np.asarray(loc, dtype=np.float32)
    conf = np.asarray(conf, dtype=np.float32)
    out = np.zeros((len(loc), conf.shape[-1], top_k, 5), dtype=np.float32)
    for b in range(len(loc)):
        for cls in range(1, conf.shape[-1]):
            mask = conf[b, :, cls] > conf_threshold
            if not mask.any():
                continue
            boxes = decode(loc[b, mask], priors[mask])
            dets = np.concatenate([boxes, conf[b, mask, cls][:, None]], axis=1)
            keep = nms(dets, nms_threshold, plus_one=False, top_k=nms_top_k)[:top_k]
            out[b, cls, : len(keep), 0] = dets[keep, 4]
            out[b, cls, : len(keep), 1:] = dets[keep, :4]
    return out


def sfd_face_detections(loc: np.ndarray, conf: np.ndarray, priors: np.ndarray, frame_wh: tuple[float, float], *,
                        conf_threshold: float = SFD_FACE_CONF_THRESHOLD,
                        final_nms_threshold: float = SFD_FACE_FINAL_NMS_THRESHOLD) -> list[np.ndarray]:
    """syncnet_python's ``S3FD.detect_faces`` after the net, per image: (n, 5) float32 [x1, y1, x2, y2, score].

    Normalised boxes are multiplied by ``frame_wh`` (the frame size before any detection scaling, as
    the reference does). Equal to :func:`ssd_detect` -> ``score > conf_threshold`` -> NMS
    ``final_nms_threshold``, but decodes only boxes above ``conf_threshold``.
    """
    loc = np.asarray(loc, dtype=np.float32)
    conf = np.asarray(conf, dtype=np.float32)
    scale = np.array(tuple(frame_wh) * 2, dtype=np.float32)
    out = []
    for b in range(len(loc)):
        mask = conf[b, :, FACE] > max(conf_threshold, SSD_CONF_THRESHOLD)
        boxes = decode(loc[b, mask], priors[mask])
        dets = np.concatenate([boxes, conf[b, mask, FACE][:, None]], axis=1)
        dets = dets[nms(dets, SSD_NMS_THRESHOLD, plus_one=False, top_k=SSD_NMS_TOP_K)[:SSD_TOP_K]]
        dets[:, :4] *= scale
        out.append(dets[nms(dets.astype(np.float64), final_nms_threshold, plus_one=False)])
    return out
