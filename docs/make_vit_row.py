"""The README's vision-transformer row and the "which map explains a ViT best" table of
docs/vit-attention.md, from the trained example (examples/vit_shapes), all through featviz's API.

Run from the repository root with featviz installed: python docs/make_vit_row.py
Writes docs/vit-shapes-row.png (three held-out photos; per photo: the photo, the heads' mean,
rollout, relevance and token Grad-CAM, side by side) and prints the table: per map, how often it
peaks inside the disc's box, and its mean deletion and insertion AUC (``--cam-score``) over the
held-out photos, next to a random map's.

Everything runs through featviz: one :class:`featviz.output.pipeline.Visualizer` at
``blocks.3.norm1`` (the last block's first LayerNorm: where pytorch-grad-cam puts token Grad-CAM;
the heads, rollout and relevance are read at its block, ``blocks.3``) with ``--heads``,
``--cam rollout,relevance,gradcam`` and ``--cam-score``; the heads' mean and the random map are
scored by the same :func:`featviz.maps.camscore.score_cams` (for the predicted class, as rollout).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import time

import numpy as np
import torch
from PIL import Image

from featviz.maps.camscore import score_cams
from featviz.maps.explain import CamBatch, CamMap
from featviz.models.preprocess import CropBox
from featviz.output.options import RenderOptions
from featviz.output.pipeline import Visualizer

SCRIPT, WEIGHTS = "examples/vit_shapes.py", "examples/vit_shapes.safetensors"
LAYER = "blocks.3.norm1"
HELD_OUT = 60  # photos from seed 123 (training used seed 0), as tests/test_vit_trained.py
STEPS = 16  # --cam-score-steps (the CLI's default)
SCALE = 4  # photos are 64x64: drawn 4x larger
SHOWN = (0, 1, 2)  # the photos of the picture row


def _example():
    spec = importlib.util.spec_from_file_location("vit_shapes", SCRIPT)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {SCRIPT}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def peaks_in_box(cam_map: torch.Tensor, box: tuple[int, int, int, int], patch: int = 8) -> bool:
    """Whether the map's largest patch (first on ties) has its centre inside the disc's box."""
    row, col = divmod(int(cam_map.argmax()), cam_map.shape[1])
    y, x = (row + 0.5) * patch, (col + 0.5) * patch
    left, top, right, bottom = box
    return left <= x <= right and top <= y <= bottom


def main() -> None:
    torch.set_num_threads(1)  # on a shared, loaded machine one thread was ~10x faster than two
    shapes = _example()
    rng = np.random.default_rng(123)
    photos = [shapes.photo(rng) for _ in range(HELD_OUT)]
    vis = Visualizer(f"{SCRIPT}:build", WEIGHTS, [LAYER], resize=64, crop=64,
                     options=RenderOptions(heads=True, cam=["rollout", "relevance", "gradcam"], cam_score=True,
                                           cam_score_steps=STEPS))
    prepared = [vis.prepare(Image.fromarray(pixels), key=f"held-out-{i}") for i, (pixels, _, _) in enumerate(photos)]
    results = [per[0] for per in vis.forward(prepared)]
    stacked = torch.stack([p.tensor for p in prepared])
    # the heads' mean and a random map, scored by the same code as --cam-score, for the predicted class
    predicted = [next(c.target for c in r.cams if c.method == "relevance") for r in results]
    noise = torch.Generator().manual_seed(0)
    extra = CamBatch([[CamMap("heads mean", cls, None, r.heads.float().mean(0), None, None, None),
                       CamMap("random", cls, None, torch.rand(8, 8, generator=noise), None, None, None)]
                      for r, cls in zip(results, predicted, strict=True)])
    failed = score_cams(vis.loaded.module, stacked, extra, steps=STEPS, batch_size=None,
                        names=[p.key for p in prepared])
    if failed:
        raise RuntimeError(f"--cam-score failed: {failed}")
    rows: dict[str, list[tuple[bool, float, float]]] = {}
    for result, more, (_, _, box) in zip(results, extra.per_image, photos, strict=True):
        for cam in [*result.cams, *more]:
            if cam.scores is None:
                raise RuntimeError(f"{cam.name} was not scored")
            rows.setdefault(cam.method, []).append((peaks_in_box(cam.map, box), cam.scores.deletion_auc,
                                                    cam.scores.insertion_auc))
    accuracy = np.mean([p == label for p, (_, label, _) in zip(predicted, photos, strict=True)])
    print(f"{HELD_OUT} held-out photos, accuracy {accuracy:.3f}, {LAYER}, --cam-score-steps {STEPS}")
    print("| map | peaks in the disc's box | deletion AUC (lower is better) | insertion AUC (higher is better) |")
    print("| --- | ---: | ---: | ---: |")
    for method in ("heads mean", "rollout", "relevance", "gradcam", "random"):
        values = rows[method]
        hits = sum(v[0] for v in values)
        print(f"| {method} | {hits} / {len(values)} | {np.mean([v[1] for v in values]):.3f} | "
              f"{np.mean([v[2] for v in values]):.3f} |")

    side = 64 * SCALE
    big = CropBox(0.0, 0.0, float(side), float(side))
    gap = 8
    sheet = Image.new("RGB", (5 * side + 4 * gap, len(SHOWN) * side + (len(SHOWN) - 1) * gap), "white")
    for r, index in enumerate(SHOWN):
        photo = Image.fromarray(photos[index][0]).resize((side, side), Image.Resampling.NEAREST)
        shown = dataclasses.replace(results[index], photo=photo, box=big)
        cams = {cam.method: cam for cam in shown.cams}
        panels = [photo, shown.heads_overlay(), shown.cam_overlay(cams["rollout"]),
                  shown.cam_overlay(cams["relevance"]), shown.cam_overlay(cams["gradcam"])]
        for c, panel in enumerate(panels):
            sheet.paste(panel.convert("RGB"), (c * (side + gap), r * (side + gap)))
    sheet.save("docs/vit-shapes-row.png", optimize=True)
    print("wrote docs/vit-shapes-row.png")


if __name__ == "__main__":
    started = time.time()
    main()
    print(f"{time.time() - started:.1f} s")
