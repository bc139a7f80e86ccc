"""What ``--vit-stats``, ``--artifacts`` and ``--pca-tokens`` add to a :class:`~featviz.output.pipeline.Visualizer`.

Three jobs, kept out of the pipeline so that it only calls them:

* **checks before any photo**: the model must be a vision transformer whose blocks and token
  layout featviz can read (:class:`~featviz.maps.tokenrun.TokenFactsRunner`, tried once on the
  seeded example), and every ``--layer`` of ``--pca-tokens`` must be a token layer;
* **the run's PCA basis**: one basis per token layer over every photo of the run
  (:func:`~featviz.maps.tokenpcafit.fit_run_basis`; the photos are decoded and run up to the
  layer once, or twice when their tokens do not fit in memory), fitted before the first photo is
  drawn so that every photo's colours use it;
* **per batch**: the facts of each photo (one extra forward pass for the batch) and the PCA
  colours of each result, attached to the results.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from featviz.capture.layers import LayerRef
from featviz.capture.layouts import TOKENS, MapLayout
from featviz.capture.tokens import token_layout
from featviz.errors import FeatvizError, ImageError, UsageError
from featviz.maps.tokenpcafit import RunBasis, fit_run_basis
from featviz.maps.tokenrun import TokenFactsRunner
from featviz.output.options import RenderOptions
from featviz.output.vitfiles import pca_colours

if TYPE_CHECKING:
    from torch import nn

    from featviz.output.result import LayerResult

__all__ = ["attach", "check_pca_layers", "fit_bases", "measures_tokens", "needs_block", "pca_layers", "readable_tokens",
           "token_runner"]

#: tokens_of(source photo, layer): the photo's patch tokens at the layer, float (P, D), or None
TokensOf = Callable[[Any, LayerRef], "torch.Tensor | None"]


def measures_tokens(options: RenderOptions) -> bool:
    """Whether the run measures every block (``--vit-stats`` or ``--artifacts``)."""
    return options.vit_stats or options.artifacts is not None


def needs_block(options: RenderOptions) -> bool:
    """Whether, with no ``--layer``, the run's layer is the last transformer block."""
    return measures_tokens(options) or options.pca_tokens


def token_runner(model: nn.Module, example: torch.Tensor, options: RenderOptions,
                 model_name: str) -> TokenFactsRunner | None:
    """The runner of ``--vit-stats``/``--artifacts`` (None without them), tried on ``example``
    (float32 (1, 3, H, W), seeded noise at the input size) so that a model whose attention or
    tokens featviz cannot read fails before any photo. Also refuses ``--pca-tokens`` on a model
    without a token layout."""
    size = (int(example.shape[-2]), int(example.shape[-1]))
    if options.pca_tokens and token_layout(model, size) is None:
        raise UsageError(f"--pca-tokens colours the patch tokens of a vision transformer, and {model_name} has no "
                         "token layout featviz can read (no prefix count or patch grid)",
                         hint="use a timm ViT/DeiT/DINO(v2) or torchvision VisionTransformer, or drop --pca-tokens")
    if not measures_tokens(options):
        return None
    runner = TokenFactsRunner(model, size, statistics=options.vit_stats, artifacts_k=options.artifacts,
                              model_name=model_name)
    runner.measure(example)
    return runner


def check_pca_layers(layers: Sequence[LayerRef], layouts: Mapping[str, MapLayout], model_name: str) -> None:
    """``--pca-tokens``: every layer must be a token layer (its patch tokens are what is coloured)."""
    for ref in layers:
        layout = layouts.get(ref.path)
        if layout is None or layout.kind != TOKENS:
            raise UsageError(f"--pca-tokens colours a vision transformer's patch tokens, and layer {ref.path} of "
                             f"{model_name} is no token layer",
                             hint="name a transformer block (e.g. --layer blocks.11; `featviz layers` marks token "
                                  "layers), or leave --layer out for the last block")


def pca_layers(layers: Sequence[LayerRef], layouts: Mapping[str, MapLayout], model_name: str,
               named: bool = True) -> list[LayerRef]:
    """``--pca-tokens``: the layers whose patch tokens are coloured. Layers the user named must all
    be token layers (:func:`check_pca_layers`); of stages featviz chose (``sweep``'s default, which
    on torchvision's ViT starts with the patch convolution ``conv_proj``) the token layers, at
    least one."""
    if not named:
        tokens = [ref for ref in layers if (layout := layouts.get(ref.path)) is not None and layout.kind == TOKENS]
        if tokens:
            return tokens
    check_pca_layers(layers, layouts, model_name)
    return list(layers)


def fit_bases(layers: Sequence[LayerRef], sources: Sequence[Any],
              tokens_of: TokensOf) -> dict[str, RunBasis]:
    """One basis per layer over every source photo, in the order given.

    tokens_of(source, ref): the photo's patch tokens at the layer, float (P, D), or None for a
    photo that cannot be read (it fails later, in the drawing pass, with its own message).
    """
    bases = {}
    for ref in layers:
        def batches(ref: LayerRef = ref) -> Iterator[torch.Tensor]:
            for source in sources:
                tokens = tokens_of(source, ref)
                if tokens is not None:
                    yield tokens
        bases[ref.path] = fit_run_basis(batches)
    return bases


def readable_tokens(prepare: Callable[[Any], Any], maps: Callable[[torch.Tensor, LayerRef], torch.Tensor]) -> TokensOf:
    """``tokens_of`` for :func:`fit_bases` from a visualizer's ``prepare`` (source -> an object with
    ``tensor`` float32 (3, H, W)) and ``maps`` (batch (1, 3, H, W), layer -> float (1, D, rows,
    cols)); photos that cannot be read, that the model fails on or whose tokens are not finite give
    None."""
    def tokens_of(source: Any, ref: LayerRef) -> torch.Tensor | None:
        try:
            prepared = prepare(source)
            grid = maps(prepared.tensor[None], ref)[0]  # (D, rows, cols)
        except (ImageError, OSError, ValueError, RuntimeError):  # unreadable, or the model fails on it
            return None
        tokens = grid.flatten(1).T  # (P, D)
        return tokens if bool(torch.isfinite(tokens).all()) else None  # one NaN would spoil the whole basis
    return tokens_of


def attach(results: Sequence[Sequence[LayerResult]], layers: Sequence[LayerRef], batch: torch.Tensor,
           runner: TokenFactsRunner | None, bases: Mapping[str, RunBasis], options: RenderOptions) -> None:
    """Per photo (``results[i]``, one result per layer in layer order): the token facts of the
    batch (float32 (N, 3, H, W)) on the photo's first result, the PCA colours on each layer's.

    Attention that is no probabilities (NaN from a model that overflows on a photo) is an
    :class:`ImageError` naming the photo (a batch engine then runs the photos one by one, and only
    that one fails); usage errors stay usage errors."""
    if runner is not None:
        try:
            measured = runner.measure(batch)
        except UsageError:
            raise
        except FeatvizError as error:
            photo = (results[0][0].image_path or results[0][0].key) if len(results) == 1 else "a photo of the batch"
            raise ImageError(f"{photo}: --vit-stats/--artifacts: {error.message}", hint=error.hint) from None
        for per_photo, facts in zip(results, measured, strict=True):
            per_photo[0].token_facts = facts
    for position, ref in enumerate(layers):
        basis = bases.get(ref.path)
        if basis is None:
            continue
        for per_photo in results:
            result = per_photo[position]
            result.pca = pca_colours(basis, result.activations, options.pca_foreground)
