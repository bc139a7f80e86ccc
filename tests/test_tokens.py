"""Token layouts are read from the model: prefix tokens and the patch grid at the size used."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision

from featviz.capture.tokens import TokenLayout, token_layout
from featviz.errors import UsageError


@pytest.mark.parametrize(("name", "kwargs", "size", "prefix", "grid", "patch"), [
    ("deit_tiny_distilled_patch16_224", {}, (224, 224), 2, (14, 14), (16, 16)),
    ("vit_small_patch14_reg4_dinov2", {"img_size": 224}, (224, 224), 5, (16, 16), (14, 14)),
    ("vit_tiny_patch16_224", {"dynamic_img_size": True}, (160, 224), 1, (10, 14), (16, 16)),
])
def test_timm_layouts(name: str, kwargs: dict[str, object], size: tuple[int, int], prefix: int,
                      grid: tuple[int, int], patch: tuple[int, int]) -> None:
    model = timm.create_model(name, pretrained=False, **kwargs)
    assert token_layout(model, size) == TokenLayout(prefix=prefix, grid=grid, patch=patch)


def test_torchvision_vit_and_a_cnn() -> None:
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2,
                                               hidden_dim=16, mlp_dim=32)
    assert token_layout(vit, (32, 32)) == TokenLayout(prefix=1, grid=(4, 4), patch=(8, 8))
    with pytest.raises(UsageError, match="built for"):
        token_layout(vit, (64, 64))
    assert token_layout(torchvision.models.alexnet(), (224, 224)) is None


def test_a_fixed_size_timm_model_at_another_size_is_refused() -> None:
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    with pytest.raises(UsageError, match="img_size"):
        token_layout(model, (160, 160))


def test_to_grid_drops_the_prefix_and_keeps_row_major_order() -> None:
    layout = TokenLayout(prefix=2, grid=(2, 3), patch=(4, 4))
    tokens = torch.arange(1 * 8 * 2, dtype=torch.float32).reshape(1, 8, 2)
    grid = layout.to_grid(tokens)
    assert grid.shape == (1, 2, 2, 3)
    # patch (i, j) is token prefix + i*cols + j; channel d is the token's d-th feature
    assert grid[0, 1, 1, 2].item() == tokens[0, 2 + 1 * 3 + 2, 1].item()
    with pytest.raises(Exception, match="expected 8 tokens"):
        layout.to_grid(tokens[:, 1:])
