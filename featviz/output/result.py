"""What one photo gave at one layer, and the options that drew it.

:class:`RenderOptions` is everything a user chooses about the pictures and numbers (checked once,
before any photo); :class:`LayerResult` holds one photo's activations and attention at one layer
and draws its pictures on demand (render) and writes them when asked (the list of files is
:mod:`featviz.output.resultfiles`). Both are made by
:class:`featviz.output.pipeline.Visualizer`.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from featviz.capture.stn import draw_sampling_grid
from featviz.errors import LayerError, UsageError
from featviz.inputs.names import name_fields
from featviz.maps.attention import normalized_map
from featviz.output.heads import heads_record, mean_picture
from featviz.output.notebook import grid_png, result_html, short_repr
from featviz.output.options import RenderOptions
from featviz.output.render import (
    NONFINITE_COLOUR,
    OverlayBase,
    bar_chart,
    channel_tiles,
    colormap_lut,
    grid_image,
    grid_pixels,
    heat_overlay,
    is_gray,
    percentile_bounds,
    side_by_side_grids,
)
from featviz.output.resultfiles import Producer, result_files, write_result
from featviz.output.vitfiles import facts_record

if TYPE_CHECKING:
    from featviz.capture.layers import LayerRef
    from featviz.capture.tokens import TokenLayout
    from featviz.maps.explain import CamMap
    from featviz.maps.tokenrun import PhotoTokenFacts
    from featviz.models.preprocess import CropBox
    from featviz.output.vitfiles import PcaColours

__all__ = ["LayerResult", "Producer", "RenderOptions", "result_files", "write_result"]


@dataclass
class LayerResult:
    """One photo seen through one layer.

    ``activations``: float32 (C, H, W) as captured, on the model's device.
    ``spatial``: float32 (H, W) in [0, 1]; ``channel_weights``: float32 (C,) in [0, 1];
    ``channel_map``: float32 (H, W) in [0, 1], the map sum_c w_c A_c.
    """

    key: str
    image_path: Path | None
    layer: LayerRef
    photo: Image.Image
    box: CropBox
    input_size: tuple[int, int]
    activations: torch.Tensor
    spatial_raw: torch.Tensor
    channel_raw: torch.Tensor
    channel_weights: torch.Tensor
    channel_map_raw: torch.Tensor
    options: RenderOptions
    model_name: str
    weights: str
    before: torch.Tensor | None = None
    stn_theta: torch.Tensor | None = None
    image_values: torch.Tensor | None = None  # --normalize image: every layer's values, flattened
    extra: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] | None = None  # featviz.output.settings.settings_record: what made it
    nonfinite_mask: torch.Tensor | None = None  # bool (C, H, W): where the model gave NaN or +-inf
    # learned gates for --save-raw, e.g. gate_3d (C, H, W)
    raw_gates: dict[str, torch.Tensor] = field(default_factory=dict)
    cams: list[CamMap] = field(default_factory=list)  # --cam: class activation maps (featviz.maps.explain)
    heads: torch.Tensor | None = None  # --heads: float32 (heads, rows, cols), the block's class-token attention
    heads_layout: TokenLayout | None = None  # --heads: the token layout the maps were read with
    token_facts: PhotoTokenFacts | None = None  # --vit-stats/--artifacts: every block (first layer's result only)
    pca: PcaColours | None = None  # --pca-tokens: this layer's patch tokens in the run's PCA colours

    @property
    def num_channels(self) -> int:
        return int(self.activations.shape[0])

    @cached_property
    def spatial(self) -> torch.Tensor:
        if self.options.spatial == "learned":  # the gate itself: its values are the picture's meaning
            return self.spatial_raw.float().clamp(0, 1)
        return normalized_map(self.spatial_raw[None])[0]

    @cached_property
    def channel_map(self) -> torch.Tensor:
        return normalized_map(self.channel_map_raw[None])[0]

    @cached_property
    def ranking(self) -> list[int]:
        """Channels by descending weight (ties by channel number)."""
        weights = self.channel_weights.cpu().tolist()
        return sorted(range(len(weights)), key=lambda c: (-weights[c], c))

    @cached_property
    def drawn_channels(self) -> list[int]:
        """The channels that get a PNG: ``--channels``, else ``--top-k`` by weight, else all."""
        count = self.num_channels
        if self.options.channels is not None:
            bad = [c for c in self.options.channels if c >= count]
            if bad:
                raise LayerError(
                    f"channel {bad[0]} is out of range: layer {self.layer.path} has channels 0..{count - 1}",
                    hint="check --channels",
                )
            return list(self.options.channels)
        if self.options.top_k is not None:
            return self.ranking[: self.options.top_k]
        return list(range(count))

    @cached_property
    def grid_channels(self) -> list[int]:
        """The drawn channels in grid order (``--sort-by``), at most ``--max-channels``."""
        chosen = list(self.drawn_channels)
        if self.options.sort_by == "weight" or self.options.channel == "learned":
            rank = {c: i for i, c in enumerate(self.ranking)}
            chosen.sort(key=rank.__getitem__)
        else:  # index order, also for --top-k (which picks channels in weight order)
            chosen.sort()
        if self.options.max_channels is not None:
            chosen = chosen[: self.options.max_channels]
        return chosen

    @cached_property
    def tile_bounds(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The grey scale of the tiles: None (each channel min-max on its own), or (low, high),
        per channel (C,) with ``clip_percentile``, or one pair for the layer or the image."""
        scope, percentile = self.options.normalize, self.options.clip_percentile
        acts = self.activations.float()
        if scope == "channel":
            return None if percentile is None else percentile_bounds(acts.flatten(1), percentile)
        values = acts.flatten() if scope == "layer" or self.image_values is None else self.image_values
        if percentile is None:
            return values.amin(), values.amax()
        return percentile_bounds(values, percentile)

    @cached_property
    def tiles(self) -> np.ndarray:
        """uint8 (K, size, size): the drawn channels, upsampled and scaled, on the CPU."""
        return channel_tiles(self.activations, self.options.size, self.drawn_channels, self.tile_bounds)

    def tile(self, channel: int) -> np.ndarray:
        tile: np.ndarray = self.tiles[self.drawn_channels.index(channel)]
        return tile

    def channel_image(self, channel: int) -> Image.Image:
        """One channel as an 8-bit grey PIL image, ``size`` pixels square."""
        return Image.fromarray(self.tile(channel))

    def grid(self) -> Image.Image:
        labels = [str(c) for c in self.grid_channels] if self.options.labels else None
        picture = grid_image(self._grid_tiles(), cmap=self.options.cmap, labels=labels)
        if self._marks_nonfinite():
            picture = Image.fromarray(self._mark_nonfinite(np.array(picture)))
        return picture

    def grid_pixels(self) -> np.ndarray:
        """The grid as a uint8 array (what :meth:`grid` shows): the exporter encodes this, which
        spares a copy of the largest picture through PIL."""
        if self.options.labels:
            return np.asarray(self.grid())
        pixels = grid_pixels(self._grid_tiles(), cmap=self.options.cmap)
        return self._mark_nonfinite(pixels) if self._marks_nonfinite() else pixels

    def _marks_nonfinite(self) -> bool:
        return self.nonfinite_mask is not None and bool(self.nonfinite_mask.any()) and not is_gray(self.options.cmap)

    def _mark_nonfinite(self, pixels: np.ndarray) -> np.ndarray:
        """A colour grid (H, W, 3) uint8 with NONFINITE_COLOUR (magenta) on the pixels nearest to
        a NaN or infinite activation (nearest-neighbour upsampling of the mask, same layout)."""
        if self.nonfinite_mask is None:
            return pixels
        size = self.options.size
        chosen = self.nonfinite_mask[list(self.grid_channels)].float()[None]
        mask = (F.interpolate(chosen, size=(size, size), mode="nearest")[0] > 0).cpu().numpy()
        where = grid_pixels(mask.astype(np.uint8) * 255, cmap="gray", pad_value=0) > 0
        pixels[where] = NONFINITE_COLOUR
        return pixels

    def _grid_tiles(self) -> np.ndarray:
        if self.grid_channels == self.drawn_channels:
            return self.tiles  # the usual case: no copy of every tile
        position = {c: i for i, c in enumerate(self.drawn_channels)}
        return self.tiles[[position[c] for c in self.grid_channels]]

    def spatial_overlay(self, prepared: OverlayBase | None = None) -> Image.Image:
        """``prepared``: the photo's :class:`~featviz.output.render.OverlayBase`, shared by the
        overlays of one result (the same pixels, less work)."""
        return heat_overlay(self.photo, self.spatial, self.box, cmap=self.options.heat_cmap,
                            alpha=self.options.alpha, prepared=prepared)

    def channel_overlay(self, prepared: OverlayBase | None = None) -> Image.Image:
        return heat_overlay(self.photo, self.channel_map, self.box, cmap=self.options.heat_cmap,
                            alpha=self.options.alpha, prepared=prepared)

    def se_reweight(self) -> Image.Image:
        """Learned SE attention only: the grid of the block's input (left) beside its output
        (right), channels in gate order, one grey scale shared by both halves, so channels the
        gate turned down are visibly darker on the right."""
        if self.before is None:
            raise UsageError("se_reweight needs --channel learned at a squeeze-and-excitation block")
        order = self.grid_channels
        return side_by_side_grids(self.before[order], self.activations[order], self.options.size)

    def branch_csv(self) -> str:
        """``branch_weights.csv``: channel, then the weight of each branch (a row sums to 1)."""
        weights = self.raw_gates["branch_weights"].float().cpu()  # (R, C)
        header = "channel," + ",".join(f"branch_{r}" for r in range(weights.shape[0]))
        rows = [f"{c}," + ",".join(f"{float(v):.6g}" for v in weights[:, c]) for c in range(weights.shape[1])]
        return "\n".join([header, *rows]) + "\n"

    def branch_picture(self, cell: int = 8) -> Image.Image:
        """``branch_weights.png``: one row per branch, one column per channel, each cell the
        branch's weight on the heat colour map (0 .. 1)."""
        weights = self.raw_gates["branch_weights"].float().clamp(0, 1).cpu().numpy()  # (R, C)
        codes = np.rint(weights * 255).astype(np.uint8)
        picture = colormap_lut(self.options.heat_cmap)[codes]
        return Image.fromarray(picture.repeat(cell * 2, axis=0).repeat(cell, axis=1))

    def sweep_panel(self) -> Image.Image:
        """The spatial-attention overlay (with ``cam``: the first class map) cut to the part of
        the photo the network saw."""
        box = self.box
        crop = (max(0, math.floor(box.left)), max(0, math.floor(box.top)),
                min(self.photo.width, math.ceil(box.right)), min(self.photo.height, math.ceil(box.bottom)))
        overlay = (self.cam_overlay(self.cams[0]) if self.cams else self.heads_overlay() if self.heads is not None
                   else self.spatial_overlay())
        return overlay.crop(crop)

    def heads_overlay(self) -> Image.Image:
        """With ``heads``: the heads' mean attention over the photo (``heads/mean.png``)."""
        if self.heads is None or self.heads_layout is None:
            raise UsageError("heads_overlay needs heads=True and a vision transformer block")
        return mean_picture(self.photo, self.heads, self.box, self.input_size, self.heads_layout,
                            upsample=self.options.heads_upsample, cmap=self.options.heat_cmap, alpha=self.options.alpha)

    def stn_grid(self) -> Image.Image:
        """With ``stn``: the photo with the sampling grid of the model's first ``affine_grid``."""
        if self.stn_theta is None:
            raise UsageError("stn_grid needs stn=True and a model that calls affine_grid")
        return draw_sampling_grid(self.photo, self.stn_theta, self.box)

    def cam_overlay(self, cam: CamMap, prepared: OverlayBase | None = None) -> Image.Image:
        """``cam/<method>-<target>.png``: the class map, upsampled from the layer's H x W and
        min-max scaled, as a heat overlay on the original photo (like spatial_attention.png)."""
        return heat_overlay(self.photo, normalized_map(cam.map[None].float())[0], self.box,
                            cmap=self.options.heat_cmap, alpha=self.options.alpha, prepared=prepared)

    def cam_records(self) -> list[dict[str, Any]]:
        """The ``cams`` list of summary.json: one record per method and target (method, target
        class index, its rank for top/topN, label, logit, softmax probability, channel weights w
        for the channel-weighting methods, the PNG); with ``--cam-score``, the map's deletion and
        insertion curves and areas as its ``scores`` field."""
        records = []
        for cam in self.cams:
            records.append({
                "method": cam.method, "target": cam.target, "rank": cam.rank,
                "label": cam.label,
                "logit": cam.logit, "probability": cam.probability,
                "weights": None if cam.weights is None else cam.weights.float().cpu().tolist(),
                "file": f"cam/{cam.name}.png",
                **({"scores": cam.scores.as_json()} if cam.scores is not None else {}),
            })
        return records

    def channel_table(self) -> list[dict[str, Any]]:
        """One row per channel: channel, mean, max, weight, rank (1 = largest weight)."""
        acts = self.activations.float()
        means = acts.mean(dim=(1, 2)).cpu().tolist()
        maxes = acts.amax(dim=(1, 2)).cpu().tolist()
        weights = self.channel_weights.cpu().tolist()
        rank = {c: i + 1 for i, c in enumerate(self.ranking)}
        return [{"channel": c, "mean": means[c], "max": maxes[c], "weight": weights[c], "rank": rank[c]}
                for c in range(len(weights))]

    def channel_csv(self) -> str:
        """``channel_weights.csv``: the channel table as CSV."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=["channel", "mean", "max", "weight", "rank"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.channel_table())
        return buffer.getvalue()

    def channel_chart(self) -> Image.Image:
        """``channel_weights.png``: a bar per channel weight, the top channels labelled."""
        title = f"channel weights w ({self.options.channel_mode}) at {self.layer.path}"
        return bar_chart(self.channel_weights.cpu().tolist(), self.ranking[: self.options.summary_top], title)

    def summary(self, files: Sequence[str] = ()) -> dict[str, Any]:
        """Everything a script needs to know about this result, JSON-ready."""
        acts = self.activations.float()
        means = acts.mean(dim=(1, 2)).cpu().tolist()
        maxes = acts.amax(dim=(1, 2)).cpu().tolist()
        weights = self.channel_weights.cpu().tolist()
        return {
            **(name_fields(self.image_path, "image") if self.image_path is not None else {"image": None}),
            "image_size": list(self.photo.size),
            "model": self.model_name,
            "weights": self.weights,
            "layer": {"path": self.layer.path, "index": self.layer.index, "type": self.layer.type_name,
                      # a picked call of a module that runs several times (layer1.0.relu@2)
                      **({"call": self.layer.call, "module": self.layer.module_path}
                         if self.layer.call is not None else {})},
            "input_size": list(self.input_size),
            "crop_box": self.box.as_list(),
            "activation_shape": list(self.activations.shape),
            "spatial_attention": self.options.spatial_mode,
            "channel_attention": self.options.channel_mode,
            "attention_order": self.options.attention,
            "channel_mean": means,
            "channel_max": maxes,
            "channel_weights": weights,
            "top_channels": self.ranking[: self.options.summary_top],
            "normalize": self.options.normalize,
            "clip_percentile": self.options.clip_percentile,
            "drawn_channels": self.drawn_channels,
            **self.extra,
            **({"options": self.settings} if self.settings is not None else {}),
            **({"cams": self.cam_records()} if self.cams else {}),
            **({"heads": heads_record(self.heads, self.layer.path, self.options.heads_threshold,
                                      self.options.heads_upsample)} if self.heads is not None else {}),
            **({"pca": self.pca.record} if self.pca is not None else {}),
            **({"token_facts": facts_record(self.token_facts)} if self.token_facts is not None else {}),
            "files": list(files),
        }

    def save(self, directory: str | os.PathLike[str]) -> list[Path]:
        """Write this result's files into ``directory`` (see :func:`write_result`)."""
        return write_result(self, Path(directory))

    # Jupyter (featviz.output.notebook): the grid as a picture, or grid and overlays as small thumbnails
    def _repr_png_(self) -> bytes:
        return grid_png(self)

    def _repr_html_(self) -> str:
        return result_html(self)

    def __repr__(self) -> str:
        return short_repr(self)
