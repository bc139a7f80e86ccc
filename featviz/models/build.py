"""What to run: a model built from a name, a TorchScript file or a factory, with its weights and
the preprocessing that goes with them.

torchvision already knows every classification architecture, its weights, their download
location and their exact preprocessing (``weights.transforms()``); this module only chooses
among them and turns their failures into :class:`~featviz.errors.FeatvizError` messages a user
can act on.
"""

from __future__ import annotations

import difflib
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torchvision
from torchvision.models import get_model, get_model_weights
from torchvision.models import get_model as _get_model

from featviz.errors import ModelError, UsageError, WeightsError
from featviz.models import timm_models
from featviz.models.checkpoints import (
    current_folder_importable,
    load_state_dict,
    load_state_dict_file,
    read_state_dict_file,
)
from featviz.models.downloads import download_guarded
from featviz.models.official import (
    OfficialWeights,
    file_name,
    hash_prefix,
    recognise,
    sha256_matches,
)
from featviz.models.preprocess import IMAGENET_MEAN, IMAGENET_STD, CropBox, Preprocess
from featviz.models.userfiles import build_from_factory, load_pickled_model, seeded_build

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "CropBox", "LoadedModel", "Preprocess", "load_model", "resolve_device"]


DEFAULT_MODEL = "alexnet"
DEFAULT_WEIGHTS = "DEFAULT"
TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".jit", ".torchscript")


@dataclass
class LoadedModel:
    """A model ready to run, with what featviz needs to know about it."""

    module: torch.nn.Module
    name: str
    weights: str
    preprocess: Preprocess
    device: torch.device
    categories: list[str] | None = None
    source: str = "torchvision"  # "torchvision", "torchscript" or "factory"
    extra: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # warnings for the user (the CLI prints them)


def classification_model_names() -> list[str]:
    """Every torchvision classification model name (``alexnet``, ``resnet50``, ...)."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA, then MPS, then the CPU; an unavailable device is a usage error."""
    name = device.strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(name)
    except RuntimeError as exc:
        raise UsageError(f"unknown device {device!r}", hint="use auto, cpu, cuda, cuda:N or mps") from exc
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("CUDA was asked for but is not available", hint="use --device cpu or auto")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise UsageError(
                f"there is no {resolved}: this machine has {torch.cuda.device_count()} CUDA device(s)",
                hint=f"use cuda:0 .. cuda:{torch.cuda.device_count() - 1}",
            )
    if resolved.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise UsageError("MPS was asked for but is not available", hint="use --device cpu or auto")
    return resolved


def load_model(
    model: str = DEFAULT_MODEL,
    weights: str | os.PathLike[str] | None = DEFAULT_WEIGHTS,
    *,
    seed: int = 0,
    device: str = "cpu",
    preprocess: Preprocess | None = None,
    pretrained: bool = True,
    weights_file: str | os.PathLike[str] | None = None,
    trust_pickle: bool = False,
    model_kwargs: Mapping[str, Any] | None = None,
) -> LoadedModel:
    """Build the model named by ``model`` and load ``weights`` into it.

    ``model`` is a torchvision classification name, a TorchScript file, or ``package.module:factory``.
    ``weights`` is ``DEFAULT``, a torchvision weights name (``IMAGENET1K_V1``), ``none`` (random,
    seeded by ``seed``) or a path to a state dict. For a user's own model ``DEFAULT`` means "as
    built". ``preprocess`` replaces the pipeline that goes with the weights. ``timm:NAME`` builds a
    timm model (:mod:`featviz.models.timm_models`); ``model_kwargs`` go to its constructor (or to
    torchvision's ``get_model``).

    torchvision's own weight files work offline: a path whose file name is the official one
    (``alexnet-owt-7be5be79.pth``) gets those weights' class names and preprocessing, and
    ``weights_file`` loads the tensors of the torchvision weights named by ``weights`` from a
    file of any name instead of downloading them (:mod:`featviz.models.official`).

    Files are read as tensors only. ``trust_pickle`` also unpickles Python objects (a whole model
    saved with ``torch.save(model)`` as ``model``, a checkpoint with non-tensor entries as
    ``weights``): only for files you trust, since unpickling runs code from the file.
    """
    target = resolve_device(device)
    weights_text = "none" if weights is None else os.fspath(weights)
    file_text = None if weights_file is None else os.fspath(weights_file)
    if file_text is not None and (model.startswith("timm:") or _looks_like_factory(model) or _looks_like_file(model)):
        raise UsageError("--weights-file names the file of torchvision weights; this model is not a torchvision one",
                         hint=f"pass its state dict with --weights {file_text}")
    if model.startswith("timm:"):
        loaded = _load_timm(model, weights_text, seed, pretrained, model_kwargs, trust_pickle)
    elif model_kwargs and (_looks_like_factory(model) or _looks_like_file(model)):
        raise UsageError("--model-kwargs applies to timm and torchvision models only",
                         hint="build your own model with its arguments inside the factory")
    elif _looks_like_factory(model):
        loaded = _load_factory(model, weights_text, seed, trust_pickle)
    elif _looks_like_file(model):
        loaded = _load_torchscript(model, weights_text, seed, trust_pickle)
    elif file_text is not None:
        loaded = _load_named_file(model, weights_text, file_text, seed, trust_pickle)
    else:
        loaded = _load_torchvision(model, weights_text, seed, pretrained, trust_pickle, model_kwargs or {})
    if preprocess is not None:
        loaded.preprocess = preprocess
    loaded.module.to(target)
    loaded.device = target
    return loaded


