#!/usr/bin/env python
"""Vision-transformer attention speed: capture, rollout and relevance on DeiT-small.

    python benchmarks/vit.py            # 32 photos, 3 interleaved rounds
    python benchmarks/vit.py --quick    # smoke run: 6 photos, 1 round (what docs/vit-attention.md reports)

One DeiT-small (``timm.create_model("deit_small_patch16_224", pretrained=False)``, seeded) at
224 px, the harness's photos preprocessed once (resize 256, centre crop 224), one photo per
pass. Times per photo, best of the rounds (the machine is shared: the least disturbed run):

fused forward      ``model(x)`` as timm builds it (``fused_attn`` on: scaled_dot_product_attention)
unfused forward    ``model(x)`` with ``fused_attn`` off on every block: the floor of any capture
capture            ``self_attention(model, x)``: every block's probabilities (featviz)
capture + rollout  the same + ``rollout_row`` + ``patch_values`` (featviz ``--cam rollout``)
rollout alone      ``rollout_row`` + ``patch_values`` on attention captured beforehand (its own cost)
statistics alone   ``attention_statistics`` (mean distance, entropy, prefix mass of every block and
                   head) on attention captured beforehand (its own cost)
statistics (base)  with ``--statistics-baseline FILE``: the same, by another tokenstats.py (e.g. an
                   older one: ``git show f281868:featviz/maps/tokenstats.py > /tmp/old.py``),
                   timed in the same interleaved rounds, for a before/after ratio
relevance          ``TransformerExplainer.explain`` with relevance for the top class: one forward
                   with capture and one backward (featviz ``--cam relevance``)
grad-cam tokens    pytorch-grad-cam's ``GradCAM`` on ``blocks[-1].norm1`` with the usual token
                   ``reshape_transform`` (drop the prefix, tokens to a 14×14 map), top class

Targets from the issue: capture ≤ 1.15× the unfused forward; rollout and the statistics add ≤ 5 % to capture;
relevance ≥ 1.0× pytorch-grad-cam's token Grad-CAM in photos per second.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from harness import Bench, run_alone


def _inputs(paths: list[Path]) -> list[torch.Tensor]:
    from featviz.inputs.images import load_image
    from featviz.models.preprocess import Preprocess

    preprocess = Preprocess(resize=256, crop=224)
    return [preprocess(load_image(p))[None] for p in paths]


def _variants(model: torch.nn.Module, baseline: Path | None = None) -> dict[str, Callable[[torch.Tensor], object]]:
    from featviz.capture.selfattention import attention_blocks, self_attention
    from featviz.capture.tokens import token_layout
    from featviz.maps.targets import Target
    from featviz.maps.tokenstats import attention_statistics
    from featviz.maps.transformer import patch_values, rollout_row
    from featviz.maps.vitexplain import TransformerExplainer

    layout = token_layout(model, (224, 224))
    assert layout is not None
    blocks = attention_blocks(model)
    explainer = TransformerExplainer(model, None, ["relevance"], [Target(rank=1)], layout)

    def fused(x: torch.Tensor) -> object:
        with torch.no_grad():
            return model(x)

    def unfused(x: torch.Tensor) -> object:
        for block in blocks:
            block.module.fused_attn = False
        try:
            with torch.no_grad():
                return model(x)
        finally:
            for block in blocks:
                block.module.fused_attn = True

    def capture(x: torch.Tensor) -> object:
        return self_attention(model, x)

    def capture_rollout(x: torch.Tensor) -> object:
        return patch_values(rollout_row(self_attention(model, x).attentions), layout)

    kept = {}  # each photo's attention, captured once: rollout alone, without the noise of a second pass

    def rollout_alone(x: torch.Tensor) -> object:
        key = x.data_ptr()
        if key not in kept:
            kept[key] = self_attention(model, x).attentions
        return patch_values(rollout_row(kept[key]), layout)

    def statistics_alone(x: torch.Tensor) -> object:
        key = x.data_ptr()
        if key not in kept:
            kept[key] = self_attention(model, x).attentions
        return attention_statistics(kept[key], layout)

    def relevance(x: torch.Tensor) -> object:
        return explainer.explain(x)

    variants = {"fused forward": fused, "unfused forward": unfused, "capture": capture,
                "capture + rollout": capture_rollout, "rollout alone": rollout_alone,
                "statistics alone": statistics_alone, "relevance": relevance}
    if baseline is not None:
        import importlib.util

        spec = importlib.util.spec_from_file_location("tokenstats_baseline", baseline)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses look their module up
        spec.loader.exec_module(module)

        def statistics_baseline(x: torch.Tensor) -> object:
            key = x.data_ptr()
            if key not in kept:
                kept[key] = self_attention(model, x).attentions
            return module.attention_statistics(kept[key], layout)

        variants["statistics (base)"] = statistics_baseline
    try:
        from pytorch_grad_cam import GradCAM
    except ImportError:
        return variants

    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        return layout.to_grid(tokens)

    def gradcam(x: torch.Tensor) -> object:  # targets=None: pytorch-grad-cam explains the top class itself
        with GradCAM(model=model, target_layers=[model.blocks[-1].norm1], reshape_transform=reshape) as cam:
            return cam(input_tensor=x, targets=None)

    variants["grad-cam tokens"] = gradcam
    return variants


def run(bench: Bench, args: argparse.Namespace) -> None:
    import timm

    torch.manual_seed(0)
    model = timm.create_model("deit_small_patch16_224", pretrained=False).eval()
    inputs = _inputs(bench.paths)
    variants = _variants(model, args.statistics_baseline)
    for function in variants.values():  # warm-up
        function(inputs[0])
    best = {name: float("inf") for name in variants}
    names = list(variants)
    for round_ in range(bench.repeats):
        order = names[round_ % len(names):] + names[:round_ % len(names)]
        for name in order:
            start = time.perf_counter()
            for x in inputs:
                variants[name](x)
            best[name] = min(best[name], (time.perf_counter() - start) / len(inputs))
    print(f"\n== DeiT-small at 224 px, {len(inputs)} photos, batch 1, best of {bench.repeats} round(s) ==")
    floor, fused = best["unfused forward"], best["fused forward"]
    rows = []
    for name in names:
        ms = best[name] * 1e3
        line = f"{name:<18} {ms:8.1f} ms/photo  {best[name] / floor:5.2f}x unfused  {best[name] / fused:5.2f}x fused"
        rows.append({"variant": name, "ms_per_photo": round(ms, 2), "vs_unfused": round(best[name] / floor, 3),
                     "vs_fused": round(best[name] / fused, 3)})
        print(line)
    print(f"rollout adds {100 * best['rollout alone'] / best['capture']:.1f} % to capture (rollout alone / capture; "
          f"end to end: {100 * (best['capture + rollout'] / best['capture'] - 1):+.1f} %)")
    both = best["rollout alone"] + best["statistics alone"]
    print(f"rollout + statistics add {100 * both / best['capture']:.1f} % to capture (both alone / capture)")
    if "statistics (base)" in best:
        print(f"statistics: {best['statistics (base)'] / best['statistics alone']:.1f}x faster than the baseline "
              f"({100 * best['statistics (base)'] / best['capture']:.1f} % -> "
              f"{100 * best['statistics alone'] / best['capture']:.1f} % of capture)")
    if "grad-cam tokens" in best:
        print(f"relevance: {best['grad-cam tokens'] / best['relevance']:.2f}x pytorch-grad-cam's token Grad-CAM "
              "(photos per second)")
    bench.results["vit"] = rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--statistics-baseline", type=Path, default=None, metavar="FILE",
                        help="another tokenstats.py to time beside featviz's, in the same rounds")


if __name__ == "__main__":
    sys.exit(run_alone(__doc__, "vit.py", add_arguments, run))
