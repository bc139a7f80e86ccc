"""What a user chooses about the pictures and numbers: :class:`RenderOptions`, checked once.

Everything between captured activations and pictures that a user can set (tile size, colormaps,
channel selection, attention definitions, class attention) lives in one frozen dataclass, checked
by :meth:`RenderOptions.validate` before any photo is read, so that a bad value is a usage error
(exit 2) and not a failure halfway through a batch. ``--skip-existing`` records these fields.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from featviz.errors import UsageError
from featviz.maps.attention import ATTENTION_ORDERS, CHANNEL_MODES, SPATIAL_MODES
from featviz.maps.transformer import FUSIONS
from featviz.output.render import colormap_lut

__all__ = ["NORMALIZE_SCOPES", "SORT_ORDERS", "RenderOptions", "parse_channels"]

SORT_ORDERS = ("index", "weight")
NORMALIZE_SCOPES = ("channel", "layer", "image")
HEADS_UPSAMPLING = ("nearest", "bilinear")


def parse_channels(text: str | None) -> tuple[int, ...] | None:
    """``"0-15,32"`` -> (0, 1, ..., 15, 32); None stays None."""
    if text is None or not str(text).strip():
        return None
    chosen: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        low, dash, high = part.partition("-")
        try:
            if dash:
                start, stop = int(low), int(high)
                if stop < start:
                    raise ValueError
                chosen.extend(range(start, stop + 1))
            else:
                chosen.append(int(part))
        except ValueError:
            raise UsageError(f"cannot read channel selection {part!r}",
                             hint="write channels like 0-15,32") from None
    return tuple(dict.fromkeys(chosen))


@dataclass(frozen=True)
class RenderOptions:
    """What to draw and how: everything between captured activations and pictures."""

    size: int = 256
    cmap: str = "gray"
    heat_cmap: str = "jet"
    alpha: float = 0.5
    labels: bool = False
    channels: tuple[int, ...] | None = None
    top_k: int | None = None
    max_channels: int | None = None
    sort_by: str = "index"
    spatial: str | None = None
    channel: str = "se"
    attention: str = "separate"
    dct_frequencies: tuple[tuple[int, int], ...] | None = None
    stn: bool = False
    normalize: str = "channel"
    clip_percentile: float | None = None
    predict: bool = False
    save_raw: bool = False
    png_level: int = 1
    summary_top: int = 10
    cam: tuple[str, ...] = ()
    target: tuple[str, ...] = ("top",)
    cam_batch: int = 32
    cam_score: bool = False
    cam_score_steps: int = 16
    heads: bool = False
    heads_threshold: float | None = None
    heads_upsample: str = "nearest"
    rollout_fusion: str = "mean"
    rollout_discard: float = 0.0
    rollout_start: int = 0
    vit_stats: bool = False  # per block and head: mean attention distance, entropy, prefix mass (per photo + run)
    artifacts: float | None = None  # k of the high-norm token test (median + k·MAD); None: no test
    pca_tokens: bool = False  # PCA of the layer's patch tokens to RGB, one basis over the run's photos
    pca_foreground: float | None = None  # DINOv2's foreground: first-component score above this

    @property
    def spatial_mode(self) -> str:
        """``--spatial``, defaulting to ``mean``, or to ``meanmax`` in CBAM order (CBAM pools both)."""
        if self.spatial is not None:
            return self.spatial
        return "meanmax" if self.attention == "cbam" else "mean"

    @property
    def channel_mode(self) -> str:
        """CBAM order uses CBAM's channel statistic (average + max pooling)."""
        return "cbam" if self.attention == "cbam" and self.channel == "se" else self.channel

    def validate(self) -> RenderOptions:
        """Raise :class:`UsageError` for values no image could satisfy."""
        if not 1 <= self.size <= 4096:
            raise UsageError(f"--size {self.size} is out of range", hint="use 1..4096 pixels")
        if self.normalize not in NORMALIZE_SCOPES:
            raise UsageError(f"unknown normalisation {self.normalize!r}", hint="use " + ", ".join(NORMALIZE_SCOPES))
        if self.clip_percentile is not None and not 50 < self.clip_percentile <= 100:
            raise UsageError(f"--clip-percentile {self.clip_percentile} is out of range",
                             hint="use a percentile above 50 and at most 100, e.g. 99.5")
        if self.sort_by not in SORT_ORDERS:
            raise UsageError(f"unknown sort order {self.sort_by!r}", hint="use index or weight")
        if self.attention not in ATTENTION_ORDERS:
            raise UsageError(f"unknown attention order {self.attention!r}", hint="use " + ", ".join(ATTENTION_ORDERS))
        if self.attention == "cbam" and self.channel not in ("se", "cbam"):
            raise UsageError("--attention cbam computes CBAM's own channel attention; it cannot use --channel "
                             f"{self.channel}",
                             hint="leave --channel out, or drop --attention cbam")
        if self.attention == "cbam" and self.spatial == "learned":
            raise UsageError("--attention cbam computes its own spatial attention; it cannot use --spatial learned",
                             hint="drop --attention cbam")
        if self.dct_frequencies is not None and self.channel != "dct":
            raise UsageError("--dct-frequencies needs --channel dct")
        if self.spatial is not None and self.spatial not in SPATIAL_MODES:
            raise UsageError(f"unknown spatial attention {self.spatial!r}", hint="use " + ", ".join(SPATIAL_MODES))
        if self.channel not in CHANNEL_MODES:
            raise UsageError(f"unknown channel attention {self.channel!r}", hint="use " + ", ".join(CHANNEL_MODES))
        for name, value, meaning in (("--top-k", self.top_k, "draw every channel"),
                                     ("--max-channels", self.max_channels, "put every drawn channel in the grid")):
            if value is not None and value < 1:
                raise UsageError(f"{name} must be at least 1, got {value}",
                                 hint=f"leave {name} out to {meaning}, or give a number of channels such as {name} 8")
        if not 0 <= self.png_level <= 9:
            raise UsageError(f"PNG compression level {self.png_level} is out of range", hint="use 0..9")
        if not 0.0 <= self.alpha <= 1.0:
            raise UsageError(f"--alpha {self.alpha} is out of range", hint="use 0..1")
        if self.channels is not None and any(c < 0 for c in self.channels):
            raise UsageError("channel numbers start at 0")
        colormap_lut(self.cmap)
        colormap_lut(self.heat_cmap)
        if self.cam_batch < 1:
            raise UsageError(f"--cam-batch must be at least 1, got {self.cam_batch}")
        if self.cam_score_steps < 1:
            raise UsageError(f"--cam-score-steps must be at least 1, got {self.cam_score_steps}")
        if self.cam_score and not self.cam:
            raise UsageError("--cam-score scores class activation maps, and no --cam method was given",
                             hint="add --cam METHOD[,METHOD…], e.g. --cam gradcam,scorecam --cam-score")
        self._validate_transformer()
        return self

    def _validate_transformer(self) -> None:
        """``--heads`` and the rollout settings: ranges and names, before the model is even built."""
        if self.heads_threshold is not None and not 0 < self.heads_threshold <= 1:
            raise UsageError(f"--heads-threshold {self.heads_threshold} is out of range",
                             hint="give the fraction of each head's mass the mask keeps, in (0, 1], e.g. 0.6 as DINO")
        if self.heads_threshold is not None and not self.heads:
            raise UsageError("--heads-threshold adds DINO's masks to the attention heads, and --heads was not given",
                             hint="add --heads")
        if self.heads_upsample not in HEADS_UPSAMPLING:
            raise UsageError(f"unknown --heads-upsample {self.heads_upsample!r}", hint="use nearest or bilinear")
        if self.rollout_fusion not in FUSIONS:
            raise UsageError(f"unknown --rollout-fusion {self.rollout_fusion!r}", hint="use " + ", ".join(FUSIONS))
        if not 0 <= self.rollout_discard < 1:
            raise UsageError(f"--rollout-discard {self.rollout_discard} is out of range",
                             hint="give the fraction of the lowest attention entries to drop, in [0, 1), e.g. 0.9")
        if self.rollout_start < 0:
            raise UsageError(f"--rollout-start must be a block number from 0, got {self.rollout_start}")
        self._validate_tokens()

    def _validate_tokens(self) -> None:
        """``--artifacts``, ``--pca-tokens`` and ``--pca-foreground``: values no photo could satisfy."""
        if self.artifacts is not None and not (math.isfinite(self.artifacts) and self.artifacts >= 0):
            raise UsageError(f"--artifacts {self.artifacts} is not a valid outlier factor",
                             hint="give k >= 0 (flag norms above median + k·1.4826·MAD), e.g. --artifacts 3")
        if self.pca_foreground is not None and not self.pca_tokens:
            raise UsageError("--pca-foreground masks the PCA colours, and --pca-tokens was not given",
                             hint="add --pca-tokens")
        if self.pca_foreground is not None and not math.isfinite(self.pca_foreground):
            raise UsageError(f"--pca-foreground {self.pca_foreground} is not a finite score",
                             hint="give a threshold on the first component's score, e.g. 0 as DINOv2")
