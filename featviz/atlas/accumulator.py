"""The atlas accumulator: one pass over a collection, per channel of a layer its top-N images
and its dataset statistics, in memory that does not grow with the number of images.

Per layer a :class:`ChannelTable` holds, for every channel, the N best (score, key, y, x) so far
(score: the channel's maximum over the map, or its spatial mean, ``by``; y, x: where the maximum
is) and running statistics: the sum of per-image spatial means, the maximum, and in how many
images the channel was positive anywhere. A batch is folded in with :meth:`ChannelTable.update`;
memory is the N entries per channel plus the batch in flight.

**Exact merging.** Shards are folded separately and combined with :func:`merge`; the result is
the same, bit for bit, as one pass over everything, because every step is order-independent:
the top-N order is (score descending, input key ascending), so ties are broken the same way
whatever order images arrive in; the maximum and the counts are exact; and the sum of means is
kept as an exact integer (each float64 is an integer multiple of 2**-1127, see :func:`_exact`),
so addition is associative. The state serialises to JSON (:meth:`Atlas.to_json`) with floats
written by ``repr`` (they read back identical).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np
import torch

from featviz.atlas.schema import BY, STATE_VERSION, validate_state
from featviz.errors import UsageError

_FRACTION_BITS = 1127  # 1074 (float64's smallest subnormal exponent) + 53 mantissa bits


def _exact(values: np.ndarray) -> np.ndarray:
    """float64 array -> object array of Python ints, each value * 2**1127 exactly."""
    finite = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=np.finfo(np.float64).max,
                           neginf=np.finfo(np.float64).min)
    mantissa, exponent = np.frexp(finite)  # finite = mantissa * 2**exponent, 0.5 <= |mantissa| < 1
    integers = (mantissa * 2.0 ** 53).astype(np.int64).astype(object)  # exact: 53 bits
    shifts = (exponent.astype(np.int64) + 1074).astype(object)  # >= 0 for every float64
    exact: np.ndarray = integers << shifts
    return exact


@dataclass
class ChannelTable:
    """Top-N lists and statistics of every channel of one layer.

    ``scores``: float64 (C, N), -inf where a slot is still empty; ``keys``: object (C, N), input
    keys or None; ``ys``, ``xs``: int64 (C, N), the position of the maximum on the layer's map.
    ``mean_sum``: object (C,), the exact sum of per-image spatial means times 2**1127;
    ``maximum``: float64 (C,), -inf before any image; ``positive``: int64 (C,), images in which
    the channel's maximum was > 0; ``images``: images folded in.
    """

    channels: int
    top: int
    scores: np.ndarray = field(init=False)
    keys: np.ndarray = field(init=False)
    ys: np.ndarray = field(init=False)
    xs: np.ndarray = field(init=False)
    mean_sum: np.ndarray = field(init=False)
    maximum: np.ndarray = field(init=False)
    positive: np.ndarray = field(init=False)
    images: int = 0

    def __post_init__(self) -> None:
        shape = (self.channels, self.top)
        self.scores = np.full(shape, -np.inf)
        self.keys = np.full(shape, None, dtype=object)
        self.ys = np.zeros(shape, dtype=np.int64)
        self.xs = np.zeros(shape, dtype=np.int64)
        self.mean_sum = np.array([0] * self.channels, dtype=object)
        self.maximum = np.full(self.channels, -np.inf)
        self.positive = np.zeros(self.channels, dtype=np.int64)

    def update(self, keys: Sequence[str], activations: torch.Tensor, by: str) -> None:
        """Fold in a batch. ``activations``: float (B, C, H, W) of the images named by ``keys``."""
        batch, channels, _, width = activations.shape
        if channels != self.channels:
            raise UsageError(f"expected {self.channels} channels, got {channels}")
        flat = activations.detach().float().flatten(2)  # (B, C, H*W)
        peak, where = flat.max(dim=2)
        means = flat.double().mean(dim=2).cpu().numpy()  # (B, C) float64
        peak_np = peak.double().cpu().numpy()
        where_np = where.cpu().numpy()
        self.images += batch
        self.maximum = np.maximum(self.maximum, peak_np.max(axis=0))
        self.positive += (peak_np > 0).sum(axis=0)
        self.mean_sum = self.mean_sum + _exact(means).sum(axis=0)
        scores = (peak_np if by == "max" else means).T  # (C, B)
        new_keys = np.empty((channels, batch), dtype=object)
        for i, key in enumerate(keys):
            new_keys[:, i] = key
        self._keep_best(np.nan_to_num(scores, nan=-np.inf), new_keys, (where_np // width).T, (where_np % width).T)

    def _keep_best(self, scores: np.ndarray, keys: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> None:
        """Merge candidates (C, K) into the lists: order (score desc, key asc), keep N."""
        all_scores = np.concatenate([self.scores, scores], axis=1)
        all_keys = np.concatenate([self.keys, keys], axis=1)
        names = sorted({k for k in all_keys.flat if k is not None})
        rank_of = {name: i for i, name in enumerate(names)}
        ranks = np.vectorize(lambda k: rank_of.get(k, len(names)), otypes=[np.int64])(all_keys)
        order = np.lexsort((ranks, -all_scores), axis=1)[:, : self.top]
        self.scores = np.take_along_axis(all_scores, order, axis=1)
        self.keys = np.take_along_axis(all_keys, order, axis=1)
        self.ys = np.take_along_axis(np.concatenate([self.ys, ys], axis=1), order, axis=1)
        self.xs = np.take_along_axis(np.concatenate([self.xs, xs], axis=1), order, axis=1)

    def absorb(self, other: ChannelTable) -> None:
        """Fold another table (of a disjoint set of images) into this one."""
        self.images += other.images
        self.maximum = np.maximum(self.maximum, other.maximum)
        self.positive = self.positive + other.positive
        self.mean_sum = self.mean_sum + other.mean_sum
        self._keep_best(other.scores, other.keys, other.ys, other.xs)

    # Results ------------------------------------------------------------------------------
    def entries(self, channel: int) -> list[tuple[float, str, int, int]]:
        """The kept (score, key, y, x) of ``channel``, best first (fewer than N if fewer images)."""
        return [(float(s), str(k), int(y), int(x))
                for s, k, y, x in zip(self.scores[channel], self.keys[channel], self.ys[channel], self.xs[channel],
                                      strict=True)
                if k is not None]

    def statistics(self) -> dict[str, Any]:
        """Per-channel dataset statistics: mean activation (the mean over images of the spatial
        mean), maximum, fraction of images where the channel is positive somewhere, and the dead
        channels (never positive on the collection)."""
        count = max(1, self.images)
        scale = 2 ** _FRACTION_BITS * count
        return {
            "mean": [float(Fraction(int(v), scale)) if self.images else None for v in self.mean_sum],
            "max": [float(v) if self.images else None for v in self.maximum],
            "positive_fraction": [int(v) / count if self.images else None for v in self.positive],
            "dead": [int(c) for c in np.flatnonzero(self.positive == 0)] if self.images else [],
        }

    def referenced_keys(self) -> set[str]:
        return {k for k in self.keys.flat if k is not None}

    def to_json(self) -> dict[str, Any]:
        return {
            "channels": self.channels, "top": self.top, "images": self.images,
            "lists": [[[float(s), str(k), int(y), int(x)] for s, k, y, x in zip(*row, strict=True) if k is not None]
                      for row in zip(self.scores, self.keys, self.ys, self.xs, strict=True)],
            "mean_sum": [format(int(v), "x") for v in self.mean_sum],
            "max": [None if v == -np.inf else float(v) for v in self.maximum],
            "positive": [int(v) for v in self.positive],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ChannelTable:
        table = cls(int(data["channels"]), int(data["top"]))
        table.images = int(data["images"])
        for c, row in enumerate(data["lists"]):
            for slot, (score, key, y, x) in enumerate(row):
                table.scores[c, slot], table.keys[c, slot] = float(score), str(key)
                table.ys[c, slot], table.xs[c, slot] = int(y), int(x)
        table.mean_sum = np.array([int(v, 16) for v in data["mean_sum"]], dtype=object)
        table.maximum = np.array([-np.inf if v is None else float(v) for v in data["max"]])
        table.positive = np.array(data["positive"], dtype=np.int64)
        return table


@dataclass
class Atlas:
    """The whole partial state of a run: its settings, one table per layer, what is known of
    each kept image (input path, photo size, input size), progress and failures.

    ``settings``: what must match for two states to be merged or resumed (model, weights and
    their digest, layers, top, by, preprocessing, the digest of the whole input list);
    ``shard``: (I, N) of the slice this state covers; ``done``: images of the slice processed,
    in input order (resume starts after them); ``complete``: the slice is finished.
    """

    settings: dict[str, Any]
    tables: dict[str, ChannelTable]
    shard: tuple[int, int] = (1, 1)
    images: dict[str, dict[str, Any]] = field(default_factory=dict)
    done: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    complete: bool = False

    @property
    def top(self) -> int:
        return int(self.settings["top"])

    @property
    def by(self) -> str:
        return str(self.settings["by"])

    def update(self, layer: str, keys: Sequence[str], activations: torch.Tensor) -> None:
        self.tables[layer].update(keys, activations, self.by)

    def note_image(self, key: str, record: dict[str, Any]) -> None:
        """What the outputs need of an image (input path, photo and input sizes); forgotten
        again once no list keeps it (:meth:`forget_unkept`)."""
        self.images[key] = record

    def note_failure(self, message: str) -> None:
        self.failed += 1
        if len(self.errors) < 1000:
            self.errors.append(message)

    def forget_unkept(self) -> None:
        """Drop image records no top list refers to: memory stays at N per channel."""
        kept = set().union(*(t.referenced_keys() for t in self.tables.values()))
        self.images = {k: v for k, v in self.images.items() if k in kept}

    def to_json(self) -> dict[str, Any]:
        self.forget_unkept()
        return {"featviz_atlas_state": STATE_VERSION, "settings": self.settings, "shard": list(self.shard),
                "done": self.done, "failed": self.failed, "errors": self.errors, "complete": self.complete,
                "images": {k: self.images[k] for k in sorted(self.images)},
                "layers": {path: table.to_json() for path, table in self.tables.items()}}

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str = "the state") -> Atlas:
        """The atlas a state describes; the whole state is checked first (featviz.atlas.schema):
        an edited or damaged file is one :class:`UsageError` naming ``source`` and the field."""
        validate_state(data, source, full_settings=False)
        return cls(settings=data["settings"], shard=(int(data["shard"][0]), int(data["shard"][1])),
                   tables={p: ChannelTable.from_json(t) for p, t in data["layers"].items()},
                   images=dict(data["images"]), done=int(data["done"]), failed=int(data["failed"]),
                   errors=list(data["errors"]), complete=bool(data["complete"]))


def new_atlas(settings: dict[str, Any], channels: dict[str, int], shard: tuple[int, int] = (1, 1)) -> Atlas:
    """An empty atlas: ``channels`` gives each layer path's channel count."""
    if settings.get("by") not in BY:
        raise UsageError(f"--by must be one of {', '.join(BY)}, got {settings.get('by')!r}")
    top = int(settings["top"])
    if top < 1:
        raise UsageError(f"--top must be at least 1, got {top}")
    return Atlas(settings=settings, tables={p: ChannelTable(c, top) for p, c in channels.items()}, shard=shard)


