"""The progress bar of ``show`` and ``export``: tqdm on stderr, readable in a terminal and in a log.

tqdm (a well-kept library, about 30 ms to import) replaced a hand-written line; the CLI imports
this module only when a run starts, so ``featviz --help`` does not pay for it.
"""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm


class _LogLines:
    """A stream for tqdm that writes each redraw as a line of its own: in a log file (a job
    scheduler's, with --progress) carriage returns would pile every update into one line."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(total: int, enabled: bool) -> tqdm:
    """tqdm on stderr: images done, images/s and time left. On a terminal one line redrawn in
    place (at most 10 times a second); elsewhere (forced with --progress) a line every 5 s."""
    interactive = sys.stderr.isatty()
    return tqdm(total=total, desc="featviz", unit="image", disable=not (enabled and total > 0), leave=True,
                file=sys.stderr if interactive else _LogLines(sys.stderr), mininterval=0.1 if interactive else 5.0,
                dynamic_ncols=interactive, ascii=not interactive)
