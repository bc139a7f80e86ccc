"""The pictures and numbers of docs/vit-statistics.md, from the trained example (examples/vit_shapes).

Run from the repository root with featviz installed: python docs/make_vit_pictures.py
Writes docs/vit-shapes-maps.png and docs/vit-shapes-statistics.png and prints the numbers the
page quotes. Attention is captured here with timm's fused_attn off and a hook on attn_drop (the
capture of branch ``vitattn`` will replace this helper).
"""

from __future__ import annotations

import importlib.util
import json
import time

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from featviz.capture.tokens import token_layout
from featviz.maps.artifacts import artifact_tokens
from featviz.maps.faithfulness import FaithfulnessScore, deletion_insertion
from featviz.maps.tokenpca import fit_basis
from featviz.maps.tokenstats import StatisticsAverage, attention_statistics
from featviz.models.build import load_model
from featviz.output.tokencharts import artifact_picture, pca_picture, statistics_chart

SCALE = 4  # photos are 64x64: shown 4x larger

spec = importlib.util.spec_from_file_location("vit_shapes", "examples/vit_shapes.py")
shapes = importlib.util.module_from_spec(spec)
spec.loader.exec_module(shapes)


def capture(model, x):
    attention, outputs, handles = [], [], []
    try:
        for block in model.blocks:
            block.attn.fused_attn = False
            handles.append(block.attn.attn_drop.register_forward_hook(lambda m, i, o: attention.append(o.detach())))
            handles.append(block.register_forward_hook(lambda m, i, o: outputs.append(o.detach())))
        with torch.no_grad():
            logits = model(x)
    finally:
        for handle in handles:
            handle.remove()
        for block in model.blocks:
            block.attn.fused_attn = True
    return logits, attention, outputs


def rollout(attention):
    eye = torch.eye(attention[0].shape[-1], dtype=torch.float64)
    joint = eye.expand(attention[0].shape[0], -1, -1)
    for block in attention:
        mixed = 0.5 * block.double().mean(1) + 0.5 * eye
        joint = (mixed / mixed.sum(-1, keepdim=True)) @ joint
    return joint[:, 0, 1:]


def hits(maps, boxes, layout):
    count = 0
    for flat, (left, top, right, bottom) in zip(maps, boxes, strict=True):
        row, col = divmod(int(flat.argmax()), layout.grid[1])
        y, x = (row + 0.5) * layout.patch[0], (col + 0.5) * layout.patch[1]
        count += left <= x <= right and top <= y <= bottom
    return count


def overlay(photo: Image.Image, patches: torch.Tensor) -> Image.Image:
    grid = patches.reshape(8, 8).float()
    grid = (grid - grid.min()) / (grid.max() - grid.min()).clamp_min(1e-12)
    colours = matplotlib.colormaps["inferno"](grid.numpy())[..., :3]
    heat = Image.fromarray((colours * 255).astype(np.uint8)).resize(photo.size, Image.Resampling.NEAREST)
    return Image.blend(photo, heat, 0.55)


def main() -> None:
    model = load_model("examples/vit_shapes.py:build", "examples/vit_shapes.safetensors").module
    layout = token_layout(model, (64, 64))
    rng = np.random.default_rng(123)  # held-out photos, as in tests/test_vit_example.py
    photos = [shapes.photo(rng) for _ in range(200)]
    x = torch.stack([shapes.to_tensor(p) for p, _, _ in photos])
    labels = torch.tensor([label for _, label, _ in photos])
    boxes = [box for _, _, box in photos]
    logits, attention, outputs = capture(model, x)
    head_mean = attention[-1].mean(1)[:, 0, 1:]
    rolled = rollout(attention)
    numbers = {"photos": len(photos), "accuracy": float((logits.argmax(1) == labels).float().mean()),
               "head_mean_hits": hits(head_mean, boxes, layout), "rollout_hits": hits(rolled, boxes, layout)}

    count = 60
    def at_input(p):
        return F.interpolate(p.reshape(-1, 1, 8, 8).float(), size=(64, 64), mode="nearest")[:, 0]
    maps = {"head mean": at_input(head_mean[:count]), "rollout": at_input(rolled[:count]),
            "random": torch.rand(count, 64, 64, generator=torch.Generator().manual_seed(0))}
    scores = deletion_insertion(model, x[:count].repeat(3, 1, 1, 1), torch.cat(list(maps.values())),
                                labels[:count].repeat(3), steps=16)
    deletion = [s.deletion_auc for s in scores if isinstance(s, FaithfulnessScore)]
    numbers["deletion_auc"] = {name: round(float(np.mean(deletion[i * count:(i + 1) * count])), 4)
                               for i, name in enumerate(maps)}

    stats = attention_statistics(attention, layout)
    average = StatisticsAverage(layout)
    average.add(stats)
    numbers["statistics"] = average.as_json()
    statistics_chart(average.means(), title=f"vit_shapes: mean over {len(photos)} held-out photos").save(
        "docs/vit-shapes-statistics.png", optimize=True)

    patches = outputs[-1][:, 1:, :]  # the last block's patch tokens, (N, 64, 64)
    basis = fit_basis([patches])  # one basis over all 200 photos: colours compare across photos
    artifacts = artifact_tokens(outputs[-1], layout)
    numbers["artifacts_per_photo_last_block"] = float(artifacts.flags.flatten(1).sum(1).float().mean())
    total = patches.reshape(-1, 64).var(0, unbiased=False).sum()
    numbers["pca_variance_share"] = [round(float(v), 4) for v in basis.variance / total]

    rows = []
    for i in range(3):
        photo = Image.fromarray(photos[i][0]).resize((64 * SCALE, 64 * SCALE), Image.Resampling.NEAREST)
        panels = [photo, overlay(photo, head_mean[i]), overlay(photo, rolled[i]),
                  pca_picture(basis.to_rgb(patches[i]).reshape(8, 8, 3), scale=8 * SCALE),
                  artifact_picture(photo, layout, artifacts.flags[i], width=3)]
        rows.append(panels)
    width, height, gap = 64 * SCALE, 64 * SCALE, 8
    sheet = Image.new("RGB", (5 * width + 4 * gap, 3 * height + 2 * gap), "white")
    for r, panels in enumerate(rows):
        for c, panel in enumerate(panels):
            sheet.paste(panel, (c * (width + gap), r * (height + gap)))
    sheet.save("docs/vit-shapes-maps.png", optimize=True)
    print(json.dumps(numbers, indent=1))


if __name__ == "__main__":
    started = time.time()
    main()
    print(f"{time.time() - started:.1f} s")
