"""The trained tiny ViT (examples/vit_shapes) through featviz's own API: where the heads' mean,
rollout and relevance peak on held-out photos, and whether they beat a random map at deletion.

Unlike tests/test_vit_example.py (test-local capture and rollout), every map here comes from
:class:`featviz.output.pipeline.Visualizer` (``--heads``, ``--cam rollout,relevance``,
``--cam-score``), the code the CLI runs; the random map is scored by the same
:func:`featviz.maps.camscore.score_cams`. The numbers the assertions hold were measured with
docs/make_vit_row.py (table in docs/vit-attention.md): on the 60 held-out photos of seed 123
the heads' mean and rollout peak inside the disc's box in 60 of 60, relevance in 51 of 60.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from PIL import Image

from featviz.maps.camscore import score_cams
from featviz.maps.explain import CamBatch, CamMap
from featviz.output.options import RenderOptions
from featviz.output.pipeline import Visualizer

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "examples" / "vit_shapes.py"
WEIGHTS = ROOT / "examples" / "vit_shapes.safetensors"
HELD_OUT = 60
SCORED = 20  # photos scored for deletion (8 steps): enough for a margin of ~0.45 AUC


def _shapes() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vit_shapes_trained_test", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One thread: on the shared 2-core machine a loaded two-thread run was ~10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def held_out() -> list[tuple[np.ndarray, int, tuple[int, int, int, int]]]:
    rng = np.random.default_rng(123)  # photos the network never saw (training uses seed 0)
    shapes = _shapes()
    return [shapes.photo(rng) for _ in range(HELD_OUT)]


def _visualizer(**options: object) -> Visualizer:
    return Visualizer(f"{SCRIPT}:build", str(WEIGHTS), ["blocks.3"], resize=64, crop=64,
                      options=RenderOptions(heads=True, cam=["rollout", "relevance"], **options))  # type: ignore[arg-type]


def _peaks_in_box(cam_map: torch.Tensor, box: tuple[int, int, int, int]) -> bool:
    """The map's largest 8-px patch has its centre inside the disc's box (left, top, right, bottom)."""
    row, col = divmod(int(cam_map.argmax()), cam_map.shape[1])
    y, x = (row + 0.5) * 8, (col + 0.5) * 8
    return box[0] <= x <= box[2] and box[1] <= y <= box[3]


@pytest.fixture(scope="module")
def hits(held_out) -> dict[str, int]:
    vis = _visualizer()
    results = [per[0] for per in vis.forward([vis.prepare(Image.fromarray(p)) for p, _, _ in held_out])]
    counts = {"heads mean": 0, "rollout": 0, "relevance": 0}
    for result, (_, label, box) in zip(results, held_out, strict=True):
        assert result.heads is not None and result.heads.shape == (4, 8, 8)
        maps = {cam.method: cam for cam in result.cams}
        assert set(maps) == {"rollout", "relevance"} and maps["relevance"].target == label  # 60 of 60 right
        counts["heads mean"] += _peaks_in_box(result.heads.mean(0), box)
        counts["rollout"] += _peaks_in_box(maps["rollout"].map, box)
        counts["relevance"] += _peaks_in_box(maps["relevance"].map, box)
    return counts


@pytest.mark.parametrize("method", ["heads mean", "rollout"])
def test_heads_mean_and_rollout_peak_inside_the_disc_in_90_percent(hits: dict[str, int], method: str) -> None:
    assert hits[method] >= 0.9 * HELD_OUT, f"{method} peaked inside the disc's box in {hits[method]} of {HELD_OUT}"


def test_relevance_peaks_inside_the_disc_in_most_photos(hits: dict[str, int]) -> None:
    """Measured 51 of 60 (85 %; 177 of 200 = 88.5 % on 200 photos): its misses peak on a clutter
    dot of the class's colour. The issue's 90 % is held by the strict xfail below."""
    assert hits["relevance"] >= 0.8 * HELD_OUT, f"relevance peaked inside the box in {hits['relevance']} of {HELD_OUT}"


@pytest.mark.xfail(strict=True, reason="measured 51 of 60 (85 %): relevance misses the issue's 90 % on this example")
def test_relevance_peaks_inside_the_disc_in_90_percent(hits: dict[str, int]) -> None:
    assert hits["relevance"] >= 0.9 * HELD_OUT


def test_learned_maps_beat_a_random_map_at_deletion_through_cam_score(held_out) -> None:
    """--cam-score (the Visualizer scores rollout and relevance itself) against a random map at
    the patch grid scored by the same function, for the same predicted class: mean deletion AUC,
    lower is better. Measured on 60 photos, 16 steps: heads mean 0.203, rollout 0.285,
    relevance 0.297, random 0.771."""
    vis = _visualizer(cam_score=True, cam_score_steps=8)
    prepared = [vis.prepare(Image.fromarray(p), key=f"p{i}") for i, (p, _, _) in enumerate(held_out[:SCORED])]
    results = [per[0] for per in vis.forward(prepared)]
    noise = torch.Generator().manual_seed(0)
    predicted = [next(c.target for c in r.cams if c.method == "relevance") for r in results]
    extra = CamBatch([[CamMap("heads mean", cls, None, r.heads.mean(0), None, None, None),
                       CamMap("random", cls, None, torch.rand(8, 8, generator=noise), None, None, None)]
                      for r, cls in zip(results, predicted, strict=True)])
    assert score_cams(vis.loaded.module, torch.stack([p.tensor for p in prepared]), extra, steps=8, batch_size=None,
                      names=[p.key for p in prepared]) == {}
    deletion: dict[str, list[float]] = {}
    for result, more in zip(results, extra.per_image, strict=True):
        for cam in [*result.cams, *more]:
            assert cam.scores is not None and cam.scores.steps == 8
            deletion.setdefault(cam.method, []).append(cam.scores.deletion_auc)
    means = {method: float(np.mean(values)) for method, values in deletion.items()}
    assert all(len(values) == SCORED for values in deletion.values())
    for method in ("heads mean", "rollout", "relevance"):
        assert means[method] < means["random"] - 0.2, means
