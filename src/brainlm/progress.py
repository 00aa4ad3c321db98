"""Progress bars that suit a terminal and a cluster log alike.

On a terminal, :func:`progress` is an ordinary ``tqdm`` bar. When standard error is not a
terminal (a SLURM log, a file, a pipe), a bar redrawn with carriage returns would fill the
log with one enormous line, so the bar instead prints a complete line about every
``log_interval`` seconds (30 by default, ``BRAINLM_LOG_INTERVAL`` to change), and a last
line when it closes. ``BRAINLM_PROGRESS=0`` turns every bar off (scripts that read standard
error, tests).
"""

from __future__ import annotations

import os
import sys
from typing import Any, Iterable, TextIO

__all__ = ["progress", "is_terminal"]


def is_terminal(stream: TextIO | None = None) -> bool:
    stream = stream if stream is not None else sys.stderr
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class _Lines:
    """A file-like object that turns tqdm's carriage-return redraws into whole lines."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, text: str) -> int:
        text = text.replace("\r", "").replace("\x1b[A", "")
        if text.strip():
            self.stream.write(text.rstrip("\n") + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def progress(iterable: Iterable | None = None, *, enabled: bool = True, stream: TextIO | None = None,
             log_interval: float | None = None, **kwargs: Any):
    """A ``tqdm`` bar (``desc``, ``total``, ``unit``, ... as tqdm), or ``iterable`` itself when disabled.

    Args:
        iterable: what to iterate over (or None for a manual bar with ``total=``).
        enabled: False returns a bar that prints nothing.
        stream: where to write (default standard error).
        log_interval: seconds between lines when ``stream`` is not a terminal.
    """
    from tqdm.auto import tqdm

    stream = stream if stream is not None else sys.stderr
    if not enabled or os.environ.get("BRAINLM_PROGRESS", "1").strip() == "0":
        return tqdm(iterable, disable=True, **kwargs)
    if is_terminal(stream):
        return tqdm(iterable, file=stream, dynamic_ncols=True, **kwargs)
    interval = log_interval if log_interval is not None else float(os.environ.get("BRAINLM_LOG_INTERVAL", 30))
    # miniters=1: every update checks the clock, so tqdm never grows ``miniters`` and its monitor
    # thread never forces a redraw (which it does without resetting the clock, so the next update
    # printed the same line again).
    return tqdm(iterable, file=_Lines(stream), mininterval=interval, maxinterval=max(interval, 1.0),
                miniters=1, ncols=100, ascii=True, **kwargs)
