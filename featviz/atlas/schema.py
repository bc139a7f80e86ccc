"""The atlas state's schema (``atlas-state.json``), checked whole before a state is used.

A state comes back from disk for ``--resume`` and ``--merge``; it may have been edited or cut
short. Every field is checked against what featviz writes (types, ranges, lengths that must
agree, keys that must refer to recorded images) before anything is built from it, so an edited
file is one sentence naming the file and the field, never a traceback or a silently wrong atlas:
NaN, infinite or string scores, a negative count, an unknown key, a list longer than its layer
has channels or its ``top`` allows, a photo size featviz would never have decoded.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from typing import Any

from featviz.errors import UsageError
from featviz.inputs.images import DEFAULT_MAX_PIXELS

STATE_VERSION = 1
BY = ("max", "mean")
MAX_TOP = 1000  # --top's upper bound
MAX_CHANNELS = 1 << 20
MAX_SIDE = 1 << 20
MAX_ERRORS = 1000  # the state keeps at most this many error lines
_HEX = re.compile(r"-?[0-9a-f]+")
_TOP_KEYS = {"featviz_atlas_state", "settings", "shard", "done", "failed", "errors", "complete", "images", "layers"}
_TABLE_KEYS = {"channels", "top", "images", "lists", "mean_sum", "max", "positive"}
_IMAGE_KEYS = {"input", "input_b64", "photo", "input_size"}


class _Bad(Exception):
    """A field and what is wrong with it; :func:`validate_state` words the error."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(field, problem)
        self.field = field
        self.problem = problem


def validate_state(data: Any, source: str, full_settings: bool = True) -> None:
    """Raise :class:`UsageError` naming ``source`` (the file) and the first bad field of ``data``
    (a parsed atlas state); return None when the whole state is as featviz writes it.

    ``full_settings=False`` (an atlas built through the library, whose settings may hold only
    ``top`` and ``by``, and which may fold images without noting them): the other settings are
    checked only where present, and the lists' keys and image counts need not match ``images``
    and ``done``. Types, ranges and lengths are checked all the same."""
    if not isinstance(data, dict) or data.get("featviz_atlas_state") != STATE_VERSION:
        raise UsageError(f"{source} is not a featviz atlas state (version {STATE_VERSION})",
                         hint="give folders written by `featviz atlas --shard I/N`")
    try:
        _check(data, full_settings)
    except _Bad as bad:
        raise UsageError(f"{source} is not a valid atlas state: field {bad.field} {bad.problem}",
                         hint="the file was edited or damaged; run its `featviz atlas --shard I/N` command again "
                              "into a new --out") from None


def _check(data: dict[str, Any], full_settings: bool) -> None:
    _keys("(top level)", data, _TOP_KEYS, required=_TOP_KEYS)
    settings = _dict("settings", data["settings"])
    if full_settings:
        missing = sorted({"layers", "model_option", "weights_option", "weights_digest", "seed", "resize", "crop",
                          "input_count"} - set(settings))
        if missing:
            raise _Bad(f"settings.{missing[0]}", "is missing")
    top = _int("settings.top", settings.get("top"), 1, MAX_TOP)
    if settings.get("by") not in BY:
        raise _Bad("settings.by", f"must be one of {', '.join(BY)}")
    layers = settings.get("layers", list(_dict("layers", data["layers"])))
    if not isinstance(layers, list) or not layers or not all(isinstance(p, str) for p in layers):
        raise _Bad("settings.layers", "must be a non-empty list of layer paths")
    for name in ("model_option", "weights_option", "weights_digest"):
        if name in settings:
            _str(f"settings.{name}", settings[name])
    if "seed" in settings:
        _int("settings.seed", settings["seed"], -(1 << 63), (1 << 64) - 1)
    if settings.get("model_kwargs") is not None:
        _dict("settings.model_kwargs", settings["model_kwargs"])
    if settings.get("weights_file") is not None:
        _str("settings.weights_file", settings["weights_file"])
    if not isinstance(settings.get("trust_pickle", False), bool):
        raise _Bad("settings.trust_pickle", "must be true or false")
    for name in ("resize", "crop"):
        if settings.get(name) is not None:
            _int(f"settings.{name}", settings.get(name), 1, MAX_SIDE)
    count = _int("settings.input_count", settings.get("input_count", 1 << 62), 0, 1 << 62)
    shard = data["shard"]
    if not isinstance(shard, list) or len(shard) != 2:
        raise _Bad("shard", "must be [I, N]")
    total = _int("shard[1]", shard[1], 1, max(1, count))
    _int("shard[0]", shard[0], 1, total)
    done = _int("done", data["done"], 0, count)
    _int("failed", data["failed"], 0, done)
    errors = _list("errors", data["errors"], MAX_ERRORS)
    if not all(isinstance(e, str) for e in errors):
        raise _Bad("errors", "must hold text lines only")
    if not isinstance(data["complete"], bool):
        raise _Bad("complete", "must be true or false")
    images = _check_images(_dict("images", data["images"]))
    tables = _dict("layers", data["layers"])
    if set(tables) != set(layers):
        raise _Bad("layers", f"must hold exactly the layers of settings.layers ({', '.join(layers)})")
    for path, table in tables.items():
        _check_table(f"layers.{path}", table, top, done if full_settings else 1 << 62,
                     images if full_settings else None)


