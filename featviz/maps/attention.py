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

import math
from collections.abc import Sequence
from typing import Literal

import torch

from featviz.errors import UsageError

SpatialMode = Literal["mean", "max", "meanmax"]
ChannelMode = Literal["se", "cbam", "dct", "learned"]
SPATIAL_MODES: tuple[str, ...] = ("mean", "max", "meanmax", "learned")  # learned: featviz.capture.gates
CHANNEL_MODES: tuple[str, ...] = ("se", "cbam", "dct", "learned")
ATTENTION_ORDERS: tuple[str, ...] = ("separate", "cbam")


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


def channel_attention(activations: torch.Tensor, mode: str = "se",
                      frequencies: Sequence[tuple[int, int]] | None = None) -> torch.Tensor:
    """(N, C, H, W) -> (N, C), unnormalised: the pooled statistic of each channel
    (``dct``: FcaNet's, at ``frequencies`` on its 7x7 grid, default its top 16)."""
    _check(activations)
    x = activations.float()
    if mode == "se":
        return x.mean(dim=(2, 3))
    if mode == "cbam":
        return x.mean(dim=(2, 3)) + x.amax(dim=(2, 3))
    if mode == "dct":
        return dct_channel_attention(x, frequencies or FCANET_TOP16)
    if mode == "learned":
        raise UsageError("learned channel attention is an SE block's gate, not a statistic of activations",
                         hint="use --channel learned (featviz.capture.gates finds the gates)")
    raise UsageError(f"unknown channel attention {mode!r}", hint="use one of " + ", ".join(CHANNEL_MODES))


