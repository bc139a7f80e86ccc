"""Handing a file to the system's viewer (``show --open``), quietly.

``click.launch`` starts ``xdg-open`` and returns at once, so on a machine without a display the
opener's complaints ("no method available for opening ...") land on the user's terminal after
featviz has said it succeeded. Here the opener's output is captured and its exit status read, so
the caller gets either ``None`` (handed over) or one line saying why the file was not opened.
A leaf module: it imports nothing from featviz.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

# How long to wait for the opener to report failure; openers that keep running past this are
# taken as having opened the file (some block until the browser they started exits).
OPENER_WAIT_S = 3.0
_RUNNING: list[subprocess.Popen[bytes]] = []


def viewer_command() -> list[str] | None:
    """The platform's file opener, or None on Windows (``os.startfile`` is used there)."""
    if sys.platform == "darwin":
        return ["open"]
    if sys.platform.startswith("win"):
        return None
    return ["xdg-open"]


def missing_display() -> str | None:
    """Why no window can open here, or None: on Linux and the BSDs a graphical session sets
    ``DISPLAY`` (X11) or ``WAYLAND_DISPLAY``; over plain SSH or in a container neither is set."""
    if sys.platform.startswith(("linux", "freebsd", "openbsd", "netbsd")) and not (
            os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "no display (neither DISPLAY nor WAYLAND_DISPLAY is set)"
    return None


def open_file(path: Path) -> str | None:
    """Open ``path`` in the system viewer. Returns None when the viewer took it, else one line
    saying why not; the opener's own output is discarded either way."""
    reason = missing_display()
    if reason:
        return reason
    command = viewer_command()
    if command is None:
        try:
            os.startfile(str(path))  # type: ignore[attr-defined]  # Windows only
        except OSError as exc:
            return f"the system viewer refused it ({exc.strerror or exc})"
        return None
    with tempfile.TemporaryFile() as noise:
        try:
            opener = subprocess.Popen([*command, str(path)], stdin=subprocess.DEVNULL, stdout=noise,
                                      stderr=noise)
        except OSError as exc:
            return f"{Path(command[0]).name} could not be run ({exc.strerror or exc})"
        try:
            code = opener.wait(timeout=OPENER_WAIT_S)
        except subprocess.TimeoutExpired:
            _RUNNING.append(opener)  # still running: it is showing the file (kept, so no
            return None              # "subprocess is still running" warning at exit)
    if code != 0:
        return f"{Path(command[0]).name} failed (exit status {code})"
    return None