def _check_images(images: dict[str, Any]) -> set[str]:
    for key, record in images.items():
        where = f"images.{key}"
        _keys(where, _dict(where, record), _IMAGE_KEYS, required=_IMAGE_KEYS - {"input_b64"})
        _str(f"{where}.input", record["input"])
        if "input_b64" in record:
            try:
                base64.b64decode(_str(f"{where}.input_b64", record["input_b64"]), validate=True)
            except (binascii.Error, ValueError):
                raise _Bad(f"{where}.input_b64", "is not base64") from None
        for name in ("photo", "input_size"):
            size = record[name]
            if not isinstance(size, list) or len(size) != 2:
                raise _Bad(f"{where}.{name}", "must be two sizes in pixels")
            first, second = (_int(f"{where}.{name}", side, 1, MAX_SIDE) for side in size)
            if first * second > DEFAULT_MAX_PIXELS:
                raise _Bad(f"{where}.{name}", f"is {first}x{second} pixels, more than featviz ever decodes "
                                             f"({DEFAULT_MAX_PIXELS})")
    return set(images)


def _check_table(where: str, table: Any, top: int, done: int, images: set[str] | None) -> None:
    _keys(where, _dict(where, table), _TABLE_KEYS, required=_TABLE_KEYS)
    channels = _int(f"{where}.channels", table["channels"], 1, MAX_CHANNELS)
    if table["top"] != top or isinstance(table["top"], bool):
        raise _Bad(f"{where}.top", f"must equal settings.top ({top})")
    seen = _int(f"{where}.images", table["images"], 0, done)
    lists = _list(f"{where}.lists", table["lists"], channels, exact=True)
    sums = _list(f"{where}.mean_sum", table["mean_sum"], channels, exact=True)
    maxima = _list(f"{where}.max", table["max"], channels, exact=True)
    positives = _list(f"{where}.positive", table["positive"], channels, exact=True)
    for c in range(channels):
        peak = maxima[c]
        if peak is not None:
            peak = _float(f"{where}.max[{c}]", peak)
        _int(f"{where}.positive[{c}]", positives[c], 0, seen)
        if not isinstance(sums[c], str) or not _HEX.fullmatch(sums[c]):
            raise _Bad(f"{where}.mean_sum[{c}]", "must be a hexadecimal integer")
        entries = _list(f"{where}.lists[{c}]", lists[c], min(top, seen))
        for rank, entry in enumerate(entries):
            field = f"{where}.lists[{c}][{rank}]"
            if not isinstance(entry, list) or len(entry) != 4:
                raise _Bad(field, "must be [score, key, y, x]")
            score = _float(f"{field}[0]", entry[0])
            if peak is None or score > peak:
                raise _Bad(f"{field}[0]", f"is {score!r}, above the channel's maximum {where}.max[{c}]")
            if not isinstance(entry[1], str) or (images is not None and entry[1] not in images):
                raise _Bad(f"{field}[1]", "must be the key of a photo recorded in images")
            _int(f"{field}[2]", entry[2], 0, MAX_SIDE)
            _int(f"{field}[3]", entry[3], 0, MAX_SIDE)


def _keys(where: str, record: dict[str, Any], allowed: set[str], required: set[str]) -> None:
    unknown = sorted(set(record) - allowed)
    if unknown:
        name = f"{where}.{unknown[0]}" if where != "(top level)" else unknown[0]
        raise _Bad(name, "is not a field of an atlas state")
    missing = sorted(required - set(record))
    if missing:
        raise _Bad(f"{where}.{missing[0]}" if where != "(top level)" else missing[0], "is missing")


def _dict(field: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Bad(field, "must be a JSON object")
    return value


def _list(field: str, value: Any, most: int, exact: bool = False) -> list[Any]:
    if not isinstance(value, list):
        raise _Bad(field, "must be a list")
    if exact and len(value) != most:
        raise _Bad(field, f"has {len(value)} entries, not {most}")
    if len(value) > most:
        raise _Bad(field, f"has {len(value)} entries, more than {most}")
    return value


def _str(field: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _Bad(field, "must be text")
    return value


def _int(field: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Bad(field, f"must be a whole number, not {value!r}"[:120])
    if not low <= value <= high:
        raise _Bad(field, f"is {value}, outside {low}..{high}")
    return value


def _float(field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _Bad(field, f"must be a finite number, not {value!r}"[:120])
    return float(value)


__all__ = ["BY", "STATE_VERSION", "validate_state"]
