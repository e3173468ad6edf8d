"""SyncNet lip-sync scores (LSE-D, LSE-C, AV offset) of any video, faithful to syncnet_python.

``python -m syncnet VIDEO...`` on the command line; from Python::

    from syncnet import EvalOptions, SyncNetEvaluator
    result = SyncNetEvaluator().evaluate("talk.mp4", EvalOptions(min_track=25))
    print(result.lse_d, result.lse_c, result.offset)
"""

from syncnet.evaluate import EvalOptions, SyncNetEvaluator, TrackResult, VideoResult, evaluate

__all__ = ["EvalOptions", "SyncNetEvaluator", "TrackResult", "VideoResult", "evaluate"]
