"""The shipped example networks (``examples/*.py``), imported by path as ``--model FILE.py:build``
does, and the trained CBAM example's held-out measure that the optimisation tests compare with.
One place for what six test modules did each in their own copy."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

import numpy as np
import torch

from featviz.capture.layers import LayerRef, resolve_layers
from featviz.models.build import load_model
from featviz.optimize.engine import activation_of

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def example_module(name: str) -> ModuleType:
    """``examples/<name>.py``, freshly imported under a name of its own (not in ``sys.modules``)."""
    spec = importlib.util.spec_from_file_location(f"{name}_for_tests", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TrainedConv2(NamedTuple):
    """The trained ``examples/cbam_shapes`` network, its ``conv2``, its normalisation, and each
    channel's best spatial mean over the held-out photos, float32 (32,)."""

    shapes: ModuleType
    model: torch.nn.Module
    ref: LayerRef
    mean: tuple[float, ...]
    std: tuple[float, ...]
    best_photo: torch.Tensor


def cbam_conv2(side: int, count: int = 300) -> TrainedConv2:
    """:class:`TrainedConv2` over ``count`` held-out synthetic photos of ``side`` px, drawn from
    ``default_rng(2024)`` (not the training seed)."""
    shapes = example_module("cbam_shapes")
    loaded = load_model(f"{EXAMPLES / 'cbam_shapes.py'}:build", str(EXAMPLES / "cbam_shapes.safetensors"))
    model, pre = loaded.module, loaded.preprocess
    ref = resolve_layers(model, ["conv2"])[0]
    rng = np.random.default_rng(2024)
    photos = torch.stack([torch.from_numpy(shapes.photo(rng, side, side)[0]).permute(2, 0, 1).float() / 255
                          for _ in range(count)])
    best_photo = activation_of(model, ref, photos, pre.mean, pre.std).max(dim=0).values
    return TrainedConv2(shapes, model, ref, tuple(pre.mean), tuple(pre.std), best_photo)
