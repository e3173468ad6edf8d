"""Face detection for lip sync and its evaluation: S3FD nets, decoding/NMS, box logic, face tracks.

The bottom layer of the project: it imports nothing from the rest of it (networks take an
already-loaded state dict), so the pieces every network shares live here too (``batching``,
``keyframes``). Import the submodules themselves (``face_detection.detector``...): this package
imports nothing at start-up, so the pure box logic loads without torch.
"""
