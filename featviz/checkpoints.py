"""Reading PyTorch files: tensors only, unless the user says they trust the file.

``torch.save(model)`` pickles the whole Python object, and unpickling it can run any code the
file carries, so featviz reads files with ``torch.load(weights_only=True)``, which accepts
tensors and plain containers and refuses everything else. When it refuses, the user is told
which object the file holds and what to do: save ``model.state_dict()`` instead or, for a file
they trust, opt in with ``--trust-pickle`` (``weights_only=False``).
"""

from __future__ import annotations

import pickle
import re
import warnings
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
