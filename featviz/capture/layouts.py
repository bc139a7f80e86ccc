"""What a layer's output axes mean: the one place that turns any layer's output into (N, C, H, W).

CNN layers output (N, C, H, W) already. Two other kinds of layer are feature maps too, but their
axes must be rearranged before anything is drawn, and featviz reads from the model which one a
layer is, never from the tensor's shape alone:

* **tokens**: (N, T, D) from a vision transformer's token trunk (timm ViT/DeiT/DINOv2, torchvision
  ViT). The prefix tokens (class, distillation, registers) are dropped and the T - prefix patch
  tokens laid on the patch grid: (N, D, rows, cols), by :class:`~featviz.capture.tokens.TokenLayout`.
* **channels_last**: (N, H, W, C) from a module the model says works in NHWC: a torchvision
  ``SwinTransformer``'s ``features``/``norm``, a timm model with ``output_fmt == "NHWC"`` (timm
  Swin), a module with its own ``output_fmt`` (timm ``PatchEmbed``), or what follows a
  ``torchvision.ops.Permute([0, 2, 3, 1])`` inside an ``nn.Sequential`` (torchvision ConvNeXt's
  blocks). Permuted to (N, C, H, W).

A 4-D output of a model that is channels-last in places, from a module outside the parts it
declares, is an error with a hint (:class:`~featviz.errors.LayerError`): featviz does not guess.
Every consumer (the drawing pipeline, ``featviz layers``, ``--layer all``, the CAM family's
activations AND gradients, Ablation-CAM's replaced outputs) goes through :func:`map_layout`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torchvision.models.swin_transformer import SwinTransformer as TorchvisionSwin
from torchvision.ops.misc import Permute

from featviz.capture.layers import LayerRef
from featviz.capture.tokens import TokenLayout, token_layout
from featviz.errors import LayerError

NCHW, TOKENS, CHANNELS_LAST = "nchw", "tokens", "channels_last"
_TO_NHWC, _TO_NCHW = [0, 2, 3, 1], [0, 3, 1, 2]


@dataclass(frozen=True)
class MapLayout:
    """How one layer's output becomes a feature map.

    ``kind``: ``"nchw"`` (as it is), ``"tokens"`` (``tokens`` says prefix and grid) or
    ``"channels_last"`` (N, H, W, C).
    """

    kind: str
    tokens: TokenLayout | None = None

    def to_map(self, output: torch.Tensor) -> torch.Tensor:
        """The layer's output as (N, C, H, W), same dtype; a view where torch allows (callers
        that keep it clone it). Linear in ``output``, so it maps gradients the same way."""
        if self.kind == TOKENS and self.tokens is not None:
            return self.tokens.to_grid(output)
        if self.kind == CHANNELS_LAST:
            return output.permute(0, 3, 1, 2)
        return output

    def from_map(self, maps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`to_map` for replaced outputs (Ablation-CAM): ``maps`` (K, C, H, W)
        back in the layer's own layout. ``like``: the layer's real output (1, ...) whose prefix
        tokens the copies keep (they are not part of the map, so nothing changes them)."""
        if self.kind == TOKENS and self.tokens is not None:
            out = like[:1].expand(maps.shape[0], -1, -1).clone()
            out[:, self.tokens.prefix:, :] = maps.flatten(2).transpose(1, 2).to(out.dtype)
            return out
        if self.kind == CHANNELS_LAST:
            return maps.permute(0, 2, 3, 1).contiguous()
        return maps

    def record(self) -> dict[str, Any]:
        """Fields for summary.json: ``{"tokens": {"prefix": P, "grid": [H, W]}}``,
        ``{"layout": "channels_last"}``, or nothing for a plain (N, C, H, W) layer."""
        if self.kind == TOKENS and self.tokens is not None:
            return {"tokens": {"prefix": self.tokens.prefix, "grid": list(self.tokens.grid),
                               "patch": list(self.tokens.patch)}}
        if self.kind == CHANNELS_LAST:
            return {"layout": "channels_last"}
        return {}

    def describe(self) -> str:
        """Words for ``featviz layers``: ``tokens: 1 prefix + 14×14``, ``channels-last``, or ''."""
        if self.kind == TOKENS and self.tokens is not None:
            rows, cols = self.tokens.grid
            return f"tokens: {self.tokens.prefix} prefix + {rows}×{cols}"
        return "channels-last" if self.kind == CHANNELS_LAST else ""


PLAIN = MapLayout(NCHW)


def _format(module: nn.Module) -> str | None:
    """A timm module's own ``output_fmt`` (a ``Format`` enum or a string), as text; else None."""
    fmt = getattr(module, "output_fmt", None)
    value = getattr(fmt, "value", fmt)
    return value.upper() if isinstance(value, str) else None


