"""What the command lines share: how the user typed the command, and where the checkpoints are."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path


def command_name(package: str) -> str:
    """The command as the user typed it: ``lipsync``/``lipsync-score``, or ``python -m {package}``."""
    name = Path(sys.argv[0]).name
    return f"python -m {package}" if name in ("__main__.py", "-c", "") else name


def add_model_arguments(p: argparse.ArgumentParser, checkpoints: Mapping[str, tuple[str, str]] | None = None) -> None:
    """``--device``, a flag per checkpoint (``name: (default, help)``) and ``--weights-dir``: the same for a
    single run and a batch of the same command."""
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    for name, (default, text) in (checkpoints or {}).items():
        p.add_argument(f"--{name}", default=default, metavar="PATH", help=text)
    p.add_argument("--weights-dir", type=Path,
                   help="folder with the checkpoints (else $LIPSYNC_WEIGHTS_DIR or the Hub)")
