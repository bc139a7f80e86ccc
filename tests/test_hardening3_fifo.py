"""Issue 20, item 3: a FIFO given as an input (``featviz export pipe.png photo.png``, or through
stdin) made featviz wait forever for a writer. Now it is that input's error, and the rest is done.

The regressions would hang, so every check runs in a thread under a time limit and fails instead.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

import oddimages
from featviz.cli.main import main
from featviz.errors import ImageError
from featviz.inputs.images import load_image

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")

TINY = ["--model", "tinymodels:tiny_features", "--weights", "none", "--size", "8", "--quiet"]


def fifo_and_photo(folder: Path) -> tuple[Path, Path]:
    folder.mkdir()
    os.mkfifo(folder / "pipe.png")
    return folder / "pipe.png", oddimages.make_rgb_png(folder / "photo.png", size=(24, 20), seed=1)


def test_load_image_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    pipe, _ = fifo_and_photo(tmp_path / "in")
    outcome: list[BaseException | object] = []

    def attempt() -> None:
        try:
            outcome.append(load_image(pipe))
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome.append(exc)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "load_image blocked on the FIFO"
    assert isinstance(outcome[0], ImageError)
    assert "pipe.png: is a FIFO (named pipe), not a regular file" in str(outcome[0])


@pytest.mark.parametrize("command", ["export", "atlas"])
def test_a_fifo_on_stdin_is_one_failed_input(command: str, tmp_path: Path, tests_on_path: None) -> None:
    pipe, photo = fifo_and_photo(tmp_path / "in")
    out = tmp_path / "out"
    options = TINY if command == "export" else TINY[:4] + ["--quiet", "--top", "2"]
    runner = CliRunner()
    results: list[Result] = []
    worker = threading.Thread(target=lambda: results.append(runner.invoke(
        main, [command, "-", "--out", str(out), *options], input=f"{pipe}\n{photo}\n")), daemon=True)
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), f"featviz {command} hung on the FIFO"
    done = results[0]
    assert done.exit_code == 1, done.output
    assert "pipe.png: is a FIFO (named pipe), not a regular file" in done.stderr
    assert done.exception is None or isinstance(done.exception, SystemExit)
    if command == "export":
        records = map(json.loads, (out / "manifest.jsonl").read_text().splitlines())
        statuses = {Path(r["input"]).name: r["status"] for r in records}
        assert statuses == {"pipe.png": "error", "photo.png": "ok"}
    else:
        state = json.loads((out / "atlas-state.json").read_text())
        assert state["failed"] == 1 and state["done"] == 2