def _looks_like_factory(spec: str) -> bool:
    module, sep, attr = spec.rpartition(":") if spec.rpartition(":")[0].endswith(".py") else spec.partition(":")
    if module.endswith(".py") and attr:  # a factory in a Python file: examples/cbam_shapes.py:build
        return True
    return bool(sep) and bool(module) and bool(attr) and not Path(spec).exists() and "/" not in module


def _looks_like_file(spec: str) -> bool:
    return Path(spec).exists() or spec.endswith(TORCHSCRIPT_SUFFIXES) or os.sep in spec or "/" in spec


def _is_none(weights: str) -> bool:
    return weights.strip().lower() in {"none", "random", ""}


def _is_default(weights: str) -> bool:
    return weights.strip().upper() == "DEFAULT"


def _load_timm(spec: str, weights: str, seed: int, pretrained: bool,
               kwargs: Mapping[str, Any] | None, trust_pickle: bool = False) -> LoadedModel:
    built = timm_models.build(spec, weights, seed, pretrained, kwargs)
    if built.load_file is not None:
        load_state_dict_file(built.module, built.load_file, trust_pickle)
    return LoadedModel(built.module, spec, built.weights, built.preprocess, _cpu(), built.categories,
                       source="timm")


def _load_torchvision(name: str, weights: str, seed: int, pretrained: bool = True,
                      trust_pickle: bool = False, kwargs: Mapping[str, Any] | None = None) -> LoadedModel:
    def get_model(model_name: str, **options: Any) -> Any:
        try:  # the user's --model-kwargs win over featviz's own build arguments
            return _get_model(model_name, **(options | dict(kwargs or {})))
        except TypeError as exc:
            raise UsageError(f"{model_name} rejects --model-kwargs: {exc}",
                             hint="pass only arguments of the model's constructor, as JSON") from exc

    name = _torchvision_name(name)
    if _is_none(weights):
        module = seeded_build(lambda: get_model(name, weights=None, **fresh_build_kwargs(name)), seed)
        # Class names still come from the default weights' metadata (no download needed).
        default = get_model_weights(name).DEFAULT
        categories = list(default.meta.get("categories") or []) or None
        return LoadedModel(module, name, f"none (seed {seed})", Preprocess(), _cpu(), categories)
    if _is_default(weights) or not _looks_like_path(weights):
        enum = get_model_weights(name)
        chosen = _pick_weights(name, enum, weights)
        if pretrained:
            module = download_guarded(lambda: get_model(name, weights=chosen), chosen)
        else:  # the architecture the weights would be loaded into (ViT at the weights' size)
            module = seeded_build(lambda: get_model(name, weights=None, **pretrained_build_kwargs(name, chosen)), seed)
            _drop_aux_heads(name, module, keep=name == "inception_v3")
        categories = list(chosen.meta.get("categories") or []) or None
        return LoadedModel(
            module, name, f"{type(chosen).__name__}.{chosen.name}",
            Preprocess.from_transforms(chosen.transforms()), _cpu(), categories,
        )
    official = recognise(weights, name) if Path(weights).is_file() else None
    if official is not None and official.model != name:
        raise WeightsError(f"{weights} is torchvision's {official.label} file, made for {official.model}, not {name}",
                           hint=f"use --model {official.model}")
    if official is not None:
        return _load_official_file(official, weights, seed, trust_pickle)
    module = _build_for_file(name, weights, seed, trust_pickle)
    return LoadedModel(module, name, weights, Preprocess(), _cpu())


