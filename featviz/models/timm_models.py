"""timm models: ``--model timm:NAME``, built by timm itself, with timm's own preprocessing.

timm (PyPI ``timm``) holds the CNNs whose attention is learned (SE-, ECA-, SK-ResNets, ResNeSt,
ResNets with CBAM, Gather-Excite or Global-Context blocks). This module is the only place that
imports it, and :mod:`featviz.models.build` calls it only for a ``timm:`` name, so featviz works
without the optional extra (``pip install "featviz[timm]"``).

Preprocessing follows the model's ``pretrained_cfg`` through ``timm.data.resolve_data_config``:
``create_transform`` would resize the shorter side to ``floor(size / crop_pct)`` and centre-crop
``size`` (``crop_mode`` "center"), or resize both sides to that length first ("squash"); featviz
runs the same steps in :class:`~featviz.models.preprocess.Preprocess`, which also knows where the crop
lies in the photo.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from featviz.errors import ModelError, UsageError, WeightsError
from featviz.models.preprocess import Preprocess

try:  # the optional extra
    import timm
    from timm.data.config import resolve_data_config
    from timm.data.imagenet_info import ImageNetInfo, infer_imagenet_subset
except ImportError:  # pragma: no cover - exercised in a subprocess without timm
    timm = None  # type: ignore[assignment]  # "is timm installed" is asked as `timm is None`

PREFIX = "timm:"
INSTALL_HINT = 'install the extra: pip install "featviz[timm]"'


@dataclass
class TimmModel:
    """A built timm model and what featviz needs to know about it."""

    module: nn.Module
    name: str  # as the user wrote it, with the ``timm:`` prefix
    weights: str  # "none (seed S)", "pretrained (TAG)", or the state-dict path to load next
    preprocess: Preprocess
    categories: list[str] | None
    load_file: str | None = None  # a state-dict file models.py still has to load


def is_timm_name(spec: str) -> bool:
    return spec.startswith(PREFIX)


def build(spec: str, weights: str, seed: int, pretrained: bool = True,
          kwargs: Mapping[str, Any] | None = None) -> TimmModel:
    """Build ``timm:NAME`` with ``kwargs`` passed to its constructor.

    ``weights``: ``none`` (random, torch seeded with ``seed``), ``pretrained``/``DEFAULT``
    (timm's own, from the Hugging Face cache; with ``pretrained=False`` the model is only built,
    as ``featviz layers`` needs), or a path to a state dict (returned in ``load_file``).
    """
    if timm is None:
        raise ModelError(f"{spec} needs timm, which is not installed", hint=INSTALL_HINT)
    name = spec[len(PREFIX):]
    _check_name(name)
    kind = _weights_kind(weights)
    load = kind == "pretrained" and pretrained
    module = _create(name, load, seed, dict(kwargs or {}))
    preprocess = preprocess_for(module)
    label = {"none": f"none (seed {seed})", "file": weights}.get(kind, _pretrained_label(module, load))
    return TimmModel(module, spec, label, preprocess, class_names(module),
                     load_file=weights if kind == "file" else None)


def _check_name(name: str) -> None:
    if name and timm.is_model(name):
        return
    names = timm.list_models()
    close = difflib.get_close_matches(name, names, n=4, cutoff=0.6)
    raise ModelError(
        f"unknown model timm:{name}: it is not one of timm's {len(names)} models",
        hint=("did you mean " + ", ".join("timm:" + n for n in close) + "?") if close else
        "run `python -c \"import timm; print(timm.list_models('*resnet*'))\"` for the names",
    )


def _weights_kind(weights: str) -> str:
    text = weights.strip()
    if text.lower() in {"none", "random", ""}:
        return "none"
    if text.lower() in {"pretrained", "default"}:
        return "pretrained"
    if os.path.exists(text) or any(s in text for s in ("/", os.sep, ".pt", ".pth", ".bin", ".safetensors")):
        return "file"
    raise WeightsError(f"timm models take --weights none, pretrained or a file, not {weights!r}",
                       hint="a pretrained tag goes into the name: --model timm:resnet50.a1_in1k")


def _create(name: str, pretrained: bool, seed: int, kwargs: dict[str, Any]) -> nn.Module:
    """``timm.create_model``; the caller's RNG state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            return timm.create_model(name, pretrained=pretrained, **kwargs)
        except TypeError as exc:  # the constructor refused a keyword argument
            raise UsageError(f"timm:{name} rejects --model-kwargs: {exc}",
                             hint="pass only arguments of the model's constructor, as JSON") from exc
        except OSError as exc:  # huggingface_hub's "not in the cache" errors are OSErrors
            if not pretrained:
                raise
            raise _missing_weights(name, exc) from exc


def _missing_weights(name: str, exc: BaseException) -> WeightsError:
    from huggingface_hub.constants import HF_HUB_CACHE

    cfg = timm.models.get_pretrained_cfg(name) if hasattr(timm.models, "get_pretrained_cfg") else None
    hub_id = getattr(cfg, "hf_hub_id", None) or name
    reason = _shorten(str(exc).strip().splitlines()[0], 160) if str(exc).strip() else type(exc).__name__
    return WeightsError(
        f"timm's pretrained weights for {name} are not in the Hugging Face cache and could not be "
        f"downloaded ({reason}); timm looks for {hub_id} in {HF_HUB_CACHE} (set HF_HOME to move it)",
        hint="download them once while online, pass --weights PATH to a state dict, or --weights none",
    )


def _shorten(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters at a word boundary, with "…" when cut (an
    offline error's first line runs long; cut mid-word it read as a typo)."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    return (cut[:space] if space > limit // 2 else cut).rstrip(" ,;:") + "\u2026"


def _pretrained_label(module: nn.Module, loaded: bool) -> str:
    cfg = getattr(module, "pretrained_cfg", None) or {}
    tag = cfg.get("tag") or cfg.get("hf_hub_id") or "default"
    return f"pretrained ({tag})" if loaded else f"pretrained ({tag}), not loaded"


def preprocess_for(module: nn.Module) -> Preprocess:
    """timm's evaluation transform as a :class:`Preprocess`: the same resize, crop and
    normalisation as ``create_transform(**resolve_data_config({}, model=module))``."""
    config = resolve_data_config({}, model=module)
    _, height, width = config["input_size"]
    mode = config.get("crop_mode") or "center"
    if height != width or mode not in ("center", "squash"):
        raise ModelError(
            f"featviz cannot reproduce this model's preprocessing exactly (input {height}x{width}, crop_mode {mode})",
            hint="featviz supports square inputs with crop_mode center or squash",
        )
    crop_pct = config.get("crop_pct") or 0.875
    return Preprocess(resize=math.floor(height / crop_pct), crop=height,
                      mean=tuple(float(v) for v in config["mean"]), std=tuple(float(v) for v in config["std"]),
                      interpolation=str(config.get("interpolation") or "bilinear"), squash=mode == "squash")


def class_names(module: nn.Module) -> list[str] | None:
    """ImageNet class descriptions where the model's classifier is an ImageNet one, else None."""
    subset = infer_imagenet_subset(module)
    classes = getattr(module, "num_classes", None)
    if not subset:
        return None
    info = ImageNetInfo(subset)
    if classes != info.num_classes():
        return None
    return list(info.label_descriptions())
