"""What to run: a model built from a name, a TorchScript file or a factory, with its weights and
the preprocessing that goes with them.

torchvision already knows every classification architecture, its weights, their download
location and their exact preprocessing (``weights.transforms()``); this module only chooses
among them and turns their failures into :class:`~featviz.errors.FeatvizError` messages a user
can act on.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featviz.errors import ModelError, UsageError, WeightsError
from featviz.preprocess import IMAGENET_MEAN, IMAGENET_STD, CropBox, Preprocess

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "CropBox", "LoadedModel", "Preprocess", "load_model", "resolve_device"]

if TYPE_CHECKING:
    import torch

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


def classification_model_names() -> list[str]:
    """Every torchvision classification model name (``alexnet``, ``resnet50``, ...)."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA, then MPS, then the CPU; an unavailable device is a usage error."""
    import torch

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
                hint="use cuda:0 .. cuda:%d" % (torch.cuda.device_count() - 1),
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
    model_kwargs: Mapping[str, Any] | None = None,
) -> LoadedModel:
    """Build the model named by ``model`` and load ``weights`` into it.

    ``model`` is a torchvision classification name, a TorchScript file, or ``package.module:factory``.
    ``weights`` is ``DEFAULT``, a torchvision weights name (``IMAGENET1K_V1``), ``none`` (random,
    seeded by ``seed``) or a path to a state dict. For a user's own model ``DEFAULT`` means "as
    built". ``preprocess`` replaces the pipeline that goes with the weights. ``timm:NAME`` builds a
    timm model (:mod:`featviz.timm_models`); ``model_kwargs`` go to its constructor (or to
    torchvision's ``get_model``).
    """
    target = resolve_device(device)
    weights_text = "none" if weights is None else os.fspath(weights)
    if model.startswith("timm:"):
        loaded = _load_timm(model, weights_text, seed, pretrained, model_kwargs)
    elif model_kwargs and not model.startswith("timm:") and (_looks_like_factory(model) or _looks_like_file(model)):
        raise UsageError("--model-kwargs applies to timm and torchvision models only",
                         hint="build your own model with its arguments inside the factory")
    elif _looks_like_factory(model):
        loaded = _load_factory(model, weights_text, seed)
    elif _looks_like_file(model):
        loaded = _load_torchscript(model, weights_text, seed)
    else:
        loaded = _load_torchvision(model, weights_text, seed, pretrained, model_kwargs or {})
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


def _seeded_build(build: Any, seed: int) -> Any:
    """Run ``build()`` with torch's RNG seeded, leaving the caller's RNG state untouched."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _load_timm(spec: str, weights: str, seed: int, pretrained: bool,
               kwargs: Mapping[str, Any] | None) -> LoadedModel:
    from featviz import timm_models

    built = timm_models.build(spec, weights, seed, pretrained, kwargs)
    if built.load_file is not None:
        load_state_dict_file(built.module, built.load_file)
    return LoadedModel(built.module, spec, built.weights, built.preprocess, _cpu(), built.categories,
                       source="timm")


def _load_torchvision(name: str, weights: str, seed: int, pretrained: bool = True,
                      kwargs: Mapping[str, Any] | None = None) -> LoadedModel:
    from torchvision.models import get_model as _get_model
    from torchvision.models import get_model_weights

    def get_model(model_name: str, **options: Any) -> Any:
        try:
            return _get_model(model_name, **options, **(kwargs or {}))
        except TypeError as exc:
            raise UsageError(f"{model_name} rejects --model-kwargs: {exc}",
                             hint="pass only arguments of the model's constructor, as JSON") from exc

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

    if _is_none(weights):
        module = _seeded_build(lambda: get_model(name, weights=None), seed)
        # Class names still come from the default weights' metadata (no download needed).
        default = get_model_weights(name).DEFAULT
        categories = list(default.meta.get("categories") or []) or None
        return LoadedModel(module, name, f"none (seed {seed})", Preprocess(), _cpu(), categories)
    if _is_default(weights) or not _looks_like_path(weights):
        enum = get_model_weights(name)
        chosen = _pick_weights(name, enum, weights)
        if pretrained:
            module = _download_guarded(lambda: get_model(name, weights=chosen), chosen)
        else:
            module = _seeded_build(lambda: get_model(name, weights=None), seed)
        categories = list(chosen.meta.get("categories") or []) or None
        return LoadedModel(
            module, name, f"{type(chosen).__name__}.{chosen.name}",
            Preprocess.from_transforms(chosen.transforms()), _cpu(), categories,
        )
    module = _seeded_build(lambda: get_model(name, weights=None), seed)
    load_state_dict_file(module, weights)
    return LoadedModel(module, name, weights, Preprocess(), _cpu())


def _cpu() -> torch.device:
    import torch

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


def _download_guarded(build: Any, weights: Any) -> Any:
    """Build with pretrained weights; a failed download becomes an error that says what to do."""
    import torch

    filename = os.path.basename(weights.url)
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    import contextlib
    import pickle

    try:
        with contextlib.redirect_stdout(sys.stderr):  # torch.hub prints "Downloading: ..." on stdout
            return build()
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        cached = (cache / filename).exists()
        what = "could not be loaded" if cached else "are not cached and could not be downloaded"
        raise WeightsError(
            f"pretrained weights {filename} {what} ({reason}); torchvision looks for them in "
            f"{cache} (set TORCH_HOME to move it)",
            hint=f"put {filename} there, pass --weights PATH to a state dict, or --weights none "
            "for random weights",
        ) from exc


def extract_state_dict(obj: Any, source: str) -> dict[str, Any]:
    """A state dict from what ``torch.load`` returned: the dict itself, or a checkpoint holding it
    under ``state_dict`` or ``model``; a DataParallel ``module.`` prefix is removed."""
    import torch

    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise WeightsError(
            f"{source} holds no state dict (a mapping of parameter names to tensors)",
            hint="save one with torch.save(model.state_dict(), path), or a checkpoint with it "
            "under 'state_dict' or 'model'",
        )
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def load_state_dict_file(module: torch.nn.Module, path: str) -> None:
    """Load a state dict file into ``module``, safely: ``.safetensors`` holds only tensors, any
    other file is read with ``torch.load(weights_only=True)``."""
    if not Path(path).is_file():
        raise WeightsError(f"weights file {path} does not exist", hint="check the path, or use --weights none")
    if str(path).endswith(".safetensors"):
        state = _read_safetensors(path)
    else:
        state = extract_state_dict(_torch_load(path), path)
    check_state_dict(module, state, path)
    module.load_state_dict(state, strict=True)


def _read_safetensors(path: str) -> dict[str, Any]:
    """A ``.safetensors`` file: tensors only, by construction."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return extract_state_dict(load_file(path, device="cpu"), path)
    except (SafetensorError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"{path} cannot be read as a safetensors file ({first[:200]})",
                           hint="save one with safetensors.torch.save_file(model.state_dict(), path)") from exc


