"""The Microscope view: each channel's optimised image beside its top dataset patches.

:func:`add_to_atlas` optimises the channels of an atlas layer (:mod:`featviz.optimize`), writes
the pictures into ``ATLAS/<layer>/optimized/``, records per channel in ``atlas.json``
(``"optimized"``) the file, the activation reached and

    r = activation(optimised image) / activation(best dataset photo),

both measured the way the atlas ranks (``by``: the channel's spatial max or mean) on images
normalised by the atlas's own preprocessing, and rewrites the page. r is null where the best
photo's score is not positive.

:func:`prepare_atlas_layers` is ``featviz atlas ... --optimize``'s check: the optimisation of
every atlas layer's channels, built on the atlas's own model and checked before any photo is read.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from featviz.atlas.export import ATLAS_JSON, STATE, weights_digest
from featviz.atlas.page import write_page
from featviz.capture.hooks import capture
from featviz.capture.layers import LayerRef
from featviz.errors import UsageError
from featviz.models.build import LoadedModel
from featviz.optimize.api import Prepared, extra_settings, run_prepared
from featviz.optimize.engine import OptimizeSettings, check_settings, check_units
from featviz.optimize.export import file_name, write_optimized
from featviz.output.layout import atomic_write, json_bytes, layer_dir
from featviz.output.options import parse_channels


def _read(path: Path) -> dict[str, Any]:
    try:
        document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return document
    except FileNotFoundError:
        raise UsageError(f"{path} does not exist",
                         hint="give a folder written by `featviz atlas` for this layer") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path} cannot be read ({exc})", hint="rerun `featviz atlas`") from None


def check_atlas(atlas: Path, prepared: Prepared) -> dict[str, Any]:
    """The layer's atlas.json, after checking (before any optimisation) that the atlas was made
    with these weights and has this layer and these channels."""
    if prepared.layer is None or prepared.settings.objective == "class":
        raise UsageError("--atlas adds channel images to an atlas layer",
                         hint="use --objective channel or neuron with --layer")
    state = _read(Path(atlas) / STATE)
    if state.get("settings", {}).get("weights_digest") != weights_digest(prepared.loaded.module):
        raise UsageError(f"the atlas in {atlas} was made with other weights than {prepared.loaded.name} "
                         f"({prepared.loaded.weights})", hint="give the --model and --weights the atlas was made with")
    document = _read(layer_dir(Path(atlas), "", prepared.layer.path) / ATLAS_JSON)
    if max(prepared.units) >= len(document["channels"]):
        raise UsageError(f"channel {max(prepared.units)} is not in the atlas of {prepared.layer.path}",
                         hint=f"it has channels 0..{len(document['channels']) - 1}")
    return document


def check_optimize_options(channels: str | None, *, size: int | None, **options: Any) -> None:
    """The checks of :func:`prepare_atlas_layers` that need no model (steps, size, lr, the channel
    syntax), for a caller to run before it writes or reads anything."""
    check_settings(OptimizeSettings(**options, size=224 if size is None else size))
    parse_channels(channels)


def prepare_atlas_layers(loaded: LoadedModel, layers: Sequence[LayerRef], channels: str | None, *,
                         size: int | None, crop: int | None, seed: int = 0, **options: Any) -> list[Prepared]:
    """One :class:`Prepared` optimisation per atlas layer, every option checked (one forward pass
    of a grey image per layer) before the atlas reads any photo.

    ``channels``: ``"0-15,32"`` for every layer, or None for all of each layer's channels.
    ``size``: the image side; None means the atlas's crop (``crop``), else the model's input
    size, else 224. ``options``: the other fields of :class:`OptimizeSettings` (steps, lr, ...).
    Raises :class:`~featviz.errors.UsageError` (or ``LayerError`` for a layer without channel maps).
    """
    pre = loaded.preprocess
    settings = OptimizeSettings(**options, seed=seed, size=size or crop or pre.crop or pre.resize or 224)
    check_settings(settings)
    chosen = parse_channels(channels)
    prepared = []
    for ref in layers:
        count = check_units(loaded.module, ref, list(chosen or [0]), settings, loaded.device)
        prepared.append(Prepared(loaded, ref, list(chosen or range(count)), settings))
    return prepared


def add_to_atlas(atlas: Path, prepared: Prepared, on_step: Callable[[int, float], None] | None = None) -> list[Path]:
    """Optimise ``prepared``'s channels, write them into the atlas, record r, rewrite the page."""
    atlas = Path(atlas)
    document = check_atlas(atlas, prepared)
    if prepared.layer is None:  # check_atlas refused layer-less objectives already
        raise UsageError("--atlas needs --layer", hint="name the atlas's layer with --layer")
    result = run_prepared(prepared, on_step)
    folder = layer_dir(atlas, "", prepared.layer.path)
    files = write_optimized(atlas, prepared.layer.path, result, prepared.settings, extra_settings(prepared))
    state = _read(atlas / STATE)["settings"]
    mean = torch_tensor(state["mean"], result.images)
    std = torch_tensor(state["std"], result.images)
    acts = capture(prepared.loaded.module, [prepared.layer],
                   ((result.images - mean) / std).to(prepared.loaded.device))[prepared.layer.path].float().cpu()
    flat = acts.flatten(2)
    measured = flat.amax(dim=2) if document["by"] == "max" else flat.mean(dim=2)  # (images, C)
    optimized = dict(document.get("optimized", {}))
    for i, unit in enumerate(result.units):
        if i % prepared.settings.diversity:
            continue  # the first of K diverse images stands for the channel
        entries = document["channels"][unit]
        best = float(entries[0]["score"]) if entries else 0.0
        value = float(measured[i, unit])
        optimized[str(unit)] = {"file": f"optimized/{file_name(unit, 0, prepared.settings.diversity)}",
                                "activation": value, "r": value / best if best > 0 else None}
    document["optimized"] = optimized
    atomic_write(folder / ATLAS_JSON, json_bytes(document))
    documents = []
    for path in sorted(atlas.glob(f"*/{ATLAS_JSON}")):
        documents.append((path.parent.relative_to(atlas).as_posix(), _read(path)))
    files.append(write_page(atlas, documents))
    return files


def torch_tensor(values: list[float], like: Any) -> Any:
    """(1, 3, 1, 1) float tensor of ``values`` on ``like``'s device."""
    return like.new_tensor(values).view(1, -1, 1, 1)
