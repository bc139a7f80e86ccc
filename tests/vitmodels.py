"""Tiny vision transformers and slow, hook-free references of their attention for the tests.

The references run the blocks one by one and compute each block's softmax(q·kᵀ·scale) from the
module's own weights, in plain loops: nothing of featviz.capture is used, so a capture that
records the wrong tensor, the wrong block order or a stale flag disagrees with them.
:func:`module_calls` is the other reference: a plain forward hook's record of a module's outputs.
"""

from __future__ import annotations

import timm
import torch
import torchvision
from torch import nn


def noise_photos(n: int = 2, size: tuple[int, int] = (32, 32), seed: int = 1) -> torch.Tensor:
    """n seeded noise photos, float32 (n, 3, *size): inputs for the tiny ViTs below."""
    return torch.randn(n, 3, *size, generator=torch.Generator().manual_seed(seed))


def tiny_timm_vit(img_size: int | tuple[int, int] = 32, num_classes: int = 5, seed: int = 0,
                  **kwargs: object) -> nn.Module:
    """timm VisionTransformer: 8-px patches, 2 blocks of 2 heads, width 32, fused attention on (timm's default)."""
    torch.manual_seed(seed)
    model = timm.models.vision_transformer.VisionTransformer(
        img_size=img_size, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=num_classes, **kwargs)
    return model.eval()


def tiny_torchvision_vit(num_classes: int = 5, seed: int = 0) -> nn.Module:
    """torchvision VisionTransformer at 32 px, 8-px patches, 2 layers of 2 heads; its zero-initialised
    head is given random weights so that gradients are not all zero."""
    torch.manual_seed(seed)
    model = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                                 hidden_dim=16, mlp_dim=32, num_classes=num_classes)
    nn.init.normal_(model.heads.head.weight, std=0.5)
    return model.eval()


def timm_reference(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(logits, [A_b (N, heads, T, T)]) of a timm VisionTransformer, each block computed by hand
    with A on the autograd path (so d logit / d A_b is the true gradient)."""
    t = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
    attentions = []
    for block in model.blocks:
        a = block.attn
        h = block.norm1(t)
        n, tokens, width = h.shape
        qkv = a.qkv(h).reshape(n, tokens, 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = a.q_norm(qkv[0]), a.k_norm(qkv[1]), qkv[2]
        attention = ((q * a.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        attentions.append(attention)
        mixed = a.proj(a.norm((attention @ v).transpose(1, 2).reshape(n, tokens, width)))
        t = t + block.ls1(mixed)
        t = t + block.ls2(block.mlp(block.norm2(t)))
    return model.forward_head(model.norm(t)), attentions


def torchvision_reference(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The same for torchvision's VisionTransformer, from each MultiheadAttention's in_proj/out_proj."""
    t = model._process_input(x)
    t = torch.cat([model.class_token.expand(t.shape[0], -1, -1), t], dim=1)
    t = t + model.encoder.pos_embedding
    attentions = []
    for layer in model.encoder.layers:
        mha = layer.self_attention
        h = layer.ln_1(t)
        n, tokens, width = h.shape
        heads = mha.num_heads
        q, k, v = nn.functional.linear(h, mha.in_proj_weight, mha.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (z.reshape(n, tokens, heads, width // heads).transpose(1, 2) for z in (q, k, v))
        attention = ((q / (width // heads) ** 0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
        attentions.append(attention)
        t = t + mha.out_proj((attention @ v).transpose(1, 2).reshape(n, tokens, width))
        t = t + layer.mlp(layer.ln_2(t))
    t = model.encoder.ln(t)
    return model.heads(t[:, 0]), attentions


def tiny_swin(num_classes: int = 5, seed: int = 0) -> nn.Module:
    """torchvision SwinTransformer (channels-last inside ``features`` and ``norm``), shrunk: 4-px
    patches, width 16, one block of one head per stage, 2×2 windows; for 64-px inputs."""
    torch.manual_seed(seed)
    model = torchvision.models.swin_transformer.SwinTransformer(
        patch_size=[4, 4], embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=[2, 2],
        num_classes=num_classes)
    return model.eval()



class SdpaAttention(nn.Module):
    """Self-attention as one F.scaled_dot_product_attention call: no probabilities exist for
    featviz to record."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.qkv = nn.Linear(width, 3 * width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return nn.functional.scaled_dot_product_attention(q, k, v)


class FunctionalViT(nn.Module):
    """A tiny ViT (a class token, 8-px patches at 32 px, 2 blocks) whose blocks' attention is
    :class:`SdpaAttention`: featviz finds attention modules it cannot capture."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 16, 8, stride=8)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 16))
        self.blocks = nn.ModuleList([SdpaAttention(16), SdpaAttention(16)])
        self.head = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1)
        for block in self.blocks:
            tokens = tokens + block(tokens)
        return self.head(tokens[:, 0])


def functional_vit(num_classes: int = 5, seed: int = 0) -> nn.Module:
    """A seeded :class:`FunctionalViT` (``--model vitmodels:functional_vit``)."""
    torch.manual_seed(seed)
    return FunctionalViT(num_classes).eval()


def module_calls(model: nn.Module, module: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The output of every call of ``module`` (a submodule of ``model``) on ``x`` in eval mode
    (featviz runs the model so: stochastic depth and dropout off), by a plain forward hook: the
    tests' reference, independent of featviz's capture. Every module's train/eval flag is put back."""
    kept: list[torch.Tensor] = []
    modes = [(m, m.training) for m in model.modules()]
    handle = module.register_forward_hook(lambda m, i, o: kept.append(o.detach().clone()))
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
        for m, mode in modes:
            m.train(mode)
    return kept


def module_output(model: nn.Module, path: str, x: torch.Tensor) -> torch.Tensor:
    """The output of module ``path``'s first call on ``x`` (:func:`module_calls`)."""
    return module_calls(model, model.get_submodule(path), x)[0]
