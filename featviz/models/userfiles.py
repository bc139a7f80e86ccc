"""A user's own model: a factory in a Python file or an importable package, or a model saved whole.

Building one means running the user's code (importing the file, calling the factory, unpickling),
so this is where that code is guarded: a factory that needs arguments is refused without being
called, whatever it raises (SystemExit too) becomes a :class:`~featviz.errors.ModelError` with its
message, and a pickled model is read only when the user said ``--trust-pickle``.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from featviz.errors import ModelError, WeightsError
from featviz.models.checkpoints import (
    MissingPickledCode,
    UntrustedPickle,
    current_folder_importable,
    read_torch_file,
)


def seeded_build(build: Any, seed: int) -> Any:
    """Run ``build()`` with torch's RNG seeded, leaving the caller's RNG state untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _import_file(spec: str, path: str) -> Any:
    """The module defined by a Python file, imported under a name of its own."""
    if not Path(path).is_file():
        raise ModelError(f"model factory file {path} does not exist", hint="check the path before the colon")
    location = importlib.util.spec_from_file_location(f"featviz_user_{Path(path).stem}", path)
    if location is None or location.loader is None:
        raise ModelError(f"cannot import {path} for model factory {spec!r}", hint="name a .py file")
    module = importlib.util.module_from_spec(location)
    location.loader.exec_module(module)
    return module


def build_from_factory(spec: str, module_name: str, attr: str, seed: int) -> Any:
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
    return _call_factory(spec, factory, seed)


def _call_factory(spec: str, factory: Any, seed: int) -> Any:
    """``factory()``, seeded; a model instance is taken as it is. Whatever the factory raises
    (``SystemExit`` from ``builtins:exit`` included, Ctrl-C excepted) is a :class:`ModelError`
    carrying its message; a callable that needs arguments (``os:system``) is refused without
    being called."""
    if isinstance(factory, torch.nn.Module):
        return factory
    if not callable(factory):
        raise ModelError(f"{spec} is a {type(factory).__name__}, not a model factory",
                         hint="name a function that takes no arguments and returns a torch.nn.Module")
    try:
        inspect.signature(factory).bind()
    except TypeError as exc:
        raise ModelError(f"{spec} cannot be called without arguments ({exc})",
                         hint="name a function that takes no arguments and returns a torch.nn.Module") from None
    except ValueError:  # no signature to inspect (some builtins): calling it will tell
        pass
    try:
        return seeded_build(factory, seed)
    except (KeyboardInterrupt, GeneratorExit):
        raise
    except BaseException as exc:  # a user's factory may raise anything, even SystemExit
        message = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else "no message"
        if isinstance(exc, SystemExit):
            message = f"it exits the program (code {exc.code!r}) instead of returning a model"
        raise ModelError(f"model factory {spec} raised {type(exc).__name__}: {message}",
                         hint="fix the factory, or check that --model names the right one") from exc


def load_pickled_model(path: str, trust_pickle: bool, jit_error: Exception) -> torch.nn.Module:
    """A model saved whole with ``torch.save(model)``: refused (unpickling runs code) unless
    ``trust_pickle``; a state dict or anything else passed as ``--model`` gets a hint."""
    not_a_model = ModelError(
        f"{path} is not a TorchScript model",
        hint="save one with torch.jit.save(torch.jit.script(model), path); for a state dict, "
        "name the architecture with --model and pass the file with --weights",
    )
    try:
        if trust_pickle:
            with current_folder_importable():  # the model's class, as for a factory
                obj = read_torch_file(path, trust_pickle=True)
        else:
            obj = read_torch_file(path)
    except (UntrustedPickle, MissingPickledCode):
        raise
    except WeightsError:
        raise not_a_model from jit_error
    if isinstance(obj, torch.nn.Module):
        return obj
    if isinstance(obj, Mapping):
        raise ModelError(f"{path} is not a TorchScript model: it holds weights (a state dict), not a model",
                         hint="name the architecture with --model (a torchvision name or package.module:factory) "
                         "and pass this file with --weights")
    raise not_a_model from jit_error
