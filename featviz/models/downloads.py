"""Downloading pretrained weights without hanging, and saying what to do when it fails.

torch.hub downloads through urllib without a timeout, so a server that accepts a connection and
never answers would hang a run forever and leave a ``.partial`` file behind. Offline machines are
common for featviz's users: the error names the file torchvision wanted and the folder it looks in.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from featviz.errors import UsageError, WeightsError

#: Seconds a download may wait for the server to answer (each connect and each read), before it
#: fails with a message; ``FEATVIZ_DOWNLOAD_TIMEOUT`` changes it.
DOWNLOAD_TIMEOUT = 60.0


def download_timeout() -> float:
    """``FEATVIZ_DOWNLOAD_TIMEOUT`` (seconds, > 0), else :data:`DOWNLOAD_TIMEOUT`."""
    text = os.environ.get("FEATVIZ_DOWNLOAD_TIMEOUT", "")
    try:
        value = float(text) if text.strip() else DOWNLOAD_TIMEOUT
    except ValueError:
        raise UsageError(f"FEATVIZ_DOWNLOAD_TIMEOUT={text!r} is not a number of seconds") from None
    if not value > 0:
        raise UsageError(f"FEATVIZ_DOWNLOAD_TIMEOUT={text!r} must be more than 0 seconds")
    return value


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """torch.hub downloads through urllib without a timeout: a server that accepts and never
    answers would hang forever. The default socket timeout applies to urllib's sockets; it is
    restored afterwards."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def download_guarded(build: Any, weights: Any) -> Any:
    """Build with pretrained weights; a failed download becomes an error that says what to do.
    The download times out (:func:`download_timeout`) and leaves no ``.partial`` file."""
    filename = os.path.basename(weights.url)
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    timeout = download_timeout()
    partials_before = set(cache.glob(f"{filename}.*.partial"))
    try:
        # torch.hub prints "Downloading" on stdout
        with contextlib.redirect_stdout(sys.stderr), _socket_timeout(timeout):
            return build()
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        for partial in set(cache.glob(f"{filename}.*.partial")) - partials_before:
            partial.unlink(missing_ok=True)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, TimeoutError) or "timed out" in reason:
            reason = f"no answer from the server within {timeout:g} s (FEATVIZ_DOWNLOAD_TIMEOUT): {reason}"
        cached = (cache / filename).exists()
        what = "could not be loaded" if cached else "are not cached and could not be downloaded"
        raise WeightsError(
            f"pretrained weights {filename} {what} ({reason}); torchvision looks for them in "
            f"{cache} (set TORCH_HOME to move it)",
            hint=f"put {filename} there, or pass the file with --weights PATH (its official name is "
            "recognised; a renamed copy: --weights NAME --weights-file PATH), or --weights none for random weights",
        ) from exc
