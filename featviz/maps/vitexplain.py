"""What a vision transformer attends to, over a batch: the passes behind ``--heads``, ``--cam
rollout`` and ``--cam relevance`` (the formulas are in :mod:`featviz.maps.transformer`).

:class:`TransformerExplainer` runs, for one chosen block and one batch of photos, ONE forward
pass that records every block's attention probabilities
(:class:`~featviz.capture.selfattention.SelfAttentionCapture`) and, for relevance only, ONE
backward per target rank (``torch.autograd.grad`` of sum_n y^{c_n}_n with respect to the
attention tensors of the blocks up to the chosen one; the graph is kept between ranks). Every
photo of the batch shares it: in eval mode photo n's logit depends on photo n's attention only.
Rollout and the heads come from the same forward pass at no extra model cost.

The maps come out as :class:`~featviz.maps.explain.CamMap` at the patch grid (rows, cols), so
``--cam-score``, ``cam/*.png`` and ``cam.npz`` treat them like the CAM family: rollout explains
no class (``rollout:none``), relevance one class per target (``relevance:<index>``).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from featviz.capture.selfattention import (
    SelfAttentionCapture,
    attention_blocks,
    blocks_upto,
)
from featviz.capture.tokens import TokenLayout, token_layout
from featviz.errors import UsageError
from featviz.maps import transformer as formulas
from featviz.maps.explain import CamBatch, CamMap
from featviz.maps.targets import (
    LOGITS_HINT,
    Target,
    class_indices,
    class_probabilities,
    label,
    parse_targets,
)

__all__ = ["METHODS", "TransformerBatch", "TransformerExplainer", "build_transformer_explainers",
           "is_transformer_method"]

#: The --cam methods drawn from self-attention (the rest of --cam is the CAM family).
METHODS = ("rollout", "relevance")


def is_transformer_method(method: str) -> bool:
    """Whether ``--cam METHOD`` is drawn from self-attention rather than a layer's activations."""
    return method.strip().lower() in METHODS


@dataclass
class TransformerBatch:
    """A batch's transformer maps at one block. ``cams``: per photo, rollout and relevance as
    :class:`CamMap` (map float32 (rows, cols) >= 0, unscaled). ``heads``: float32 (N, heads,
    rows, cols) in [0, 1], the chosen block's class-token attention to each patch (raw
    probabilities, prefix keys dropped, not renormalised), or None without ``--heads``."""

    cams: CamBatch
    heads: torch.Tensor | None
    block: str
    layout: TokenLayout


class TransformerExplainer:
    """Heads, rollout and relevance at ``block`` (a block name, a module inside one, or None for
    the last block) of ``model`` for ``targets`` (relevance only)."""

    def __init__(self, model: nn.Module, block: str | None, methods: Sequence[str], targets: Sequence[Target],
                 layout: TokenLayout, *, heads: bool = False, fusion: str = "mean", discard: float = 0.0,
                 start: int = 0, categories: Sequence[str] | None = None, model_name: str = "the model") -> None:
        names = [b.name for b in attention_blocks(model, model_name)]
        self.upto = blocks_upto(names, block)
        self.block = names[self.upto - 1]
        if not 0 <= start < self.upto:
            raise UsageError(f"--rollout-start {start} is out of range: blocks 0..{self.upto - 1} lead up to "
                             f"{self.block}",
                             hint="start at block 0 (the default) or a block before the chosen one")
        if fusion not in formulas.FUSIONS:
            raise UsageError(f"unknown head fusion {fusion!r}", hint="use " + ", ".join(formulas.FUSIONS))
        if not 0 <= discard < 1:
            raise UsageError(f"--rollout-discard {discard} is out of range", hint="use a fraction in [0, 1), e.g. 0.9")
        if layout.prefix < 1 or getattr(model, "cls_token", True) is None:
            raise UsageError(f"{model_name} has no class token, and its heads, rollout and relevance are read from "
                             "the class token's row",
                             hint="use a ViT with a class token (timm's default, torchvision's)")
        self.model = model
        self.methods = list(dict.fromkeys(m.strip().lower() for m in methods))
        self.targets = list(targets)
        self.layout = layout
        self.heads = heads
        self.fusion, self.discard, self.start = fusion, discard, start
        self.categories = categories
        self.model_name = model_name
        self.head_count = 0  # the chosen block's heads, known after a pass (build_transformer_explainers runs one)

    def explain(self, batch: torch.Tensor) -> TransformerBatch:
        """batch: float32 (N, 3, H, W), normalised, on the model's device. The token layout is read
        again for this batch's H × W: a model with dynamic input sizes (timm ``dynamic_img_size``,
        photos not cropped) has another patch grid for each size, not the one of the example."""
        relevant = "relevance" in self.methods
        layout = self._layout((int(batch.shape[-2]), int(batch.shape[-1])))
        with SelfAttentionCapture(self.model, keep_graph=relevant, model_name=self.model_name) as capture:
            logits = capture.run(batch)
            if logits.dim() != 2 or logits.shape[0] != batch.shape[0]:
                raise UsageError(f"relevance and rollout need a model that returns class logits (N, classes); "
                                 f"it returned {tuple(logits.shape)}", hint=LOGITS_HINT)
            classes = class_indices(self.targets, logits.detach())
            attentions = capture.attentions[:self.upto]
            gradients: list[list[torch.Tensor]] = []
            if relevant:
                for t in range(classes.shape[1]):
                    score = logits.gather(1, classes[:, t:t + 1]).sum()
                    gradients.append(capture.gradients(score, retain_graph=t < classes.shape[1] - 1, upto=self.upto))
        logits = logits.detach().float()
        errors = _non_finite(attentions, logits, [g for grads in gradients for g in grads])
        columns: dict[str, list[torch.Tensor]] = {}
        if "rollout" in self.methods:
            row = formulas.rollout_row(attentions, fusion=self.fusion, discard=self.discard, start=self.start)
            columns["rollout"] = [formulas.patch_values(row, layout)]
        if relevant:
            columns["relevance"] = [formulas.patch_values(formulas.relevance_row(attentions, grads), layout)
                                    for grads in gradients]
        probabilities = class_probabilities(logits)
        per_image: list[list[CamMap]] = []
        for n in range(batch.shape[0]):
            maps: list[CamMap] = []
            seen: set[tuple[str, int | None]] = set()
            for method in self.methods:
                for t, column in enumerate(columns[method]):
                    cls = None if method == "rollout" else int(classes[n, t])
                    if (method, cls) in seen:
                        continue
                    seen.add((method, cls))
                    maps.append(CamMap(method, cls, None if cls is None else self.targets[t].rank, column[n], None,
                                       None if cls is None else float(logits[n, cls]),
                                       None if cls is None else float(probabilities[n, cls]),
                                       None if cls is None else label(cls, self.categories)))
            per_image.append([] if n in errors else maps)
        heads = formulas.head_maps(attentions[-1], layout) if self.heads else None
        return TransformerBatch(CamBatch(per_image, errors, None, logits), heads, self.block, layout)

    def _layout(self, input_size: tuple[int, int]) -> TokenLayout:
        """The token layout at ``input_size`` (rows, cols): the example's when the size is the same."""
        if input_size == (self.layout.grid[0] * self.layout.patch[0], self.layout.grid[1] * self.layout.patch[1]):
            return self.layout
        layout = token_layout(self.model, input_size)
        if layout is None:
            raise UsageError(f"featviz cannot read the token layout of {self.model_name} at {input_size[0]}×"
                             f"{input_size[1]} px, so it will not guess which tokens are patches",
                             hint="resize and crop the photos to the size the model was built for")
        return layout