def settings_difference(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    """The first setting in which two states differ, as ``name: A vs B``; None if none."""
    for name in sorted(set(a) | set(b)):
        if a.get(name) != b.get(name):
            return f"{name}: {a.get(name)!r} vs {b.get(name)!r}"
    return None


def merge(states: Sequence[Atlas], sources: Sequence[str] | None = None) -> Atlas:
    """Combine the states of all N shards of one collection into the state one run would have.

    Refused (naming the difference) when the shards were made with different settings, are not
    exactly the shards 1..N of one split, or are unfinished."""
    names = list(sources or [f"state {i + 1}" for i in range(len(states))])
    if not states:
        raise UsageError("--merge needs at least one shard folder")
    first = states[0]
    for state, name in zip(states[1:], names[1:], strict=True):
        difference = settings_difference(first.settings, state.settings)
        if difference:
            raise UsageError(f"cannot merge {names[0]} and {name}: they differ in {difference}",
                             hint="merge only shards of one `featviz atlas` command that differ in --shard alone")
        for path, table in state.tables.items():
            if table.channels != first.tables[path].channels:
                raise UsageError(f"cannot merge {names[0]} and {name}: layer {path} has {first.tables[path].channels} "
                                 f"channels in one and {table.channels} in the other",
                                 hint="merge only shards of one `featviz atlas` command that differ in --shard alone")
    counts = {state.shard[1] for state in states}
    if len(counts) != 1:
        raise UsageError(f"cannot merge shards of different splits: {sorted(counts)}")
    count = counts.pop()
    seen: dict[int, str] = {}
    for state, name in zip(states, names, strict=True):
        if state.shard[0] in seen:
            raise UsageError(f"shard {state.shard[0]}/{count} is given twice: {seen[state.shard[0]]} and {name}",
                             hint="give each shard's folder once")
        seen[state.shard[0]] = name
        if not state.complete:
            raise UsageError(f"{name} (shard {state.shard[0]}/{count}) is unfinished",
                             hint="run its command again with --resume to finish it")
    missing = sorted(set(range(1, count + 1)) - set(seen))
    if missing:
        raise UsageError(f"shards {', '.join(f'{i}/{count}' for i in missing)} are missing",
                         hint="give the folder of every shard")
    merged = new_atlas(first.settings, {p: t.channels for p, t in first.tables.items()}, shard=(1, 1))
    for state in sorted(states, key=lambda s: s.shard[0]):
        for path, table in state.tables.items():
            merged.tables[path].absorb(table)
        merged.images.update(state.images)
        merged.done += state.done
        merged.failed += state.failed
        merged.errors.extend(state.errors[: max(0, 1000 - len(merged.errors))])
    merged.complete = True
    merged.forget_unkept()
    return merged
