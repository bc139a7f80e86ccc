"""How much a run will write per photo, known before the first photo is read.

``--layer all`` on VGG-16 writes 10,106 files (377 MB) for one photo: one PNG per channel of
each of its 31 feature layers (9,920) plus six files per layer. The layers' channel counts are
known from the blank forward pass that checks the layers, so the count can be given, and the
user warned, before anything is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from featviz.output.options import RenderOptions

#: Above this many files per photo the CLI warns and says how to narrow the run. The default
#: layer of AlexNet writes 70; ``--layer all`` on AlexNet about 2,900, on VGG-16 10,106.
WARN_FILES_PER_IMAGE = 2000

#: Bytes per pixel of a channel tile once PNG-encoded, counted twice (its own file and its
#: place in the grid): 377 MB over VGG-16's 9,920 channels at 256x256 (issue 14's run) is
#: 0.29 bytes per pixel each. A rough guide: smooth deep layers compress better than early ones.
BYTES_PER_TILE_PIXEL = 0.29

# Per layer, besides the channel PNGs: grid, two overlays, channel_weights.png and .csv, summary.
FILES_PER_LAYER = 6


@dataclass(frozen=True)
class OutputEstimate:
    """Files and (roughly) bytes that one photo's results will take."""

    layers: int
    channel_files: int
    files: int
    bytes: int

    @property
    def too_many(self) -> bool:
        return self.files > WARN_FILES_PER_IMAGE


def drawn_count(channels: int, options: RenderOptions) -> int:
    """How many channel PNGs a layer of ``channels`` channels gets (``--channels``, ``--top-k``)."""
    if options.channels is not None:
        return len(options.channels)
    if options.top_k is not None:
        return min(options.top_k, channels)
    return channels


def estimate_output(channels_per_layer: Sequence[int], options: RenderOptions, se_layers: int = 0,
                    heads_per_layer: Sequence[int] = ()) -> OutputEstimate:
    """Files per photo for layers with these channel counts, exactly as :func:`featviz.output.result.result_files`
    lists them (plus the summary), and bytes estimated from :data:`BYTES_PER_TILE_PIXEL`.
    ``se_layers``: how many of the layers draw ``se_reweight.png`` (``--channel learned``).
    ``heads_per_layer``: with ``--heads``, each block's head count (heads/*.png, the mean, the
    masks with ``--heads-threshold``, attention_heads.npy with ``--save-raw``). ``--vit-stats``,
    ``--artifacts`` and ``--pca-tokens`` add their files (:mod:`featviz.output.vitfiles`)."""
    drawn = [drawn_count(c, options) for c in channels_per_layer]
    in_grid = [d if options.max_channels is None else min(d, options.max_channels) for d in drawn]
    extra = (1 if options.stn else 0) + (2 if options.save_raw else 0)
    files = sum(drawn) + len(drawn) * (FILES_PER_LAYER + extra) + se_layers
    # --vit-stats and --artifacts: a JSON and a picture each in the photo's folder; --pca-tokens: pca.png per layer
    files += 2 * options.vit_stats + 2 * (options.artifacts is not None) + len(drawn) * options.pca_tokens
    for heads in heads_per_layer if options.heads else ():
        files += (heads + 1) * (2 if options.heads_threshold is not None else 1) + (1 if options.save_raw else 0)
    tile_bytes = options.size * options.size * BYTES_PER_TILE_PIXEL
    return OutputEstimate(layers=len(drawn), channel_files=sum(drawn), files=files,
                          bytes=round(tile_bytes * (sum(drawn) + sum(in_grid))))
