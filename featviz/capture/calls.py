"""How many times each module runs in one forward pass: a module called twice has two outputs.

A module object can run more than once in a pass: torchvision's ResNet blocks apply their one
``relu`` after each convolution and after the addition (``layer1.0.relu`` runs 3 times per
Bottleneck, 2 per BasicBlock), and any shared module does the same. A hook on such a module sees
every call; keeping one and replacing another mixes two different tensors. Class attention
(``--cam``) would be silently wrong: Ablation-CAM's replacement would ablate every call, so its
channel weights come out near 2.0. featviz refuses such a layer before any photo, naming a module
that runs once (:func:`check_single_call`), and never mixes calls.
"""

from __future__ import annotations

from collections import Counter
from contextlib import ExitStack
from typing import Any

import torch
from torch import nn

from featviz.capture.layers import LayerRef
from featviz.errors import LayerError


class CallCounter:
    """Context manager: a forward pre-hook on every named module counts its calls.

    >>> with CallCounter(model) as counter:
    ...     model(batch)
    ...     counter.calls["layer1.0.relu"]   # 2 for a BasicBlock

    Hooks are removed on exit, also when the pass raised; nothing else about the model changes.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.calls: Counter[str] = Counter()
        self._stack: ExitStack | None = None

    def __enter__(self) -> CallCounter:
        self._stack = ExitStack()
        try:
            for path, module in self.model.named_modules():
                self._stack.callback(module.register_forward_pre_hook(self._counter(path)).remove)
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None

    def _counter(self, path: str) -> Any:
        def hook(module: nn.Module, inputs: Any) -> None:
            self.calls[path] += 1

        return hook


def single_call_alternative(calls: Counter[str], path: str) -> str | None:
    """The closest module around ``path`` (its parent, grandparent...) that runs exactly once."""
    parts = path.split(".")
    for end in range(len(parts) - 1, 0, -1):
        parent = ".".join(parts[:end])
        if calls.get(parent) == 1:
            return parent
    return None


def check_single_call(calls: Counter[str], layer: LayerRef, model_name: str = "the model") -> None:
    """Raise :class:`LayerError` when ``layer`` ran more than once in the counted pass."""
    count = calls.get(layer.path, 0)
    if count <= 1:
        return
    other = single_call_alternative(calls, layer.path)
    suggestion = f"--layer {other} (the module around it, which runs once)" if other else "a module that runs once"
    raise LayerError(
        f"layer {layer.path} runs {count} times in one forward pass of {model_name} (one module object "
        "reused, like the ReLU of a ResNet block): its calls are different tensors, and featviz does not "
        "pick one or mix them",
        hint=f"choose {suggestion}; `featviz layers --all` lists the modules",
    )


def count_calls(model: nn.Module, batch: torch.Tensor) -> Counter[str]:
    """Calls per module path in one forward pass of ``batch`` (float32 (N, 3, H, W)), run without
    gradients in eval mode; every module's train/eval mode is restored afterwards."""
    modes = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
        with CallCounter(model) as counter, torch.no_grad():
            model(batch)
    finally:
        for module, mode in modes:
            module.train(mode)
    return counter.calls


__all__ = ["CallCounter", "check_single_call", "count_calls", "single_call_alternative"]
