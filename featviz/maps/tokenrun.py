"""One pass over a batch for ``--vit-stats`` and ``--artifacts``: every block's attention and tokens.

The formulas live in :mod:`featviz.maps.tokenstats` (mean attention distance, entropy, prefix
mass) and :mod:`featviz.maps.artifacts` (high-norm tokens, median + k·MAD); this module runs the
model ONCE per batch with two recorders from :mod:`featviz.capture` nested (the attention
probabilities of every block, :class:`~featviz.capture.selfattention.SelfAttentionCapture`, and
every block's output tokens, :class:`~featviz.capture.hooks.ActivationCapture`), and cuts the
batch into one :class:`PhotoTokenFacts` per photo. Both recorders put the model back as found
(hooks, ``fused_attn``, train/eval flags), also when the pass raises.

The statistics are per model, not per layer: they describe every block at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from featviz.capture.hooks import ActivationCapture
from featviz.capture.layers import LayerRef
from featviz.capture.selfattention import SelfAttentionCapture, attention_blocks
from featviz.capture.tokens import TokenLayout, token_layout
from featviz.errors import UsageError
from featviz.maps.artifacts import MAD_SCALE, artifact_tokens, token_norms
from featviz.maps.tokenstats import STATISTICS, attention_statistics

__all__ = ["PhotoTokenFacts", "TokenFactsRunner"]


@dataclass(frozen=True)
class PhotoTokenFacts:
    """What one photo's pass says about every block of a vision transformer.

    ``statistics``: statistic name -> float64 (blocks, heads) (None without ``--vit-stats``);
    ``norms``: float32 (blocks, T), every token's L2 norm in every block's output (prefix first);
    ``flags``: bool (blocks, rows, cols), the artifact tokens of each block (None without
    ``--artifacts``); ``artifacts``: one JSON record per block (median, MAD, threshold, flagged).
    """

    blocks: tuple[str, ...]
    layout: TokenLayout
    heads: int
    statistics: dict[str, torch.Tensor] | None
    norms: torch.Tensor
    flags: torch.Tensor | None
    artifacts: tuple[dict[str, Any], ...] | None
    k: float | None

    def layout_json(self) -> dict[str, Any]:
        layout = self.layout
        return {"prefix": layout.prefix, "grid": list(layout.grid), "patch_px": list(layout.patch)}

    def statistics_json(self) -> dict[str, Any]:
        """``attention_statistics.json`` of the photo: per statistic a list of blocks, each a list
        of heads (the format of :meth:`featviz.maps.tokenstats.AttentionStatistics.photo_json`),
        plus the block names and each block's mean token norm (patch tokens, then prefix)."""
        if self.statistics is None:
            raise UsageError("these facts were measured without the attention statistics", hint="add --vit-stats")
        stats = self.statistics
        p = self.layout.prefix
        return {
            "photos": 1,
            "blocks": len(self.blocks),
            "heads": self.heads,
            "block_names": list(self.blocks),
            "layout": self.layout_json(),
            "queries": "patch tokens",
            "max_entropy_nats": float(torch.log(torch.tensor(float(self.layout.tokens), dtype=torch.float64))),
            **{name: [[round(float(v), 6) for v in row] for row in stats[name]] for name in STATISTICS},
            "patch_norm_mean": [round(float(v), 6) for v in self.norms[:, p:].double().mean(1)],
            "prefix_norms": [[round(float(v), 6) for v in row] for row in self.norms[:, :p]],
        }

    def artifacts_json(self) -> dict[str, Any]:
        """``artifacts.json`` of the photo: the rule, then one record per block (flagged patches
        as row, col and norm; median, MAD, threshold)."""
        if self.artifacts is None or self.k is None:
            raise UsageError("these facts were measured without the artifact test", hint="add --artifacts")
        return {
            "rule": "norm > median + k * mad_scale * MAD over the patch tokens of one block",
            "k": self.k,
            "mad_scale": MAD_SCALE,
            "layout": self.layout_json(),
            "blocks": [{"block": name, **record} for name, record in zip(self.blocks, self.artifacts, strict=True)],
            "flagged_per_block": [len(record["flagged"]) for record in self.artifacts],
        }


class TokenFactsRunner:
    """The blocks of a vision transformer, checked once, and the pass that measures a batch.

    ``statistics``: measure the attention statistics; ``artifacts_k``: the artifact test's k
    (None: no test). A model without self-attention blocks or without a readable token layout
    is a :class:`UsageError` here, before any photo is read.
    """

    def __init__(self, model: nn.Module, input_size: tuple[int, int], *, statistics: bool = True,
                 artifacts_k: float | None = None, model_name: str = "the model") -> None:
        option = "--vit-stats" if statistics else "--artifacts"
        try:
            self.blocks = attention_blocks(model, model_name)
        except UsageError as error:
            raise UsageError(f"{option} measures every block of a vision transformer, and {error.message}",
                             hint="use a timm ViT/DeiT/DINO(v2) or torchvision VisionTransformer, or leave "
                                  f"{option} out") from None
        if token_layout(model, input_size) is None:
            raise UsageError(f"{option}: featviz cannot read where {model_name} keeps its patch tokens (no prefix "
                             "count or patch grid to read), and it does not guess",
                             hint="use a timm ViT/DeiT/DINO(v2) or torchvision VisionTransformer")
        self.model = model
        self.model_name = model_name
        self.statistics = statistics
        self.artifacts_k = artifacts_k
        self.names = tuple(block.name for block in self.blocks)
        self._refs = [LayerRef(name, None, model.get_submodule(name)) for name in self.names]

    def measure(self, batch: torch.Tensor) -> list[PhotoTokenFacts]:
        """One forward pass of ``batch`` (float32 (N, 3, H, W) on the model's device); the facts of
        each photo, in batch order."""
        layout = token_layout(self.model, (int(batch.shape[-2]), int(batch.shape[-1])))
        if layout is None:  # checked in __init__; a model cannot lose its layout in between
            raise UsageError(f"featviz cannot read the token layout of {self.model_name}")
        with SelfAttentionCapture(self.model, model_name=self.model_name) as attention, \
                ActivationCapture(self.model, self._refs, stop_early=False) as outputs:
            attention.run(batch)
            tokens = [outputs.activations[name].float().cpu() for name in self.names]
        attentions = [a.cpu() for a in attention.attentions]
        stats = attention_statistics(attentions, layout) if self.statistics else None
        norms = torch.stack([token_norms(t, layout) for t in tokens], dim=1)  # float32 (N, blocks, T)
        tests = ([artifact_tokens(t, layout, self.artifacts_k) for t in tokens]
                 if self.artifacts_k is not None else None)
        facts = []
        for i in range(batch.shape[0]):
            facts.append(PhotoTokenFacts(
                blocks=self.names, layout=layout, heads=int(attentions[0].shape[1]),
                statistics=None if stats is None else {name: getattr(stats, name)[i] for name in STATISTICS},
                norms=norms[i],
                flags=None if tests is None else torch.stack([test.flags[i] for test in tests]),
                artifacts=None if tests is None else tuple(test.photo_json(i) for test in tests),
                k=self.artifacts_k,
            ))
        return facts
