"""Spatial transformer networks: record the sampling grids a model builds, to draw them.

An STN (Jaderberg et al. 2015) predicts an affine matrix theta per image and resamples its input
with ``F.grid_sample(x, F.affine_grid(theta, size))``: theta *is* its spatial attention, the
window of the input it looks at. There is no module to hook (``affine_grid`` is a function), so
featviz wraps ``torch.affine_grid_generator``, the operator that ``F.affine_grid`` calls however it
was imported, for the duration of one forward pass, and restores it afterwards.

Limits, also in the README: the wrapper is process-wide while it is installed (featviz runs the
forward pass on one thread); grids built by other means (a hand-made meshgrid, TorchScript) are not
seen; the grid is drawn over the network input's field of view, which is exact for an STN on the
input image and approximate (ignoring padding and receptive fields) for one on a feature map.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from PIL import ImageDraw

if TYPE_CHECKING:
    from PIL import Image

    from featviz.models.preprocess import CropBox


@dataclass
class AffineGridRecorder:
    """Context manager: every ``affine_grid`` call's theta (N, 2, 3) and output size, in order."""

    thetas: list[torch.Tensor] = field(default_factory=list)
    sizes: list[list[int]] = field(default_factory=list)
    align_corners: list[bool] = field(default_factory=list)
    _original: Any = None

    def __enter__(self) -> AffineGridRecorder:
        self._original = torch.affine_grid_generator
        original = self._original

        def recording(theta: torch.Tensor, size: Any, align_corners: bool) -> torch.Tensor:
            if theta.dim() == 3 and theta.shape[1:] == (2, 3):  # 2-D grids only
                self.thetas.append(theta.detach().clone())
                self.sizes.append(list(size))
                self.align_corners.append(bool(align_corners))
            grid: torch.Tensor = original(theta, size, align_corners)
            return grid

        torch.affine_grid_generator = recording
        return self

    def __exit__(self, *exc_info: object) -> None:
        torch.affine_grid_generator = self._original


def grid_points(theta: torch.Tensor, steps: int = 9) -> torch.Tensor:
    """Where an output lattice of ``steps`` x ``steps`` points samples the input, in normalised
    input coordinates [-1, 1] (x, y): theta (2, 3) -> (steps, steps, 2)."""
    line = torch.linspace(-1.0, 1.0, steps, dtype=torch.float64)
    ys, xs = torch.meshgrid(line, line, indexing="ij")
    target = torch.stack([xs, ys, torch.ones_like(xs)], dim=-1)  # (S, S, 3)
    return target @ theta.double().cpu().T  # (S, S, 2)


def draw_sampling_grid(photo: Image.Image, theta: torch.Tensor, box: CropBox, steps: int = 9,
                       colour: tuple[int, int, int] = (255, 40, 40)) -> Image.Image:
    """The photo with the STN's sampling lattice drawn where it falls.

    Normalised input coordinates map to the crop box (-1 = its left/top edge, +1 = its right/
    bottom edge; ``align_corners=False`` convention); the lattice's outer frame is the window the
    transformer looks through.
    """
    points = grid_points(theta, steps)
    width, height = box.right - box.left, box.bottom - box.top
    px = box.left + (points[..., 0] + 1) / 2 * width
    py = box.top + (points[..., 1] + 1) / 2 * height
    picture = photo.convert("RGB").copy()
    draw = ImageDraw.Draw(picture)
    line_width = max(1, round(min(photo.size) / 250))
    for i in range(steps):
        draw.line([(float(px[i, j]), float(py[i, j])) for j in range(steps)], fill=colour, width=line_width)
        draw.line([(float(px[j, i]), float(py[j, i])) for j in range(steps)], fill=colour, width=line_width)
    frame = [(0, 0), (0, steps - 1), (steps - 1, steps - 1), (steps - 1, 0), (0, 0)]
    draw.line([(float(px[i, j]), float(py[i, j])) for i, j in frame], fill=(255, 255, 0), width=line_width * 2)
    return picture