def _after_permute(model: nn.Module, path: str) -> str | None:
    """Inside an ``nn.Sequential``: the layout after the last torchvision ``Permute`` at or before
    this entry (``"NHWC"`` after ``[0, 2, 3, 1]``, ``"NCHW"`` after ``[0, 3, 1, 2]``); None when no
    such ``Permute`` precedes it."""
    parent_path, _, name = path.rpartition(".")
    try:
        parent = model.get_submodule(parent_path) if parent_path else model
    except (AttributeError, RuntimeError):  # RuntimeError: a TorchScript module (no get_submodule)
        return None
    if not isinstance(parent, nn.Sequential):
        return None
    found = None
    for child_name, child in parent.named_children():
        if isinstance(child, Permute):
            found = "NHWC" if list(child.dims) == _TO_NHWC else "NCHW" if list(child.dims) == _TO_NCHW else "?"
        if child_name == name:
            break
    return found


def _declares_nhwc(model: nn.Module) -> bool:
    return isinstance(model, TorchvisionSwin) or _format(model) == "NHWC"


def _four_d(model: nn.Module, ref: LayerRef) -> MapLayout:
    """The layout of a 4-D output, from what the model and module say (see the module doc)."""
    module, path = ref.module, ref.module_path
    own = _format(module)
    if own in ("NHWC", "NCHW"):
        return MapLayout(CHANNELS_LAST) if own == "NHWC" else PLAIN
    if isinstance(module, nn.Conv2d):  # PyTorch convolutions output (N, C, H, W), always
        return PLAIN
    if isinstance(module, Permute):
        own = "NHWC" if list(module.dims) == _TO_NHWC else "NCHW" if list(module.dims) == _TO_NCHW else "?"
    else:
        own = _after_permute(model, path)
    if own == "NHWC":
        return MapLayout(CHANNELS_LAST)
    if own == "NCHW":
        return PLAIN
    if own == "?":
        raise LayerError(f"layer {path} follows a Permute that is neither NCHW->NHWC nor back: "
                         "featviz cannot tell which axis holds the channels",
                         hint="choose a layer before the Permute, or one after it that restores (N, C, H, W)")
    if isinstance(model, TorchvisionSwin):
        top = path.split(".")[0]
        if top in ("features", "norm"):
            return MapLayout(CHANNELS_LAST)
        raise LayerError(f"layer {path} of torchvision's Swin is outside its channels-last trunk "
                         "(features, norm): featviz cannot tell which axis holds the channels",
                         hint="choose a layer in features.K or norm")
    if _format(model) == "NHWC":
        return MapLayout(CHANNELS_LAST)
    return PLAIN


def map_layout(model: nn.Module, ref: LayerRef, shape: Sequence[int],
               input_size: tuple[int, int]) -> MapLayout | None:
    """How ``ref``'s output of ``shape`` (batch first) becomes (N, C, H, W) for inputs of
    ``input_size`` (rows, cols) pixels; None when it is no feature map (a vector, logits, tokens
    of a model whose token layout featviz cannot read, or of the wrong count). Raises
    :class:`LayerError` where the model is channels-last in places and this module's layout
    cannot be told, and :class:`~featviz.errors.UsageError` where a timm ViT was built for
    another input size."""
    if len(shape) == 4:
        return _four_d(model, ref)
    if len(shape) == 3:
        layout = token_layout(model, input_size)
        if layout is not None and shape[1] == layout.tokens:
            return MapLayout(TOKENS, layout)
    return None


def not_a_map(model: nn.Module, ref: LayerRef, shape: Sequence[int], model_name: str) -> LayerError:
    """The error for a layer whose output is no feature map, with a hint that fits the model."""
    hint = f"choose a convolutional layer; run `featviz layers --model {model_name}`"
    if len(shape) == 3 and _has_tokens(model):
        hint = (f"choose a layer in the token trunk (a transformer block or its norm1/attn/mlp); "
                f"run `featviz layers --model {model_name}`")
    return LayerError(f"layer {ref.path} ({ref.type_name}) outputs shape {tuple(shape)}, not a feature map "
                      "(N, C, H, W), tokens (N, T, D) of a vision transformer, or a channels-last map", hint=hint)


def _has_tokens(model: nn.Module) -> bool:
    """A model with a token trunk (timm's ``num_prefix_tokens``, torchvision's ViT)."""
    return hasattr(model, "num_prefix_tokens") or type(model).__name__ == "VisionTransformer"


def as_feature_maps(model: nn.Module, refs: Sequence[LayerRef], captured: Mapping[str, torch.Tensor],
                    input_size: tuple[int, int],
                    model_name: str = "the model") -> tuple[dict[str, torch.Tensor], dict[str, MapLayout]]:
    """``captured`` with each layer of ``refs`` as (N, C, H, W) (other keys as they are), and each
    layer's :class:`MapLayout`. Raises :class:`LayerError` for a layer that is no feature map."""
    maps = dict(captured)
    layouts: dict[str, MapLayout] = {}
    for ref in refs:
        tensor = captured[ref.path]
        layout = map_layout(model, ref, tuple(tensor.shape), input_size)
        if layout is None:
            raise not_a_map(model, ref, tuple(tensor.shape), model_name)
        maps[ref.path] = layout.to_map(tensor)
        layouts[ref.path] = layout
    return maps, layouts
