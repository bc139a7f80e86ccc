"""Issue 20, item 7: batch size and byte-identical results, as a documented guarantee.

The model's own forward pass differs with the batch size (oneDNN picks its blocking by batch:
resnet18's logits differ by up to ~2.5e-6 between a batch of 4 and four batches of 1), so
featviz does not promise batch-independent bytes. What it promises (docs/hardening-notes.md):
at the CPU's default batch size, 1, a photo's files depend on that photo and the options alone,
so a sharded export and a single one write the same bytes, and so do a merged atlas and one run
(tests/test_atlas.py::test_shards_merged_equal_one_run) and a stopped-and-resumed atlas
(tests/test_hardening3_signals.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from click.testing import CliRunner
from PIL import Image

from featviz.cli.main import main
from featviz.output.export import default_batch_size

COMMON = ["--model", "tinymodels:tiny_features", "--weights", "none", "--layer", "0,3", "--resize", "40",
          "--crop", "32", "--cam", "gradcam", "--workers", "1", "-q"]


def files(out: Path) -> dict[str, bytes]:
    """Every per-photo file under OUT (the run-wide manifest and page excluded)."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.parent != out}


def test_the_default_batch_size_on_the_cpu_is_one() -> None:
    assert default_batch_size(torch.device("cpu")) == 1 and default_batch_size("cpu") == 1


def test_a_sharded_export_writes_the_bytes_of_a_single_one_at_the_default_batch_size(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(7)
    for i, (w, h) in enumerate([(44, 40), (40, 52), (48, 48), (60, 41), (41, 45)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(inputs / f"p{i}.png")
    runner = CliRunner()
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    assert runner.invoke(main, ["export", str(inputs), "--out", str(single), *COMMON]).exit_code == 0
    for i in (1, 2, 3):  # every 3rd photo: each shard's photos meet other neighbours
        result = runner.invoke(main, ["export", str(inputs), "--out", str(sharded), *COMMON, "--shard", f"{i}/3"])
        assert result.exit_code == 0, result.output
    expected = files(single)
    assert len(expected) > 40 and files(sharded) == expected
