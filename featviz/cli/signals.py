"""SIGTERM and SIGINT as a request to stop between photos, for the batch commands.

Slurm's ``scancel``, a job's time limit and preemption send SIGTERM (then SIGKILL after the
cluster's ``KillWait``, 30 s by default); Ctrl-C sends SIGINT. Python's default would end the
process at once, in the middle of a photo. While :func:`stop_on_signals` is active, the first
such signal only sets a flag that the batch engines (:class:`featviz.output.export.Exporter`,
:class:`featviz.atlas.export.AtlasRun`) read between batches: the photo in flight is finished
(its files and manifest line written whole), nothing new starts, the atlas state is written,
and the command exits with :func:`exit_code` (128 + the signal's number: 143 for SIGTERM, 130
for SIGINT, as a shell reports a process the signal ended). A second Ctrl-C stops at once
(``KeyboardInterrupt``), for a user who cannot wait.

Signal handling is the CLI's business: the library only takes a ``stop`` callable.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["StopRequest", "exit_code", "stop_on_signals"]

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """Callable flag: ``request()`` is True once a stop signal arrived; ``signal`` is its number."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __call__(self) -> bool:
        return self.signal is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal is not None else ""


def exit_code(request: StopRequest) -> int:
    """128 + the signal's number: what a shell reports for a process that signal ended."""
    return 128 + int(request.signal or signal.SIGINT)


@contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Catch SIGTERM and SIGINT into a :class:`StopRequest` while the block runs; the previous
    handlers come back afterwards; a signal whose handler was ``SIG_IGN`` stays ignored. Outside the
    main thread (where Python cannot set handlers, e.g. a command run from a worker thread) the
    request is never set and signals act as before."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if request.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        if request.signal is None:
            request.signal = signum

    # a signal the parent ignored (SIGINT of a background job in a non-interactive shell) stays ignored
    previous = {number: signal.signal(number, handler) for number in SIGNALS
                if signal.getsignal(number) is not signal.SIG_IGN}
    try:
        yield request
    finally:
        for number, old in previous.items():
            signal.signal(number, old)
