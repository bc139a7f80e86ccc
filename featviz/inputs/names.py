"""File names that are not valid UTF-8, kept faithfully and safely in JSON and folder names.

POSIX file names are bytes. Python hands a name that is not valid UTF-8 (``b"A\\xffbad.png"``,
common from zip archives and Windows shares) over as a ``str`` with each bad byte as a lone
surrogate (``"A\\udcffbad.png"``, PEP 383's ``surrogateescape``). Such a string cannot be encoded
as UTF-8, so it must never reach a JSON document, a manifest line or a folder name as it is.

Three forms, one job each:

* :func:`display_name`: for people and JSON text fields: each bad byte as ``\\xff`` (Python's
  ``backslashreplace``), so ``"A\\\\xffbad.png"`` in JSON. Readable and valid UTF-8, but not
  reversible on its own (a file could be called ``A\\xffbad.png`` literally).
* :func:`name_fields`: ``{"input": <display>, "input_b64": <base64 of the raw bytes>}``, the
  second field present only when the name is not valid UTF-8: the reversible record.
  :func:`path_from_fields` gives the original path back (what atlas ``--merge`` reopens).
* :func:`safe_component`: for a folder name under OUT: each bad byte as ``%FF``; featviz's key
  disambiguation (``~2``) keeps it distinct from a real file named ``A%FFbad.png``.
"""

from __future__ import annotations

import base64
import os
import re
from typing import Any

_SURROGATE = re.compile("[\ud800-\udfff]")


def has_surrogates(text: str) -> bool:
    """Whether ``text`` holds a lone surrogate (a byte that was not valid UTF-8, or worse)."""
    return _SURROGATE.search(text) is not None


def _raw_bytes(text: str) -> bytes:
    """The bytes ``text`` was decoded from (surrogateescape); ``\\ud800``-style surrogates that
    no decoding produced are escaped as ``\\ud800`` text instead."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace")


def display_name(path: str | os.PathLike[str]) -> str:
    """``path`` as valid UTF-8 text: every byte that is not UTF-8 written as ``\\xNN``."""
    text = os.fsdecode(os.fspath(path))
    if not has_surrogates(text):
        return text
    return _raw_bytes(text).decode("utf-8", "backslashreplace")


def name_fields(path: str | os.PathLike[str], field: str = "input") -> dict[str, str]:
    """``{field: display}``, plus ``{field}_b64`` (the raw bytes, base64) when the name is not
    valid UTF-8: JSON that is safe to write and from which the exact path can be recovered."""
    text = os.fsdecode(os.fspath(path))
    if not has_surrogates(text):
        return {field: text}
    return {field: display_name(text), f"{field}_b64": base64.b64encode(_raw_bytes(text)).decode("ascii")}


def path_from_fields(record: dict[str, Any], field: str = "input") -> str:
    """The path :func:`name_fields` recorded, as ``os.fsdecode`` gives it (bad bytes as surrogates)."""
    encoded = record.get(f"{field}_b64")
    if isinstance(encoded, str):
        return os.fsdecode(base64.b64decode(encoded, validate=True))
    return str(record[field])


def safe_component(part: str) -> str:
    """A folder-name piece with every byte that is not UTF-8 written ``%NN`` (valid text)."""
    if not has_surrogates(part):
        return part
    return _SURROGATE.sub(lambda m: f"%{ord(m.group()) - 0xDC00:02X}" if 0xDC80 <= ord(m.group()) <= 0xDCFF
                          else f"%u{ord(m.group()):04X}", part)


def json_safe(document: Any) -> Any:
    """``document`` with every string made valid UTF-8 (:func:`display_name`'s escaping).

    The safety net under every JSON writer: an error message or any other text that quotes a
    bad file name is shown escaped instead of stopping the run with ``UnicodeEncodeError``.
    The reversible ``*_b64`` fields are added where the names are recorded (:func:`name_fields`)."""
    if isinstance(document, str):
        return display_name(document) if has_surrogates(document) else document
    if isinstance(document, dict):
        return {json_safe(key): json_safe(value) for key, value in document.items()}
    if isinstance(document, list | tuple):
        return [json_safe(value) for value in document]
    return document


__all__ = ["display_name", "has_surrogates", "json_safe", "name_fields", "path_from_fields", "safe_component"]
