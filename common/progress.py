"""Progress bars that count items as a stream yields them.

``tqdm(iterable)`` is not used for streams that are read while other bars are open: Gradio's tqdm
tracking (``gr.Progress(track_tqdm=True)``, the app's) keeps the open bars on a stack and, when an
iterated bar and another bar interleave - the lip sync's detection pass is read from inside its
render loop - it takes the wrong bar off the stack and the next item raises IndexError. A bar updated
by hand is safe there: Gradio only updates and closes those.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def counted(items: Iterable[T], *, total: int | None, desc: str, unit: str = "frame",
            disable: bool = False) -> Iterator[T]:
    """Yield ``items`` while a progress bar counts them; the bar closes when the stream ends or is dropped."""
    with tqdm(total=total, desc=desc, unit=unit, disable=disable) as bar:
        for item in items:
            yield item
            bar.update(1)
