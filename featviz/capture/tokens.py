"""Where a vision transformer keeps its patches: prefix tokens first, then a row-major patch grid.

Every token map featviz draws (token layers as channels, attention heads, rollout, relevance)
needs two facts that differ between model families and input sizes: how many tokens come before
the patches (a class token, DeiT's distillation token, DINOv2's registers) and the patch grid at
the input size actually used. Both are read from the model, never assumed (no hard-coded 14×14,
no ``[:, 1:]``): a model whose layout cannot be read gets ``None`` here, and the callers refuse
to draw its tokens rather than guess.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer as TorchvisionViT

from featviz.errors import FeatvizError, UsageError


@dataclass(frozen=True)
class TokenLayout:
    """The token sequence of one input size: ``prefix`` tokens, then ``grid`` patches row by row.

    ``patch`` is a patch's size in input pixels (rows, columns), so a patch at grid cell (i, j)
    covers input rows ``i*patch[0] .. (i+1)*patch[0]`` (what attention distances are measured in).
    """

    prefix: int
    grid: tuple[int, int]
    patch: tuple[int, int]

    @property
    def tokens(self) -> int:
        """How many tokens a sequence of this layout holds: prefix + rows · columns."""
        return self.prefix + self.grid[0] * self.grid[1]

    def to_grid(self, tokens: torch.Tensor) -> torch.Tensor:
        """Patch tokens as a feature map.

        tokens: (N, T, D) with T == self.tokens, any float dtype.
        Returns (N, D, rows, cols), the prefix tokens dropped, same dtype (a copy-free view where
        torch allows).
        """
        if tokens.ndim != 3 or tokens.shape[1] != self.tokens:
            raise FeatvizError(
                f"expected {self.tokens} tokens ({self.prefix} prefix + {self.grid[0]}×{self.grid[1]} "
                f"patches), got a tensor of shape {tuple(tokens.shape)}",
                hint="the layer is not in the model's token trunk; pick a transformer block",
            )
        patches = tokens[:, self.prefix:, :]
        return patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *self.grid)


def _pair(value: int | tuple[int, ...] | list[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    rows, cols = value
    return int(rows), int(cols)


def _timm_layout(model: nn.Module, input_size: tuple[int, int]) -> TokenLayout | None:
    """timm's VisionTransformer family (ViT, DeiT, DINO(v2), EVA-style): read, not assumed."""
    embed = getattr(model, "patch_embed", None)
    prefix = getattr(model, "num_prefix_tokens", None)
    if embed is None or not isinstance(prefix, int) or not hasattr(embed, "patch_size"):
        return None
    patch = _pair(embed.patch_size)
    if getattr(embed, "dynamic_img_size", False) or getattr(model, "dynamic_img_size", False):
        rows, cols = input_size
        if hasattr(embed, "dynamic_feat_size"):
            grid = _pair(embed.dynamic_feat_size(input_size))
        else:
            grid = (rows // patch[0], cols // patch[1])
        return TokenLayout(prefix=prefix, grid=grid, patch=patch)
    built = _pair(embed.img_size) if getattr(embed, "img_size", None) is not None else None
    if built is not None and tuple(input_size) != built:
        raise UsageError(
            f"this timm model was built for {built[0]}×{built[1]} inputs, not {input_size[0]}×{input_size[1]}",
            hint=f"build it for this size with --model-kwargs '{{\"img_size\": {input_size[0]}}}' "
                 "(or '{\"dynamic_img_size\": true}'), or use --resize/--crop to match",
        )
    return TokenLayout(prefix=prefix, grid=_pair(embed.grid_size), patch=patch)


def _torchvision_layout(model: TorchvisionViT, input_size: tuple[int, int]) -> TokenLayout:
    """torchvision's VisionTransformer: one class token, a square grid fixed at construction."""
    size, patch = int(model.image_size), int(model.patch_size)
    if tuple(input_size) != (size, size):
        raise UsageError(
            f"torchvision's ViT runs only at the size it was built for ({size}×{size}), "
            f"not {input_size[0]}×{input_size[1]}",
            hint=f"resize and crop to {size} (the weights' own preprocessing does)",
        )
    return TokenLayout(prefix=1, grid=(size // patch, size // patch), patch=(patch, patch))


def token_layout(model: nn.Module, input_size: tuple[int, int]) -> TokenLayout | None:
    """The token layout of ``model`` for input images of ``input_size`` (rows, cols) pixels.

    None for a model that is no known vision transformer (CNNs, and transformers whose layout
    featviz cannot read: the callers then refuse token maps with a hint instead of guessing).
    """
    if isinstance(model, TorchvisionViT):
        return _torchvision_layout(model, input_size)
    return _timm_layout(model, input_size)
