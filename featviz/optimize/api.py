"""The one call behind ``featviz optimize``: build the model, check every option against it
(before any optimisation), optimise, write.

>>> from featviz.optimize.api import optimize_layer
>>> result, files = optimize_layer("alexnet", "none", "features.3", "0-63", out="opt", steps=128)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from featviz.capture.layers import LayerRef, resolve_layers
from featviz.errors import UsageError
from featviz.maps.targets import parse_targets
from featviz.models.build import LoadedModel, load_model
from featviz.optimize.engine import (
    Optimized,
    OptimizeSettings,
    check_settings,
    check_units,
    optimize,
)
from featviz.optimize.export import write_optimized
from featviz.optimize.maco import MACO_LR
from featviz.output.options import parse_channels


@dataclass
class Prepared:
    """A model built and every option checked against it, ready for :func:`optimize`."""

    loaded: LoadedModel
    layer: LayerRef | None
    units: list[int]
    settings: OptimizeSettings


def prepare(model: str, weights: str, layer: str | None, channels: str | Sequence[int] | None, *, seed: int = 0,
            device: str = "cpu", **options: Any) -> Prepared:
    """Build the model and check the options against it (one forward pass of a grey image);
    every usage error is raised here, before any optimisation. See :func:`optimize_layer`."""
    size = options.pop("size", None)
    if options.get("lr") is None:  # each parameterisation's own default
        options["lr"] = MACO_LR if options.get("param") == "maco" else OptimizeSettings.lr
    if size is not None and size < 8:
        check_settings(OptimizeSettings(size=size))
    settings = OptimizeSettings(**options)
    check_settings(replace(settings, size=max(8, size or 8)))
    loaded = load_model(model, weights, seed=seed, device=device)
    pre = loaded.preprocess
    settings = replace(settings, size=size or pre.crop or pre.resize or 224)
    if settings.objective == "class":
        targets = parse_targets([channels] if isinstance(channels, str) else [str(c) for c in channels or []],
                                loaded.categories)
        units = [t.index for t in targets if t.index is not None]
        if len(units) != len(targets):
            raise UsageError("the class objective needs fixed classes, not top/topN",
                             hint="give class indices or names")
    else:
        units = list((parse_channels(channels) if isinstance(channels, str) or channels is None else channels) or [])
    ref = resolve_layers(loaded.module, [layer], loaded.name)[0] if layer is not None else None
    check_units(loaded.module, ref, units, settings, loaded.device)
    return Prepared(loaded, ref, units, settings)


def run_prepared(prepared: Prepared, on_step: Callable[[int, float], None] | None = None) -> Optimized:
    loaded = prepared.loaded
    return optimize(loaded.module, prepared.layer, prepared.units, prepared.settings, loaded.preprocess.mean,
                    loaded.preprocess.std, loaded.device, on_step)


def optimize_layer(model: str, weights: str, layer: str | None, channels: str | Sequence[int] | None,
                   out: Path | str | None = None, *, seed: int = 0, device: str = "cpu",
                   on_step: Callable[[int, float], None] | None = None, **options: Any) -> tuple[Optimized, list[Path]]:
    """Optimise images for ``channels`` (``"0-63"`` or a list) of ``layer`` of ``model``, or for
    classes (``objective="class"``, ``channels`` then is ``--target``: indices or class names).
    ``options``: the fields of :class:`OptimizeSettings`; ``size`` None means the model's input
    size, ``lr`` None (or absent) the parameterisation's default (0.05; 1.0 for ``maco``).
    Writes under ``out`` when given. Returns the result and the files written."""
    prepared = prepare(model, weights, layer, channels, seed=seed, device=device, **options)
    result = run_prepared(prepared, on_step)
    files: list[Path] = []
    if out is not None:
        files = write_optimized(Path(out), layer_name(prepared), result, prepared.settings, extra_settings(prepared))
    return result, files


def layer_name(prepared: Prepared) -> str:
    """The folder the pictures go to: the layer's path, or ``output`` for class logits."""
    return prepared.layer.path if prepared.layer is not None and prepared.settings.objective != "class" else "output"


def extra_settings(prepared: Prepared) -> dict[str, Any]:
    pre = prepared.loaded.preprocess
    return {"model": prepared.loaded.name, "weights": prepared.loaded.weights, "mean": list(pre.mean),
            "std": list(pre.std), "layer": layer_name(prepared)}