def minmax(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Scale to [0, 1] over ``dims``; where max == min the result is 0 (a constant map is black).
    Only an exactly zero span is guarded: a span of 1e-14 still scales to [0, 1]."""
    low = x.amin(dim=dims, keepdim=True)
    span = x.amax(dim=dims, keepdim=True) - low
    safe = torch.where(span > 0, span, torch.ones_like(span))
    return ((x - low) / safe) * (span > 0)


def replace_nonfinite(activations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C, H, W) -> (a copy where every NaN and +-inf is its channel's mean over its finite
    values (0 when it has none), the count of such values per image: int64 (N,)).

    With that replacement, the SE squeeze (a channel's mean) and the max of CBAM are exactly
    their values over the finite activations, so one NaN no longer makes every channel weight
    NaN. ``activations`` is returned as it is (no copy) when every value is finite."""
    finite = torch.isfinite(activations)
    counts = (~finite).sum(dim=(1, 2, 3))
    if bool(finite.all()):
        return activations, counts
    kept = torch.where(finite, activations, torch.zeros_like(activations))
    seen = finite.sum(dim=(2, 3), keepdim=True)
    means = kept.sum(dim=(2, 3), keepdim=True) / seen.clamp_min(1)
    return torch.where(finite, activations, means.expand_as(activations)), counts


def channel_weights(activations: torch.Tensor, mode: str = "se",
                    frequencies: Sequence[tuple[int, int]] | None = None) -> torch.Tensor:
    """(N, C, H, W) -> w: (N, C) in [0, 1], the channel attention min-max normalised over C."""
    return weights_from_statistic(channel_attention(activations, mode, frequencies))


def weights_from_statistic(statistic: torch.Tensor) -> torch.Tensor:
    """z (N, C) -> w (N, C) in [0, 1], min-max over C. Where every z_c is equal (a one-channel
    layer) every channel counts fully, w = 1: all-zero weights would draw a black channel map."""
    weights = minmax(statistic, dims=(1,))
    uniform = statistic.amax(dim=1) == statistic.amin(dim=1)
    return torch.where(uniform[:, None], torch.ones_like(weights), weights)


def weighted_channel_map(activations: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """M = sum_c w_c A_c: (N, C, H, W) x (N, C) -> (N, H, W), unnormalised."""
    _check(activations)
    return (activations.float() * weights[:, :, None, None].to(activations.device)).sum(dim=1)


def normalized_map(maps: torch.Tensor) -> torch.Tensor:
    """(N, H, W) -> (N, H, W) in [0, 1], each map scaled on its own."""
    return minmax(maps, dims=(1, 2))


# --- FcaNet: multi-spectral channel attention ----------------------------------------------

#: FcaNet's "top16" frequency selection on its 7x7 reference grid (Qin et al. 2021, code
#: ``get_freq_indices('top16')``): (u, v) pairs, u along height, v along width, best first.
FCANET_TOP16: tuple[tuple[int, int], ...] = tuple(zip(
    (0, 0, 6, 0, 0, 1, 1, 4, 5, 1, 3, 0, 0, 0, 3, 2),
    (0, 1, 0, 5, 2, 0, 2, 0, 0, 6, 0, 4, 6, 3, 5, 2), strict=True,
))
FCANET_GRID = 7


def dct_basis_1d(frequency: int, length: int) -> list[float]:
    """Orthonormal DCT-II basis vector: cos(pi f (x + 1/2) / L) / sqrt(L), times sqrt(2) for f > 0
    (FcaNet's ``build_filter``)."""
    scale = 1.0 if frequency == 0 else math.sqrt(2.0)
    return [scale * math.cos(math.pi * frequency * (x + 0.5) / length) / math.sqrt(length) for x in range(length)]


def dct_basis(u: int, v: int, height: int, width: int) -> torch.Tensor:
    """float32 (H, W): the 2-D DCT basis image of frequency (u, v); orthonormal over (u, v)."""
    rows = torch.tensor(dct_basis_1d(u, height), dtype=torch.float64)
    cols = torch.tensor(dct_basis_1d(v, width), dtype=torch.float64)
    return torch.outer(rows, cols).float()


def scale_frequencies(frequencies: Sequence[tuple[int, int]], height: int, width: int) -> list[tuple[int, int]]:
    """Map (u, v) on FcaNet's 7x7 reference grid to a layer of H x W, as its code does
    (u * (H // 7)); below 7 pixels the step is 1 and frequencies are clipped to H-1, W-1."""
    step_h, step_w = max(1, height // FCANET_GRID), max(1, width // FCANET_GRID)
    return [(min(u * step_h, height - 1), min(v * step_w, width - 1)) for u, v in frequencies]


def dct_channel_attention(activations: torch.Tensor,
                          frequencies: Sequence[tuple[int, int]] = FCANET_TOP16) -> torch.Tensor:
    """FcaNet's multi-spectral statistic: (N, C, H, W) -> (N, C).

    The channels are split into len(frequencies) consecutive groups (FcaNet requires C to be a
    multiple; featviz spreads any remainder evenly: channel c is in group c * n // C), and
    channel c's statistic is its 2-D DCT coefficient at its group's frequency:
    y_c = sum_{h,w} A_c(h, w) B_{u_g, v_g}(h, w). With the single frequency (0, 0) this is
    sqrt(H W) times the SE squeeze.
    """
    _check(activations)
    n, c, h, w = activations.shape
    if not frequencies:
        raise UsageError("no DCT frequency was given", hint="e.g. --dct-frequencies 0,0;0,1")
    scaled = scale_frequencies(frequencies, h, w)
    bases = torch.stack([dct_basis(u, v, h, w) for u, v in scaled]).to(activations.device)
    group = torch.arange(c, device=activations.device) * len(scaled) // c
    return (activations.float() * bases[group][None]).sum(dim=(2, 3))


def parse_frequencies(text: str | None) -> tuple[tuple[int, int], ...] | None:
    """``"0,0;0,1;6,0"`` -> ((0, 0), (0, 1), (6, 0)), on FcaNet's 7x7 grid; ``top16`` -> the
    paper's set; None stays None."""
    if text is None or not text.strip():
        return None
    if text.strip().lower() == "top16":
        return FCANET_TOP16
    pairs = []
    for part in text.replace(" ", "").split(";"):
        if not part:
            continue
        try:
            u, v = (int(x) for x in part.split(","))
        except ValueError:
            raise UsageError(f"cannot read DCT frequency {part!r}",
                             hint="write frequencies as u,v pairs separated by ';', e.g. 0,0;0,1;1,0") from None
        if not (0 <= u < FCANET_GRID and 0 <= v < FCANET_GRID):
            raise UsageError(f"DCT frequency {part!r} is outside FcaNet's {FCANET_GRID}x{FCANET_GRID} grid",
                             hint=f"use u and v in 0..{FCANET_GRID - 1}; featviz scales them to the layer's size")
        pairs.append((u, v))
    return tuple(pairs)


# --- CBAM, in its order ---------------------------------------------------------------------

def cbam_refine(activations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CBAM's sequence without its learned layers: channel attention first, then the features it
    refines. Returns (w (N, C) in [0, 1] from average + max pooling, refined F' = w * F)."""
    weights = weights_from_statistic(channel_attention(activations, "cbam"))  # one channel: w = 1
    return weights, activations.float() * weights[:, :, None, None]
