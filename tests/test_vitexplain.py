"""Heads, rollout and relevance over a batch, against hand-computed attention and gradients."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torchvision

from featviz.capture.selfattention import attention_blocks
from featviz.errors import UsageError
from featviz.maps.camscore import score_cams
from featviz.maps.vitexplain import build_transformer_explainers
from vitmodels import (
    noise_photos,
    timm_reference,
    tiny_timm_vit,
    tiny_torchvision_vit,
    torchvision_reference,
)


def _example(size: tuple[int, int] = (32, 32)) -> torch.Tensor:
    return noise_photos(1, size, seed=0)


def _relevance(attentions: list[torch.Tensor], gradients: list[torch.Tensor]) -> torch.Tensor:
    t = attentions[0].shape[-1]
    r = torch.eye(t).repeat(attentions[0].shape[0], 1, 1)
    for a, g in zip(attentions, gradients, strict=True):
        r = r + (g * a).clamp(min=0).mean(dim=1) @ r
    return r


def _rollout(attentions: list[torch.Tensor]) -> torch.Tensor:
    t = attentions[0].shape[-1]
    r = torch.eye(t).repeat(attentions[0].shape[0], 1, 1)
    for a in attentions:
        hat = (a.mean(dim=1) + torch.eye(t)) / 2
        r = (hat / hat.sum(dim=-1, keepdim=True)) @ r
    return r


@pytest.mark.parametrize("build, reference", [(tiny_timm_vit, timm_reference),
                                              (tiny_torchvision_vit, torchvision_reference)])
@pytest.mark.parametrize("upto", [1, 2])
def test_maps_equal_the_references_at_the_chosen_block(build, reference, upto: int) -> None:
    model = build()
    block = [b.name for b in attention_blocks(model)][upto - 1]
    x = noise_photos()
    explainer = build_transformer_explainers(model, [block], ["rollout", "relevance"], ["top", "3"], None,
                                             _example(), heads=True)[block]
    got = explainer.explain(x)
    logits, attentions = reference(model, x)
    top = logits.argmax(dim=1)
    rollout = _rollout([a.detach() for a in attentions[:upto]])[:, 0, 1:].reshape(2, 4, 4)
    torch.testing.assert_close(got.heads, attentions[upto - 1].detach()[:, :, 0, 1:].reshape(2, 2, 4, 4),
                               atol=1e-5, rtol=1e-4)
    for n in range(2):
        maps = {cam.name: cam for cam in got.cams.per_image[n]}
        assert set(maps) == {"rollout", f"relevance-{int(top[n])}", "relevance-3"}
        torch.testing.assert_close(maps["rollout"].map, rollout[n], atol=1e-5, rtol=1e-4)
    for column, classes in enumerate([top, torch.tensor([3, 3])]):
        grads = torch.autograd.grad(logits.gather(1, classes[:, None]).sum(), attentions[:upto], retain_graph=True)
        expected = _relevance([a.detach() for a in attentions[:upto]], list(grads))[:, 0, 1:].reshape(2, 4, 4)
        for n in range(2):
            cam = next(c for c in got.cams.per_image[n] if c.name == f"relevance-{int(classes[n])}")
            torch.testing.assert_close(cam.map, expected[n], atol=1e-5, rtol=1e-4)
            assert cam.target == int(classes[n]) and cam.rank == (1 if column == 0 else None)


def test_fused_and_unfused_models_give_the_same_logits_and_maps() -> None:
    fused = tiny_timm_vit()
    unfused = copy.deepcopy(fused)
    for block in attention_blocks(unfused):
        block.module.fused_attn = False
    x = noise_photos()
    with torch.no_grad():
        torch.testing.assert_close(fused(x), unfused(x), atol=1e-5, rtol=1e-4)
    results = [build_transformer_explainers(m, ["blocks.1"], ["rollout", "relevance"], ["top"], None, _example(),
                                            heads=True)["blocks.1"].explain(x) for m in (fused, unfused)]
    torch.testing.assert_close(results[0].heads, results[1].heads, atol=1e-6, rtol=1e-5)
    for a, b in zip(results[0].cams.per_image, results[1].cams.per_image, strict=True):
        assert [c.name for c in a] == [c.name for c in b]
        for x_map, y_map in zip(a, b, strict=True):
            torch.testing.assert_close(x_map.map, y_map.map, atol=1e-5, rtol=1e-4)
    assert all(b.module.fused_attn for b in attention_blocks(fused))


def test_distillation_and_register_tokens_are_not_patches() -> None:
    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, depth=1, img_size=56,
                              num_classes=4).eval()
    explainer = build_transformer_explainers(model, ["blocks.0"], ["rollout"], ["top"], None, _example((56, 56)),
                                             heads=True)["blocks.0"]
    got = explainer.explain(noise_photos(1, (56, 56)))
    _, attentions = timm_reference(model, noise_photos(1, (56, 56)))
    assert got.layout.prefix == 5 and got.heads is not None and got.heads.shape == (1, 6, 4, 4)
    torch.testing.assert_close(got.heads, attentions[0].detach()[:, :, 0, 5:].reshape(1, 6, 4, 4), atol=1e-5, rtol=1e-4)


def test_a_wide_input_keeps_rows_and_columns_apart() -> None:
    model = tiny_timm_vit(img_size=(32, 48))
    x = noise_photos(1, (32, 48))
    got = build_transformer_explainers(model, ["blocks.1"], ["rollout"], ["top"], None, _example((32, 48)),
                                       heads=True)["blocks.1"].explain(x)
    _, attentions = timm_reference(model, x)
    assert got.layout.grid == (4, 6) and got.heads is not None and got.heads.shape == (1, 2, 4, 6)
    a = attentions[1].detach()
    for i, j in [(0, 5), (3, 0), (2, 4)]:  # patch (row i, column j) is token 1 + 6·i + j
        torch.testing.assert_close(got.heads[0, :, i, j], a[0, :, 0, 1 + 6 * i + j], atol=1e-5, rtol=1e-4)
    assert got.cams.per_image[0][0].map.shape == (4, 6)


def test_cam_score_scores_transformer_maps() -> None:
    model = tiny_timm_vit()
    x = noise_photos()
    batch = build_transformer_explainers(model, ["blocks.1"], ["rollout", "relevance"], ["top"], None,
                                         _example())["blocks.1"].explain(x)
    failed = score_cams(model, x, batch.cams, steps=2, batch_size=8, names=["a", "b"])
    assert failed == {}
    for cams in batch.cams.per_image:
        for cam in cams:
            assert cam.scores is not None and 0 <= cam.scores.deletion_auc <= 1


def test_bad_requests_are_usage_errors_before_any_photo() -> None:
    vit = tiny_timm_vit()
    with pytest.raises(UsageError, match=r"layer patch_embed is no transformer block.*blocks\.0, blocks\.1"):
        build_transformer_explainers(vit, ["patch_embed"], ["rollout"], ["top"], None, _example())
    with pytest.raises(UsageError, match="unknown transformer map 'rolout'") as close:
        build_transformer_explainers(vit, ["blocks.1"], ["rolout"], ["top"], None, _example())
    assert "did you mean rollout" in (close.value.hint or "")
    with pytest.raises(UsageError, match="rollout-start 2 is out of range"):
        build_transformer_explainers(vit, ["blocks.1"], ["rollout"], ["top"], None, _example(), start=2)
    with pytest.raises(UsageError, match="out of range"):
        build_transformer_explainers(vit, ["blocks.1"], ["relevance"], ["9"], None, _example())
    with pytest.raises(UsageError, match="no self-attention blocks"):
        build_transformer_explainers(torchvision.models.resnet18(num_classes=3), ["layer4"], ["relevance"], ["top"],
                                     None, _example())
    with pytest.raises(UsageError, match="windowed self-attention"):
        build_transformer_explainers(torchvision.models.swin_t(num_classes=3), ["features.1"], ["rollout"], ["top"],
                                     None, _example((224, 224)))
    with pytest.raises(UsageError, match="no class token"):
        build_transformer_explainers(tiny_timm_vit(class_token=False, global_pool="avg"), ["blocks.1"], ["rollout"],
                                     ["top"], None, _example())


def test_a_torchvision_model_with_relevance_leaves_no_trace() -> None:
    model = tiny_torchvision_vit().train()
    flags = [p.requires_grad for p in model.parameters()]
    explainer = build_transformer_explainers(model, ["encoder.layers.encoder_layer_1"], ["relevance"], ["top2"], None,
                                             _example())["encoder.layers.encoder_layer_1"]
    batch = explainer.explain(noise_photos())
    assert [len(cams) for cams in batch.cams.per_image] == [2, 2]
    assert all(m.training for m in model.modules()) and [p.requires_grad for p in model.parameters()] == flags
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
