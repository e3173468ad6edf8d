"""Face detection for lip sync and its evaluation: S3FD nets, decoding/NMS, box logic, face tracks.

Imports nothing from the rest of this project: networks take an already-loaded state dict.
"""

from face_detection.boxes import choose_face, fill_gaps, nan_runs, pad_boxes, smooth_boxes, wav2lip_rect
from face_detection.detector import FaceDetector
from face_detection.s3fd import S3FD
from face_detection.sfd_face import SFDFace
from face_detection.tracking import Track, iou, link_tracks

__all__ = [
    "S3FD",
    "FaceDetector",
    "SFDFace",
    "Track",
    "choose_face",
    "fill_gaps",
    "iou",
    "link_tracks",
    "nan_runs",
    "pad_boxes",
    "smooth_boxes",
    "wav2lip_rect",
]
