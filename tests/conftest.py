"""Shared fixtures: sample photos, a synthetic photo, tiny models. Nothing touches the network."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_images"


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Point torch's cache at an empty folder and make any download attempt fail loudly."""
    import socket

    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch-home")))

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network access is disabled in the tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture
def cat_photo() -> Path:
    return SAMPLES / "chelsea.jpg"


@pytest.fixture
def sample_photos() -> list[Path]:
    return sorted(SAMPLES.glob("*.jpg"))


@pytest.fixture
def patch_photo(tmp_path: Path) -> Path:
    """A 400x300 dark photo with a bright 40x40 square whose top-left corner is at (250, 120)."""
    pixels = np.full((300, 400, 3), 20, dtype=np.uint8)
    pixels[120:160, 250:290] = 235
    path = tmp_path / "patch.png"
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture
def tests_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``tinymodels`` importable in subprocesses too."""
    here = str(Path(__file__).resolve().parent)
    monkeypatch.setenv("PYTHONPATH", here + os.pathsep + os.environ.get("PYTHONPATH", ""))


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest):
    """Write Python source as an importable module of the test's own; returns its module name.

    For a hand-built model loaded the way a user's is: ``--model <name>:<factory>``. The name is
    unique to the test, the folder is on ``sys.path`` for this test only, and the module is
    forgotten afterwards.
    """
    import importlib
    import re
    import sys
    import textwrap

    folder = tmp_path / "user_modules"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    written: list[str] = []

    def write(source: str) -> str:
        name = "fv_user_" + re.sub(r"\W", "_", request.node.name) + f"_{len(written)}"
        (folder / f"{name}.py").write_text(textwrap.dedent(source), encoding="utf-8")
        written.append(name)
        importlib.invalidate_caches()
        return name

    yield write
    for name in written:
        sys.modules.pop(name, None)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """torch on one thread for the test module (its module-scoped fixtures too), the count restored
    after: the tiny models of the optimisation and trained-example tests only lose time to threads
    on a busy machine (measured 10-20x slower with two threads on the shared 2-core machine). Use
    with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
