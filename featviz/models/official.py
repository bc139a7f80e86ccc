"""torchvision's own weight files, recognised offline by their names and hashes.

Someone who copies ``alexnet-owt-7be5be79.pth`` onto a machine without internet should get what
``--weights IMAGENET1K_V1`` gives online: ImageNet class names and the weights' own
preprocessing, not ``class 386`` and the generic pipeline. torchvision names each file after the
last path component of its weights' URL, and, as ``torch.hub`` requires, the hex digits after
the last ``-`` are the start of the file's SHA-256 (``7be5be79``). Both are read from the
weights enums shipped with torchvision; nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torchvision
from torchvision.models import get_model_weights, list_models

# torch.hub.HASH_REGEX: the hash prefix in a checkpoint's file name
HASH_IN_NAME = re.compile(r"-([a-f0-9]*)\.")
MIN_HASH_DIGITS = 6  # shorter hex runs ("-bed.") are words, not hashes


@dataclass(frozen=True)
class OfficialWeights:
    """A weights enum member (``AlexNet_Weights.IMAGENET1K_V1``) and the model it belongs to."""

    model: str
    weights: Any  # torchvision.models.WeightsEnum member

    @property
    def label(self) -> str:
        return f"{type(self.weights).__name__}.{self.weights.name}"


def file_name(weights: Any) -> str:
    """The file torchvision downloads for ``weights`` (and looks for in its cache)."""
    url: str = weights.url
    return os.path.basename(url)


def hash_prefix(weights: Any) -> str | None:
    """The SHA-256 prefix in the official file name (``7be5be79``), or None if it has none."""
    match = HASH_IN_NAME.search(file_name(weights))
    return match.group(1) if match and len(match.group(1)) >= MIN_HASH_DIGITS else None


def _candidates(first: str) -> list[str]:
    """The model named first, then every other torchvision classification model."""
    names = sorted(list_models(module=torchvision.models))
    return [first, *[n for n in names if n != first]] if first in names else names


def recognise(path: str | os.PathLike[str], model: str) -> OfficialWeights | None:
    """The torchvision weights whose official file ``path`` is, judged by its name: the exact
    file name, or a name that keeps the official hash prefix (``my-copy-7be5be79.pth``).
    ``model``'s own weights are tried first. The contents are not read here (see
    :func:`sha256_matches`)."""
    name = Path(path).name
    hashes = {m.group(1) for m in HASH_IN_NAME.finditer(name) if len(m.group(1)) >= MIN_HASH_DIGITS}
    by_hash = None
    for candidate in _candidates(model):
        for weights in get_model_weights(candidate):
            if file_name(weights) == name:
                return OfficialWeights(candidate, weights)
            if by_hash is None and hash_prefix(weights) in hashes:
                by_hash = OfficialWeights(candidate, weights)
    return by_hash


def sha256_matches(path: str | os.PathLike[str], weights: Any) -> bool | None:
    """Whether the file's SHA-256 starts with the official prefix (None: the name has none).
    Reads the whole file: about a second per 500 MB, paid once, next to loading it."""
    expected = hash_prefix(weights)
    if expected is None:
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest().startswith(expected)
