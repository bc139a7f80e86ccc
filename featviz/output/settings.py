"""What made a result: the settings recorded in its ``summary.json`` and compared on resume.

``export --skip-existing`` may skip a photo only if its pictures are the ones this run would
draw: same model, weights, layer, preprocessing and drawing options. Each summary therefore
records them under ``"options"`` (as JSON reads them back: tuples become lists), and a folder
whose record differs from this run's is redone, with the changed options named.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from featviz.models.preprocess import Preprocess
    from featviz.output.options import RenderOptions

# Names a user knows, for settings that are not simply ``--<field>``.
_NAMES = {
    "model": "--model", "weights": "--weights", "layer": "--layer", "layers": "the layers of --normalize image",
    "preprocess.resize": "--resize", "preprocess.crop": "--crop", "preprocess.mean": "the weights' mean",
    "preprocess.std": "the weights' std", "preprocess.interpolation": "the weights' interpolation",
    "drawing.summary_top": "summary_top",
    "pca_basis": "the --pca-tokens basis (fitted over another set of photos)",
}


def settings_record(model: str, weights: str, layer: str, preprocess: Preprocess, options: RenderOptions,
                    layers: Sequence[str] = ()) -> dict[str, Any]:
    """The JSON-ready record of everything that decides a result's files. ``layers`` (every
    requested layer) matters only for ``--normalize image``, whose grey scale spans them all."""
    record: dict[str, Any] = {"model": model, "weights": weights, "layer": layer,
                              "preprocess": asdict(preprocess), "drawing": asdict(options)}
    if options.normalize == "image":
        record["layers"] = list(layers)
    plain: dict[str, Any] = json.loads(json.dumps(record))  # tuples become lists, as in the manifest
    return plain


def _flatten(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _name(key: str) -> str:
    if key in _NAMES:
        return _NAMES[key]
    return "--" + key.split(".")[-1].replace("_", "-")


def changed_settings(recorded: Any, wanted: Mapping[str, Any]) -> str | None:
    """None when ``recorded`` (a summary's ``"options"``) equals ``wanted``; else why the result
    must be redone, e.g. ``--cmap changed (gray -> viridis)``."""
    if recorded == wanted:
        return None
    if not isinstance(recorded, Mapping):
        return "its summary records no options (written by an older featviz)"
    old, new = _flatten(recorded), _flatten(wanted)
    changed = [key for key in sorted(old.keys() | new.keys()) if old.get(key) != new.get(key)]
    if len(changed) == 1:
        key = changed[0]
        return f"{_name(key)} changed ({_show(old.get(key))} -> {_show(new.get(key))})"
    return ", ".join(dict.fromkeys(_name(key) for key in changed)) + " changed"


def _show(value: Any) -> str:
    return "none" if value is None else json.dumps(value) if not isinstance(value, str) else value
