"""Issue 20, item 8: SIGTERM (Slurm's scancel, a time limit) stops export and atlas cleanly.

The first SIGTERM finishes the photo in flight, leaves no temporary file, keeps every manifest
line whole, writes the atlas state even when the checkpoint interval has not passed, and exits
143; a rerun (--skip-existing / --resume) continues and ends as an uninterrupted run. A real
process gets a real signal; a slow model (a sleep in its forward pass) makes sure the signal
arrives mid-run. Before the fix the process died at once with -15 and the atlas had no state.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from featviz.cli.main import main
from featviz.cli.signals import exit_code, stop_on_signals
from featviz.output.layout import TMP_MARK, is_complete

SLOW_MODEL = """
import os, time
import torch
from torch import nn

class Slow(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        marker = os.environ.get("FV_FORWARD_LOG")
        if marker:  # only the signalled subprocess is slow
            with open(marker, "a") as log:
                log.write("x\\n")
            time.sleep(0.15)
        return self.head(self.features(x).mean((2, 3)))

def slow():
    return Slow()
"""

ARGS = ["--model", "fv_slow_model:slow", "--weights", "none", "--resize", "20", "--crop", "16", "--layer", "0",
        "--batch-size", "1", "--workers", "1", "-q"]


@pytest.fixture
def slow_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    folder = tmp_path / "modules"
    folder.mkdir()
    (folder / "fv_slow_model.py").write_text(textwrap.dedent(SLOW_MODEL), encoding="utf-8")
    monkeypatch.syspath_prepend(str(folder))
    env = dict(os.environ)
    env["PYTHONPATH"] = str(folder) + os.pathsep + env.get("PYTHONPATH", "")
    env["FV_FORWARD_LOG"] = str(tmp_path / "forwards.log")
    return env


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(8)
    for i in range(14):
        Image.fromarray(rng.integers(0, 256, (18, 22, 3), dtype=np.uint8)).save(folder / f"p{i:02d}.png")
    return folder


def _terminate_after(argv: list[str], env: dict[str, str], forwards: Path, count: int, cwd: Path) -> tuple[int, str]:
    """Start ``argv``, send SIGTERM once the model ran ``count`` forward passes; (exit code, stderr)."""
    log = cwd / "stderr.txt"
    with open(log, "wb") as stderr:
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=stderr, cwd=cwd, env=env)
        try:
            deadline = time.monotonic() + 120
            while not forwards.is_file() or len(forwards.read_text().splitlines()) < count:
                assert process.poll() is None, f"ended early:\n{log.read_text()}"
                assert time.monotonic() < deadline, "no forward pass in 120 s"
                time.sleep(0.01)
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    return code, log.read_text()


def test_stop_on_signals_turns_sigterm_into_a_flag_and_restores_the_handler() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with stop_on_signals() as stop:
        assert not stop()
        os.kill(os.getpid(), signal.SIGTERM)  # would end the test process without the handler
        time.sleep(0.01)
        assert stop() and stop.name == "SIGTERM" and exit_code(stop) == 143
        os.kill(os.getpid(), signal.SIGTERM)  # a second SIGTERM changes nothing
        assert stop.signal == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before


def test_sigterm_during_export_finishes_cleanly_and_skip_existing_continues(
        photos: Path, tmp_path: Path, slow_env: dict[str, str]) -> None:
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "featviz", "export", str(photos), "--out", str(out), *ARGS]
    code, stderr = _terminate_after(argv, slow_env, Path(slow_env["FV_FORWARD_LOG"]), 3, tmp_path)
    assert code == 143, stderr
    assert "stopped by SIGTERM" in stderr and "--skip-existing" in stderr and "Traceback" not in stderr
    assert not [p for p in out.rglob("*") if TMP_MARK in p.name]
    lines = (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]  # every line whole
    done = {r["key"] for r in records if r["status"] == "ok"}
    assert 1 <= len(done) < 14, done
    for key in done:  # each photo with a line is complete on disk
        assert is_complete(out / key / "features.0")
    assert (out / "index.html").is_file()
    result = CliRunner().invoke(main, ["export", str(photos), "--out", str(out), *ARGS, "--skip-existing"],
                                catch_exceptions=False, env={"FV_FORWARD_LOG": ""})
    assert result.exit_code == 0, result.output
    assert all(is_complete(out / f"p{i:02d}" / "features.0") for i in range(14))


def test_sigterm_during_atlas_writes_the_state_and_resume_continues(
        photos: Path, tmp_path: Path, slow_env: dict[str, str]) -> None:
    reference = tmp_path / "reference"
    runner = CliRunner()
    result = runner.invoke(main, ["atlas", str(photos), "--out", str(reference), *ARGS, "--top", "3"],
                           catch_exceptions=False, env={"FV_FORWARD_LOG": ""})
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    # a checkpoint interval the run never reaches: only the SIGTERM handling writes a state
    argv = [sys.executable, "-m", "featviz", "atlas", str(photos), "--out", str(out), *ARGS, "--top", "3",
            "--checkpoint-every", "100000"]
    forwards = Path(slow_env["FV_FORWARD_LOG"])
    forwards.unlink(missing_ok=True)
    # a few passes come before the first photo (the start-up checks on a blank input, the call count, the
    # layers' shapes): after 6, at least two photos have been folded
    code, stderr = _terminate_after(argv, slow_env, forwards, 6, tmp_path)
    assert code == 143, stderr
    assert "stopped by SIGTERM" in stderr and "--resume" in stderr
    state = json.loads((out / "atlas-state.json").read_text(encoding="utf-8"))
    assert 2 <= state["done"] < 14 and state["complete"] is False
    assert not [p for p in out.rglob("*") if TMP_MARK in p.name]
    result = runner.invoke(main, ["atlas", str(photos), "--out", str(out), *ARGS, "--top", "3", "--resume"],
                           catch_exceptions=False, env={"FV_FORWARD_LOG": ""})
    assert result.exit_code == 0, result.output
    assert (out / "features.0" / "atlas.json").read_bytes() == (reference / "features.0" / "atlas.json").read_bytes()