def _build_for_file(name: str, path: str, seed: int, trust_pickle: bool = False, weights: Any = None) -> Any:
    """``name`` built as torchvision builds it for pretrained weights (see
    :func:`pretrained_build_kwargs`), with the tensors of the file at ``path`` loaded."""
    state = read_state_dict_file(path, trust_pickle)
    module = seeded_build(lambda: get_model(name, weights=None, **pretrained_build_kwargs(name, weights)), seed)
    _drop_aux_heads(name, module, keep=any(k.startswith(AUX_HEADS.get(name, ("-",))) for k in state))
    load_state_dict(module, state, path)
    return module


def _load_named_file(name: str, weights: str, path: str, seed: int, trust_pickle: bool = False) -> LoadedModel:
    """``--weights IMAGENET1K_V1 --weights-file PATH``: the named weights' tensors from a file."""
    name = _torchvision_name(name)
    if _is_none(weights) or _looks_like_path(weights):
        raise UsageError("--weights-file needs --weights to name the torchvision weights the file holds",
                         hint=f"e.g. --weights IMAGENET1K_V1 --weights-file {path}")
    chosen = _pick_weights(name, get_model_weights(name), weights)
    return _load_official_file(OfficialWeights(name, chosen), path, seed, trust_pickle)


def _load_official_file(official: OfficialWeights, path: str, seed: int, trust_pickle: bool = False) -> LoadedModel:
    """torchvision weights from a local file, with their class names and preprocessing. The
    file's SHA-256 is checked against the prefix in the official name: a different file still
    loads (it fits the architecture, or loading fails), with a note that it is not the original."""
    chosen = official.weights
    module = _build_for_file(official.model, path, seed, trust_pickle, chosen)
    notes = []
    if sha256_matches(path, chosen) is False:
        notes.append(f"{path}: its SHA-256 does not start with {hash_prefix(chosen)}, so it is not torchvision's "
                     f"own {file_name(chosen)}; using its class names and preprocessing all the same")
    categories = list(chosen.meta.get("categories") or []) or None
    return LoadedModel(module, official.model, f"{official.label} from {path}",
                       Preprocess.from_transforms(chosen.transforms()), _cpu(), categories, notes=notes)


def _torchvision_name(name: str) -> str:
    """``name`` as torchvision spells it (case-insensitive), or a ModelError with close names."""
    names = classification_model_names()
    if name not in names:
        lowered = {n.lower(): n for n in names}
        if name.lower() in lowered:
            name = lowered[name.lower()]
        else:
            close = difflib.get_close_matches(name, names, n=4, cutoff=0.5)
            hint = ("did you mean " + ", ".join(close) + "?") if close else (
                "run `python -c \"import torchvision; print(torchvision.models.list_models())\"` "
                "for the names, or pass a TorchScript file or package.module:factory"
            )
            raise ModelError(f"unknown model {name!r}: it is not a torchvision classification model", hint=hint)
    return name


#: Auxiliary classifier heads torchvision builds for pretrained weights and may then remove.
AUX_HEADS: dict[str, tuple[str, ...]] = {"inception_v3": ("AuxLogits.",), "googlenet": ("aux1.", "aux2.")}


