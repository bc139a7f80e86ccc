"""``--heads``: DINO's per-head attention pictures, crop-exact on the original photo.

Pure producers (pictures and a summary record); :mod:`featviz.output.result` lists them as
files and the one writer writes them. Each head's map is the class token's attention to the
patches at the chosen block (:func:`featviz.maps.transformer.head_maps`): float32 (heads,
rows, cols) in [0, 1], raw probabilities. For the picture each map is min-max scaled on its
own (the raw values go to ``attention_heads.npy``) and stretched over exactly the part of the
photo its patches saw: the crop box, shortened where the patch grid does not cover the whole
network input (an input of 230 px with 16-px patches: 14 patches cover 224 px).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from PIL import Image

from featviz.capture.tokens import TokenLayout
from featviz.maps.attention import normalized_map
from featviz.maps.transformer import dino_masks
from featviz.models.preprocess import CropBox
from featviz.output.render import heat_overlay


def patch_box(box: CropBox, input_size: tuple[int, int], layout: TokenLayout) -> CropBox:
    """The part of the photo that the patch grid covers: ``box`` (the network input's place in
    the photo) cut to the grid's rows·patch × cols·patch input pixels from the top left."""
    height, width = input_size
    cover_h = min(1.0, layout.grid[0] * layout.patch[0] / height)
    cover_w = min(1.0, layout.grid[1] * layout.patch[1] / width)
    return replace(box, right=box.left + (box.right - box.left) * cover_w,
                   bottom=box.top + (box.bottom - box.top) * cover_h)


def head_names(count: int) -> list[str]:
    """``head-00`` … for each head, then ``mean`` (the heads' mean)."""
    return [f"head-{h:02d}" for h in range(count)] + ["mean"]


def mean_picture(photo: Image.Image, heads: torch.Tensor, box: CropBox, input_size: tuple[int, int],
                 layout: TokenLayout, *, upsample: str = "nearest", cmap: str = "jet",
                 alpha: float = 0.5) -> Image.Image:
    """``heads/mean.png`` alone (a sweep's panel): the heads' mean, scaled, over the photo."""
    shown = normalized_map(heads.float().mean(dim=0, keepdim=True))[0]
    return heat_overlay(photo, shown, patch_box(box, input_size, layout), cmap=cmap, alpha=alpha, mode=upsample)


def heads_pictures(photo: Image.Image, heads: torch.Tensor, box: CropBox, input_size: tuple[int, int],
                   layout: TokenLayout, *, threshold: float | None = None, upsample: str = "nearest",
                   cmap: str = "jet", alpha: float = 0.5) -> list[tuple[str, Image.Image]]:
    """(file name, picture) per head and for the mean: ``heads/head-00.png`` … ``heads/mean.png``;
    with ``threshold`` P also ``heads/head-00-mask.png`` …: DINO's mask (the smallest set of
    patches holding P of the map's mass) drawn hot over the photo, the rest cold.
    heads: float32 (heads, rows, cols) in [0, 1]."""
    maps = torch.cat([heads.float(), heads.float().mean(dim=0, keepdim=True)])
    where = patch_box(box, input_size, layout)
    shown = normalized_map(maps)
    pictures = [(f"heads/{name}.png", heat_overlay(photo, shown[i], where, cmap=cmap, alpha=alpha, mode=upsample))
                for i, name in enumerate(head_names(heads.shape[0]))]
    if threshold is not None:
        masks = dino_masks(maps, threshold).float()
        pictures += [(f"heads/{name}-mask.png", heat_overlay(photo, masks[i], where, cmap=cmap, alpha=alpha,
                                                             mode="nearest"))
                     for i, name in enumerate(head_names(heads.shape[0]))]
    return pictures


def heads_record(heads: torch.Tensor, block: str, threshold: float | None, upsample: str) -> dict[str, Any]:
    """The ``heads`` entry of summary.json: the block, the count, each head's mass on the patches
    (1 minus what the class token sends to prefix tokens), and with a threshold the patches in
    each mask. heads: float32 (heads, rows, cols)."""
    maps = torch.cat([heads.float(), heads.float().mean(dim=0, keepdim=True)])
    record: dict[str, Any] = {"block": block, "count": int(heads.shape[0]), "grid": list(heads.shape[1:]),
                              "upsample": upsample, "names": head_names(heads.shape[0]),
                              "patch_mass": [round(float(m), 6) for m in maps.flatten(1).sum(dim=1)]}
    if threshold is not None:
        record["threshold"] = threshold
        record["mask_patches"] = [int(m) for m in dino_masks(maps, threshold).flatten(1).sum(dim=1)]
    return record
