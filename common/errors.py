"""Error types whose messages tell the user what to do next.

The library raises these; the CLI prints the message and exits with status 2, the app shows it
as a ``gr.Error``. Anything else reaching the user is a bug.
"""


class LipSyncError(Exception):
    """Base class: the message is meant for the user, as is."""


class InputError(LipSyncError):
    """An input file or option that cannot be used (not a video, no audio, empty, corrupt...)."""


class NoFaceError(LipSyncError):
    """No usable face where one is required."""


class WeightsError(LipSyncError):
    """A checkpoint that cannot be found, downloaded, verified or loaded."""


class DependencyError(LipSyncError):
    """An optional package that the chosen option or feature needs is not installed (the message says
    how to install it)."""


class Cancelled(Exception):  # noqa: N818 - a request to stop, not a failure
    """The caller asked the run to stop (its ``should_stop`` returned True, e.g. the client left).

    Not a LipSyncError: there is nobody to tell. Partial outputs are removed, as on any failure.
    """