def pretrained_build_kwargs(name: str, weights: Any) -> dict[str, Any]:
    """What torchvision's builder changes when it builds ``name`` for pretrained weights, so
    that a model built without downloading (``featviz layers``, ``--weights PATH``) is the same
    architecture: Inception v3 and GoogLeNet take ``transform_input=True`` (they were trained on
    inputs normalised the other way, and turn ImageNet-normalised inputs into those), their
    auxiliary heads and no weight initialisation; a ViT is built for its weights' image size."""
    if name in AUX_HEADS:
        return {"transform_input": True, "aux_logits": True, "init_weights": False}
    if name.startswith("vit_") and weights is not None:
        return {"image_size": int(weights.meta["min_size"][0])}
    return {}


def fresh_build_kwargs(name: str) -> dict[str, Any]:
    """What featviz passes when it builds ``name`` with random weights (``--weights none``).

    GoogLeNet and Inception v3 take ``init_weights``; left at its default (None) torchvision
    warns (FutureWarning: "The default weight initialization ... will be changed", scipy/scipy#11299)
    and then initialises as if it were True. featviz passes ``init_weights=True``, exactly what
    torchvision does today, so the model is the same and the warning is not raised at its cause.
    A user's ``--model-kwargs '{"init_weights": false}'`` still wins."""
    return {"init_weights": True} if name in AUX_HEADS else {}


def _drop_aux_heads(name: str, module: Any, keep: bool) -> None:
    """Remove the auxiliary heads, as torchvision does after loading pretrained weights (GoogLeNet
    always, Inception v3 only when asked); they never take part in an eval-mode forward pass."""
    if name not in AUX_HEADS or keep:
        return
    module.aux_logits = False
    for prefix in AUX_HEADS[name]:
        setattr(module, prefix.rstrip("."), None)


def _cpu() -> torch.device:
    return torch.device("cpu")


def _looks_like_path(weights: str) -> bool:
    return Path(weights).exists() or any(s in weights for s in ("/", os.sep, ".pt", ".pth", ".bin", ".safetensors"))


def _pick_weights(name: str, enum: Any, wanted: str) -> Any:
    available = [w.name for w in enum]
    if _is_default(wanted):
        return enum.DEFAULT
    key = wanted.split(".")[-1].upper()
    if key in available:
        return enum[key]
    raise WeightsError(
        f"{name} has no weights named {wanted!r}",
        hint="choose one of " + ", ".join(["DEFAULT", *available]) + ", none, or a state-dict file",
    )


def _load_factory(spec: str, weights: str, seed: int, trust_pickle: bool = False) -> LoadedModel:
    module_name, _, attr = spec.rpartition(":") if spec.rpartition(":")[0].endswith(".py") else spec.partition(":")
    with current_folder_importable():
        built = build_from_factory(spec, module_name, attr, seed)
    if not isinstance(built, torch.nn.Module):
        raise ModelError(f"{spec} returned {type(built).__name__}, not a torch.nn.Module",
                         hint="the factory must build and return the model")
    label = "as built"
    if not _is_none(weights) and not _is_default(weights):
        load_state_dict_file(built, weights, trust_pickle)
        label = weights
    elif _is_none(weights):
        label = f"as built (seed {seed})"
    return LoadedModel(built, spec, label, Preprocess(), _cpu(), source="factory")


def _load_torchscript(path: str, weights: str, seed: int, trust_pickle: bool = False) -> LoadedModel:
    if not Path(path).is_file():
        raise ModelError(
            f"model file {path} does not exist",
            hint="--model takes a torchvision name, a TorchScript file or package.module:factory",
        )

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated"
            module = torch.jit.load(path, map_location="cpu")
    except (RuntimeError, ValueError, OSError) as exc:
        module = load_pickled_model(path, trust_pickle, exc)
        source = "pickle"
    else:
        source = "torchscript"
    label = "as saved"
    if not _is_none(weights) and not _is_default(weights):
        load_state_dict_file(module, weights, trust_pickle)
        label = weights
    del seed
    return LoadedModel(module, path, label, Preprocess(), _cpu(), source=source)
