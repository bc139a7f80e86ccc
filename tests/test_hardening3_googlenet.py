"""Issue 20, item 11 (rest): torchvision's FutureWarning for GoogLeNet / Inception v3 reached stderr.

torchvision's ``GoogLeNet`` and ``Inception3`` warn ("The default weight initialization ... will
be changed") when ``init_weights`` is left at None, then initialise as if it were True. featviz
built them with ``weights=None`` and nothing else (``--weights none``), so every such run printed
the warning. Now featviz passes ``init_weights=True`` (what torchvision does today), and the
user's ``--model-kwargs`` still win.

How it is tested without paying for the full build (3-7 s each here): the arguments given to
torchvision's ``get_model`` are recorded with a stand-in builder; one real GoogLeNet build runs
with ``torch.nn.init.trunc_normal_`` (its slow initialiser) replaced by a no-op, under
``filterwarnings = error`` -- the warning is raised in the constructor before initialisation,
so the test fails on main whatever the initialiser does.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from torch import nn

import featviz.models.build as build
from featviz.models.build import load_model

pytestmark = pytest.mark.filterwarnings("error")


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    calls: list[tuple[str, dict[str, Any]]] = []

    def fake_get_model(name: str, **kwargs: Any) -> nn.Module:
        calls.append((name, kwargs))
        return nn.Sequential(nn.Conv2d(3, 2, 3))

    monkeypatch.setattr(build, "_get_model", fake_get_model)
    return calls


@pytest.mark.parametrize("name", ["googlenet", "inception_v3"])
def test_random_weights_pass_init_weights_true(name: str, recorded: list[tuple[str, dict[str, Any]]]) -> None:
    load_model(name, "none")
    assert recorded == [(name, {"weights": None, "init_weights": True})]


def test_other_models_get_no_init_weights(recorded: list[tuple[str, dict[str, Any]]]) -> None:
    load_model("resnet18", "none")
    assert recorded == [("resnet18", {"weights": None})]


def test_the_users_model_kwargs_win(recorded: list[tuple[str, dict[str, Any]]]) -> None:
    load_model("googlenet", "none", model_kwargs={"init_weights": False, "aux_logits": False})
    assert recorded == [("googlenet", {"weights": None, "init_weights": False, "aux_logits": False})]


def test_building_googlenet_raises_no_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    # the slow part of the build is the truncated-normal initialisation of every layer; the
    # warning (on main) comes from the constructor before it, so a no-op keeps the test honest
    monkeypatch.setattr(torch.nn.init, "trunc_normal_", lambda tensor, *args, **kwargs: tensor)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = load_model("googlenet", "none")
    assert type(loaded.module).__name__ == "GoogLeNet"