def _non_finite(attentions: Sequence[torch.Tensor], logits: torch.Tensor,
                gradients: Sequence[torch.Tensor]) -> dict[int, str]:
    """Photo index -> message, for photos whose attention, logits or gradients are NaN or infinite."""
    errors: dict[int, str] = {}
    checks = [("logits", logits), *(("attention", a) for a in attentions), *(("gradients", g) for g in gradients)]
    for name, tensor in checks:
        bad = ~torch.isfinite(tensor.float().flatten(1)).all(dim=1)
        for n in bad.nonzero().flatten().tolist():
            errors.setdefault(n,
                              f"the model's {name} are not finite (NaN or infinite) for this photo: no attention map")
    return errors


def build_transformer_explainers(model: nn.Module, blocks: Sequence[str], methods: Sequence[str],
                                 target_specs: Sequence[str], categories: Sequence[str] | None,
                                 example: torch.Tensor, *, heads: bool = False, fusion: str = "mean",
                                 discard: float = 0.0, start: int = 0,
                                 model_name: str = "the model") -> dict[str, TransformerExplainer]:
    """One :class:`TransformerExplainer` per requested layer, after every check that needs no
    photo: the methods, the blocks (a layer that is no transformer block is refused naming the
    blocks; Swin and uncapturable attention with what featviz draws instead), the token layout,
    the targets, and one capture pass on ``example`` (float32 (1, 3, H, W), seeded noise) so a
    model whose capture fails says so before any image is read. Raises :class:`UsageError`."""
    methods = [m.strip().lower() for m in methods]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        close = difflib.get_close_matches(unknown[0], METHODS, n=2)
        raise UsageError(f"unknown transformer map {unknown[0]!r}",
                         hint=("did you mean " + ", ".join(close) + "? " if close else "")
                         + "use " + ", ".join(METHODS))
    parse_targets(target_specs, categories)
    names = [b.name for b in attention_blocks(model, model_name)]
    for block in blocks:
        blocks_upto(names, block)
    layout = token_layout(model, (int(example.shape[2]), int(example.shape[3])))
    if layout is None:
        raise UsageError(f"featviz cannot read the token layout (prefix tokens, patch grid) of {model_name}, "
                         "so it will not guess which tokens are patches",
                         hint="heads, rollout and relevance support timm ViT/DeiT/DINO/EVA and torchvision's ViT")
    with SelfAttentionCapture(model, model_name=model_name) as capture:
        logits = capture.run(example)
    if logits.dim() != 2:
        raise UsageError(f"relevance and rollout need a model that returns class logits (N, classes); "
                         f"it returned {tuple(logits.shape)}", hint=LOGITS_HINT)
    formulas.patch_row(capture.attentions[0], layout)  # the layout fits the attention, or a usage error
    targets = parse_targets(target_specs, categories, num_classes=int(logits.shape[1]))
    explainers = {}
    for block in blocks:
        explainer = TransformerExplainer(model, block, methods, targets, layout, heads=heads, fusion=fusion,
                                         discard=discard, start=start, categories=categories, model_name=model_name)
        explainer.head_count = int(capture.attentions[explainer.upto - 1].shape[1])
        explainers[block] = explainer
    return explainers
