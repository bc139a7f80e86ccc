"""Parameter-free attention statistics of a layer's activations.

All functions take ``activations``: float (N, C, H, W) on any device, and return tensors on that
device; nothing is modified in place.

* spatial attention, "where the layer responds" (N, C, H, W) -> (N, H, W):
  ``mean`` = mean_c A_c (the tutorial's definition), ``max`` = max_c A_c, ``meanmax`` = their
  average (CBAM's spatial module pools both before its convolution).
* channel attention, "which channels matter" (N, C, H, W) -> (N, C):
  ``se`` = z_c = mean_{h,w} A_c (SENet's squeeze, global average pooling),
  ``cbam`` = mean_{h,w} A_c + max_{h,w} A_c (CBAM's channel module pools both and sums).
* channel weights w = min-max of the channel attention over channels, in [0, 1], and the
  channel-weighted map M = sum_c w_c A_c (N, H, W).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from featviz.errors import UsageError

if TYPE_CHECKING:
    import torch

SpatialMode = Literal["mean", "max", "meanmax"]
ChannelMode = Literal["se", "cbam"]
SPATIAL_MODES: tuple[str, ...] = ("mean", "max", "meanmax")
CHANNEL_MODES: tuple[str, ...] = ("se", "cbam")


def _check(activations: torch.Tensor) -> None:
    if activations.dim() != 4:
        raise UsageError(f"attention needs activations of shape (N, C, H, W), got {tuple(activations.shape)}")


def spatial_attention(activations: torch.Tensor, mode: str = "mean") -> torch.Tensor:
    """(N, C, H, W) -> (N, H, W), unnormalised."""
    _check(activations)
    x = activations.float()
    if mode == "mean":
        return x.mean(dim=1)
    if mode == "max":
        return x.amax(dim=1)
    if mode == "meanmax":
        return (x.mean(dim=1) + x.amax(dim=1)) / 2
    raise UsageError(f"unknown spatial attention {mode!r}", hint="use one of " + ", ".join(SPATIAL_MODES))


def channel_attention(activations: torch.Tensor, mode: str = "se") -> torch.Tensor:
    """(N, C, H, W) -> (N, C), unnormalised: the pooled statistic of each channel."""
    _check(activations)
    x = activations.float()
    if mode == "se":
        return x.mean(dim=(2, 3))
    if mode == "cbam":
        return x.mean(dim=(2, 3)) + x.amax(dim=(2, 3))
    raise UsageError(f"unknown channel attention {mode!r}", hint="use one of " + ", ".join(CHANNEL_MODES))


def minmax(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Scale to [0, 1] over ``dims``; where max == min the result is 0 (a constant map is black)."""
    low = x.amin(dim=dims, keepdim=True)
    span = x.amax(dim=dims, keepdim=True) - low
    safe = span.clamp_min(1e-12)
    return ((x - low) / safe) * (span > 0)


def channel_weights(activations: torch.Tensor, mode: str = "se") -> torch.Tensor:
    """(N, C, H, W) -> w: (N, C) in [0, 1], the channel attention min-max normalised over C."""
    return minmax(channel_attention(activations, mode), dims=(1,))


def weighted_channel_map(activations: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """M = sum_c w_c A_c: (N, C, H, W) x (N, C) -> (N, H, W), unnormalised."""
    _check(activations)
    return (activations.float() * weights[:, :, None, None].to(activations.device)).sum(dim=1)


def normalized_map(maps: torch.Tensor) -> torch.Tensor:
    """(N, H, W) -> (N, H, W) in [0, 1], each map scaled on its own."""
    return minmax(maps, dims=(1, 2))
