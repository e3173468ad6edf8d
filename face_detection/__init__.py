"""Face detection for lip sync and its evaluation: S3FD nets, decoding/NMS, box logic, face tracks.

Above ``common`` (errors, weights) and below the engine and the evaluator, which share it: the
networks take an already-loaded state dict (``loading`` reads one through ``common.weights``), and the
pieces both detection presets share live here too (``keyframes``). Import the submodules themselves
(``face_detection.detector``...): this package imports nothing at start-up, so the pure box logic loads
without torch.
"""