def _torch_load(path: str) -> Any:
    import pickle
    import warnings

    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4" before refusing a file
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(
            f"{path} cannot be read as a PyTorch weights file ({first[:200]})",
            hint="featviz loads only tensors (weights_only=True); save with torch.save(model.state_dict(), path)",
        ) from exc
    return obj


def check_state_dict(module: torch.nn.Module, state: Mapping[str, Any], path: str) -> None:
    """Raise :class:`WeightsError` naming missing, unexpected and mis-shaped keys."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) such as {', '.join(missing[:3])}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) such as {', '.join(unexpected[:3])}")
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatch(es) such as {'; '.join(mismatched[:2])}")
        raise WeightsError(
            f"the weights in {path} do not fit {type(module).__name__}: " + "; ".join(parts),
            hint="check that --model names the architecture these weights were trained with",
        )


def _load_factory(spec: str, weights: str, seed: int) -> LoadedModel:
    import torch

    module_name, _, attr = spec.rpartition(":") if spec.rpartition(":")[0].endswith(".py") else spec.partition(":")
    with _current_folder_importable():
        built = _build_from_factory(spec, module_name, attr, seed)
    if not isinstance(built, torch.nn.Module):
        raise ModelError(f"{spec} returned {type(built).__name__}, not a torch.nn.Module",
                         hint="the factory must build and return the model")
    label = "as built"
    if not _is_none(weights) and not _is_default(weights):
        load_state_dict_file(built, weights)
        label = weights
    elif _is_none(weights):
        label = f"as built (seed {seed})"
    return LoadedModel(built, spec, label, Preprocess(), _cpu(), source="factory")


@contextlib.contextmanager
def _current_folder_importable() -> Iterator[None]:
    """The user's own package is found in the current folder, as ``python -m`` would find it,
    while the factory is imported and run; ``sys.path`` is left as it was afterwards."""
    cwd = os.getcwd()
    added = "" not in sys.path and cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def _import_file(spec: str, path: str) -> Any:
    """The module defined by a Python file, imported under a name of its own."""
    import importlib.util

    if not Path(path).is_file():
        raise ModelError(f"model factory file {path} does not exist", hint="check the path before the colon")
    location = importlib.util.spec_from_file_location(f"featviz_user_{Path(path).stem}", path)
    if location is None or location.loader is None:
        raise ModelError(f"cannot import {path} for model factory {spec!r}", hint="name a .py file")
    module = importlib.util.module_from_spec(location)
    location.loader.exec_module(module)
    return module


def _build_from_factory(spec: str, module_name: str, attr: str, seed: int) -> Any:
    try:
        if module_name.endswith(".py"):
            module = _import_file(spec, module_name)
        else:
            module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(
            f"cannot import {module_name!r} for model factory {spec!r} ({exc})",
            hint="run from the folder that holds the package, or install it",
        ) from exc
    factory: Any = module
    for part in attr.split("."):
        if not hasattr(factory, part):
            names = [n for n in dir(module) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=3)
            raise ModelError(
                f"{module_name} has no attribute {part!r}",
                hint=("did you mean " + ", ".join(close) + "?") if close else "check the factory name",
            )
        factory = getattr(factory, part)
    return _seeded_build(factory if callable(factory) else (lambda: factory), seed)


def _load_torchscript(path: str, weights: str, seed: int) -> LoadedModel:
    import torch

    if not Path(path).is_file():
        raise ModelError(
            f"model file {path} does not exist",
            hint="--model takes a torchvision name, a TorchScript file or package.module:factory",
        )
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated"
            module = torch.jit.load(path, map_location="cpu")
    except (RuntimeError, ValueError, OSError) as exc:
        raise ModelError(
            f"{path} is not a TorchScript model",
            hint="save one with torch.jit.save(torch.jit.script(model), path); for a state dict, "
            "name the architecture with --model and pass the file with --weights",
        ) from exc
    label = "as saved"
    if not _is_none(weights) and not _is_default(weights):
        load_state_dict_file(module, weights)
        label = weights
    del seed
    return LoadedModel(module, path, label, Preprocess(), _cpu(), source="torchscript")
