"""Transformation robustness as Lucid's ``standard_transforms``: pad 12 (grey 0.5), jitter 8,
random scale in {0.9, 0.92, ..., 1.1}, random rotation in {-10..10} degrees (0 five times more
often), jitter 4. Every draw comes from one seeded :class:`torch.Generator` on the CPU, so the same
seed gives the same pixels; the whole batch shares each step's draw, as in Lucent.

:func:`jitter_only` is the lighter set for small images (``--transforms jitter``): Lucid's sizes
are in pixels and were chosen for images of about 224 px; at 32 px the pad of 12 is more than a
third of the side and the bilinear scale and rotation blur the few pixels a unit sees, so the
image that is best on average over the transforms is often not best on the untransformed image
(docs/optimize.md, "Own image, best image").
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional

SCALES = [1 + (i - 5) / 50.0 for i in range(11)]
ANGLES = list(range(-10, 11)) + 5 * [0]


def _pick(options: list[float] | list[int], generator: torch.Generator) -> float:
    return float(options[int(torch.randint(len(options), (1,), generator=generator))])


def jitter(images: torch.Tensor, d: int, generator: torch.Generator) -> torch.Tensor:
    """Crop (H-d, W-d) at a random offset in [0, d): Lucid's ``jitter(d)``."""
    dy, dx = (int(v) for v in torch.randint(d, (2,), generator=generator))
    height, width = images.shape[2:]
    return images[:, :, dy:dy + height - d, dx:dx + width - d]


def scale(images: torch.Tensor, factor: float) -> torch.Tensor:
    """Bilinear resize by ``factor`` (Lucid's ``random_scale`` step)."""
    height, width = images.shape[2:]
    size = (max(1, round(height * factor)), max(1, round(width * factor)))
    return functional.interpolate(images, size=size, mode="bilinear", align_corners=False)


def rotate(images: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate about the centre (bilinear, zero outside), as kornia's rotate in Lucent."""
    if degrees == 0:
        return images
    angle = math.radians(degrees)
    matrix = torch.tensor([[math.cos(angle), -math.sin(angle), 0.0], [math.sin(angle), math.cos(angle), 0.0]],
                          dtype=images.dtype, device=images.device)
    grid = functional.affine_grid(matrix.expand(images.shape[0], 2, 3), list(images.shape), align_corners=False)
    return functional.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def standard(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Lucid's standard transforms of RGB float (N, 3, H, W) in [0, 1]; a smaller or larger
    image of the same batch size comes back (about H - 12 + 24 ... pixels)."""
    # pad 12 then jitter 8 (a crop at (dy, dx)) in one step: pad 12 - dx left, 4 + dx right, ...
    # the same pixels, without the copy of the whole padded image (about 10 % of the transforms)
    dy, dx = (int(v) for v in torch.randint(8, (2,), generator=generator))
    x = functional.pad(images, [12 - dx, 4 + dx, 12 - dy, 4 + dy], mode="constant", value=0.5)
    x = scale(x, _pick(SCALES, generator))
    x = rotate(x, _pick(ANGLES, generator))
    return jitter(x, 4, generator)


def jitter_only(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Only Lucid's last step, ``jitter(4)``: float (N, 3, H, W) -> (N, 3, H - 4, W - 4), no
    padding, no resampling (every pixel kept as it is)."""
    return jitter(images, 4, generator)
