"""Reading weights files: state dicts from ``.pth``/``.pt`` and ``.safetensors``, checked against
the architecture; tensors only, unless the user says they trust the file.

``torch.save(model)`` pickles the whole Python object, and unpickling it can run any code the
file carries, so featviz reads files with ``torch.load(weights_only=True)``, which accepts
tensors and plain containers and refuses everything else. When it refuses, the user is told
which object the file holds and what to do: save ``model.state_dict()`` instead or, for a file
they trust, opt in with ``--trust-pickle`` (``weights_only=False``).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import sys
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from featviz.errors import WeightsError

# torch's refusal names the first object it would have had to unpickle: "GLOBAL module.Class"
_PICKLED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


class UntrustedPickle(WeightsError):
    """The file holds pickled Python objects, which are not loaded without ``--trust-pickle``."""


class MissingPickledCode(WeightsError):
    """A trusted pickle names a class or function that cannot be imported here."""


def read_torch_file(path: str, trust_pickle: bool = False) -> Any:
    """What ``torch.load`` returns for ``path``, on the CPU.

    Without ``trust_pickle`` only tensors and plain containers are read; a file holding other
    objects (a whole model, a checkpoint with an ``argparse.Namespace``) raises
    :class:`UntrustedPickle`, any other unreadable file :class:`WeightsError`.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4" before refusing a file
            return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as exc:
        found = _PICKLED_GLOBAL.search(str(exc))
        if found and not trust_pickle:
            raise UntrustedPickle(
                f"{path} holds a pickled Python object ({found.group(1)}), not only tensors; featviz does "
                "not load it, because unpickling runs code from the file",
                hint="save model.state_dict() and pass that (with --model naming the architecture), or, "
                "only for a file you trust, add --trust-pickle",
            ) from None
        raise _unreadable(path, exc) from exc
    except (ImportError, AttributeError) as exc:  # trusted, but its classes cannot be found
        raise MissingPickledCode(
            f"{path} cannot be unpickled: it needs {exc}",
            hint="run featviz where the code that defined the model can be imported (its folder, or install it)",
        ) from exc
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise _unreadable(path, exc) from exc


def _unreadable(path: str, exc: Exception) -> WeightsError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return WeightsError(
        f"{path} cannot be read as a PyTorch weights file ({first[:200]})",
        hint="featviz loads only tensors (weights_only=True); save with torch.save(model.state_dict(), path)",
    )


@contextlib.contextmanager
def current_folder_importable() -> Iterator[None]:
    """The user's own package is found in the current folder, as ``python -m`` would find it,
    while a factory or a trusted pickle's classes are imported; ``sys.path`` is left as it was afterwards."""
    cwd = os.getcwd()
    added = "" not in sys.path and cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def extract_state_dict(obj: Any, source: str) -> dict[str, Any]:
    """A state dict from what ``torch.load`` returned: the dict itself, or a checkpoint holding it
    under ``state_dict`` or ``model``; a DataParallel ``module.`` prefix is removed."""
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


def load_state_dict_file(module: torch.nn.Module, path: str, trust_pickle: bool = False) -> None:
    """Load a state dict file into ``module``, safely (``weights_only=True``); with
    ``trust_pickle`` also a checkpoint holding other objects, or a whole pickled model (whose
    state dict is taken)."""
    load_state_dict(module, read_state_dict_file(path, trust_pickle), path)


def read_state_dict_file(path: str, trust_pickle: bool = False) -> dict[str, Any]:
    """The state dict in a file, read safely: ``.safetensors`` holds only tensors, any other file
    is read with ``torch.load(weights_only=True)`` unless ``trust_pickle``."""
    if Path(path).is_dir():
        raise WeightsError(f"--weights {path} is a folder, not a weights file",
                           hint="give the state-dict file inside it (.pth, .pt, .bin, .safetensors), or --weights none")
    if not Path(path).is_file():
        raise WeightsError(f"weights file {path} does not exist", hint="check the path, or use --weights none")
    if str(path).endswith(".safetensors"):
        return _read_safetensors(path)
    if trust_pickle:
        with current_folder_importable():  # the pickled classes' code, as for a factory
            obj = read_torch_file(path, trust_pickle=True)
    else:
        obj = read_torch_file(path)
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    return extract_state_dict(obj, path)


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


def load_state_dict(module: torch.nn.Module, state: dict[str, Any], path: str) -> None:
    """Load ``state`` (read from ``path``) into ``module``; keys and shapes must all fit."""
    check_state_dict(module, state, path)
    module.load_state_dict(state, strict=True)


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
