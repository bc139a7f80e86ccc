"""Self-attention capture: the right tensors, from fused models too, and the model left as found."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from torch import nn

from featviz.capture.selfattention import (
    SelfAttentionCapture,
    attention_blocks,
    blocks_upto,
    self_attention,
)
from featviz.capture.tokens import token_layout
from featviz.errors import UsageError
from vitmodels import (
    noise_photos,
    timm_reference,
    tiny_timm_vit,
    tiny_torchvision_vit,
    torchvision_reference,
)


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("build, reference", [(tiny_timm_vit, timm_reference),
                                              (tiny_torchvision_vit, torchvision_reference)])
def test_attention_equals_a_hand_computed_softmax_and_logits_are_unchanged(build, reference) -> None:
    model = build()
    x = noise_photos()
    with torch.no_grad():
        plain = model(x)
        expected_logits, expected = reference(model, x)
    captured = self_attention(model, x)
    assert len(captured.attentions) == 2 and captured.names == [b.name for b in attention_blocks(model)]
    for got, want in zip(captured.attentions, expected, strict=True):
        assert got.dtype == torch.float32 and got.shape == (2, 2, 17, 17)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(got.sum(dim=-1), torch.ones(2, 2, 17))
    torch.testing.assert_close(captured.logits, plain, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(expected_logits, plain, atol=1e-5, rtol=1e-4)
    assert _no_hooks(model)


def test_fused_attention_is_turned_off_for_the_pass_only() -> None:
    model = tiny_timm_vit()
    assert all(b.module.fused_attn for b in attention_blocks(model))  # timm's default here
    seen: list[bool] = []
    with SelfAttentionCapture(model) as capture:
        seen = [b.module.fused_attn for b in capture.blocks]
        capture.run(noise_photos())
    assert seen == [False, False]
    assert all(b.module.fused_attn for b in attention_blocks(model))
    fused_off = tiny_timm_vit()
    for block in attention_blocks(fused_off):
        block.module.fused_attn = False
    torch.testing.assert_close(self_attention(fused_off, noise_photos()).attentions[1],
                               self_attention(model, noise_photos()).attentions[1])
    assert not any(b.module.fused_attn for b in attention_blocks(fused_off))


def test_model_is_left_as_found_also_when_the_pass_raises() -> None:
    model = tiny_timm_vit().train()
    model.head.weight.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    with pytest.raises(Exception), SelfAttentionCapture(model) as capture:  # noqa: B017 - timm asserts the size
        capture.run(noise_photos(size=(40, 40)))
    assert _no_hooks(model)
    assert all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(b.module.fused_attn for b in attention_blocks(model))
    vit = tiny_torchvision_vit()
    with pytest.raises(Exception), SelfAttentionCapture(vit) as capture:  # noqa: B017 - torchvision asserts the size
        capture.run(noise_photos(size=(40, 40)))
    assert _no_hooks(vit) and not vit.training


@pytest.mark.parametrize("build, reference", [(tiny_timm_vit, timm_reference),
                                              (tiny_torchvision_vit, torchvision_reference)])
def test_gradients_are_those_of_each_blocks_own_attention(build, reference) -> None:
    model = build()
    x = noise_photos()
    classes = torch.tensor([3, 1])
    logits, attentions = reference(model, x)
    expected = torch.autograd.grad(logits.gather(1, classes[:, None]).sum(), attentions)
    with SelfAttentionCapture(model, keep_graph=True) as capture:
        got_logits = capture.run(x)
        grads = capture.gradients(got_logits.gather(1, classes[:, None]).sum())
    for got, want in zip(grads, expected, strict=True):
        assert got.shape == (2, 2, 17, 17) and float(want.abs().sum()) > 0
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert all(p.requires_grad for p in model.parameters()) and all(p.grad is None for p in model.parameters())
    assert _no_hooks(model)


@pytest.mark.parametrize("name, kwargs, prefix, tokens", [
    ("deit_tiny_distilled_patch16_224", {"depth": 2}, 2, 2 + 14 * 14),
    ("vit_small_patch14_reg4_dinov2", {"depth": 2, "img_size": 224}, 5, 5 + 16 * 16),
])
def test_timm_families_keep_their_prefix_tokens(name: str, kwargs: dict[str, object], prefix: int, tokens: int) -> None:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    x = noise_photos(1, (224, 224))
    with torch.no_grad():
        plain = model(x)
    captured = self_attention(model, x)
    layout = token_layout(model, (224, 224))
    assert layout is not None and layout.prefix == prefix and layout.tokens == tokens
    assert [tuple(a.shape) for a in captured.attentions] == [(1, model.blocks[0].attn.num_heads, tokens, tokens)] * 2
    torch.testing.assert_close(captured.logits, plain, atol=1e-4, rtol=1e-4)


def test_vit_b_16_configuration_and_a_non_square_timm_input() -> None:
    torch.manual_seed(0)
    vit_b = torchvision.models.VisionTransformer(image_size=224, patch_size=16, num_layers=1, num_heads=12,
                                                 hidden_dim=768, mlp_dim=3072).eval()  # vit_b_16, one layer
    captured = self_attention(vit_b, noise_photos(1, (224, 224)))
    assert captured.attentions[0].shape == (1, 12, 197, 197)
    wide = tiny_timm_vit(img_size=(32, 48))
    x = noise_photos(1, (32, 48))
    with torch.no_grad():
        _, expected = timm_reference(wide, x)
    got = self_attention(wide, x).attentions
    assert got[0].shape == (1, 2, 1 + 4 * 6, 1 + 4 * 6)
    torch.testing.assert_close(got[1], expected[1], atol=1e-5, rtol=1e-4)


def test_windowed_attention_and_cnns_are_refused_with_what_featviz_draws_instead() -> None:
    swin = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, depths=(1, 1, 1, 1))
    with pytest.raises(UsageError, match="windowed self-attention") as caught:
        attention_blocks(swin, "swin_tiny")
    assert "feature maps" in (caught.value.hint or "")
    with pytest.raises(UsageError, match="windowed self-attention"):
        attention_blocks(torchvision.models.swin_t(), "swin_t")
    with pytest.raises(UsageError, match="no self-attention blocks") as cnn:
        attention_blocks(torchvision.models.resnet18(), "resnet18")
    assert "gradcam" in (cnn.value.hint or "")


class _FunctionalAttention(nn.Module):
    """Self-attention by one F.scaled_dot_product_attention call: no probabilities to record."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(8, 24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return nn.functional.scaled_dot_product_attention(q, k, v)


def test_functional_attention_gets_one_sentence_not_an_empty_result() -> None:
    model = nn.Sequential(_FunctionalAttention())
    with pytest.raises(UsageError, match="cannot capture the attention") as caught:
        attention_blocks(model, "mine")
    assert "0 (_FunctionalAttention)" in str(caught.value)


def test_blocks_upto_names_the_blocks() -> None:
    names = ["blocks.0", "blocks.1", "blocks.2", "blocks.3"]
    assert blocks_upto(names, None) == 4
    assert blocks_upto(names, "blocks.1") == 2
    assert blocks_upto(names, "blocks.2.attn") == 3
    with pytest.raises(UsageError, match=r"no transformer block.*blocks\.0, blocks\.1, blocks\.2, …, blocks\.3"):
        blocks_upto(names, "patch_embed")


def test_eva_style_attention_with_rope_is_captured_too() -> None:
    torch.manual_seed(0)
    model = timm.create_model("eva02_tiny_patch14_224", pretrained=False, depth=1).eval()
    x = noise_photos(1, (224, 224))
    with torch.no_grad():
        plain = model(x)
    captured = self_attention(model, x)
    assert captured.names == ["blocks.0"] and captured.attentions[0].shape == (1, 3, 257, 257)
    torch.testing.assert_close(captured.attentions[0].sum(dim=-1), torch.ones(1, 3, 257))
    torch.testing.assert_close(captured.logits, plain, atol=1e-4, rtol=1e-4)
    assert _no_hooks(model) and all(b.module.fused_attn for b in attention_blocks(model))
