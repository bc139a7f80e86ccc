"""How many times each module runs in one forward pass: a module called twice has two outputs.

A module object can run more than once in a pass: torchvision's ResNet blocks apply their one
``relu`` after each convolution and after the addition (``layer1.0.relu`` runs 3 times per
Bottleneck, 2 per BasicBlock), and any shared module does the same. A hook on such a module sees
every call; keeping one and replacing another mixes two different tensors (Ablation-CAM's
replacement would ablate every call, so its channel weights came out near 2.0). featviz counts
the calls once per model and input size (:func:`count_calls`, one pass on a stand-in input) and
then either draws the call the user picked (``--layer layer1.0.relu@2``, :func:`check_calls`)
or refuses a layer named without one, naming both ways out: the call suffix and the module
around it that runs once. It never mixes calls.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from typing import Any

import torch
from torch import nn

from featviz.capture.layers import LayerRef, is_script
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


def single_call_alternative(calls: Mapping[str, int], path: str) -> str | None:
    """The closest module around ``path`` (its parent, grandparent...) that runs exactly once."""
    parts = path.split(".")
    for end in range(len(parts) - 1, 0, -1):
        parent = ".".join(parts[:end])
        if calls.get(parent) == 1:
            return parent
    return None


def check_single_call(calls: Mapping[str, int], layer: LayerRef, model_name: str = "the model") -> None:
    """Raise :class:`LayerError` when ``layer`` names a module that ran more than once in the
    counted pass without picking a call, or picks a call the module does not make."""
    count = calls.get(layer.module_path, 0)
    if layer.call is not None:
        if layer.call > count:
            runs = "never runs" if count == 0 else f"runs {count} time{'s' if count > 1 else ''}"
            raise LayerError(
                f"layer {layer.path}: {layer.module_path} {runs} in one forward pass of {model_name}, "
                f"so it has no call {layer.call}",
                hint=(f"calls are counted from 1: use @1..@{count}" if count > 1 else
                      f"name it without @: --layer {layer.module_path}" if count == 1 else
                      "choose a module that the forward pass calls (see `featviz layers --all`)"),
            )
        return
    if count <= 1:
        return
    other = single_call_alternative(calls, layer.module_path)
    around = f", or --layer {other} (the module around it, which runs once)" if other else ""
    raise LayerError(
        f"layer {layer.path} runs {count} times in one forward pass of {model_name} (one module object "
        "reused, like the ReLU of a ResNet block): its calls are different tensors, and featviz does not "
        "guess one or mix them",
        hint=f"pick one call with --layer {layer.path}@K, K = 1..{count} (e.g. --layer {layer.path}@2){around}; "
             "`featviz layers --all` lists the modules and how often they run",
    )


def check_calls(calls: Mapping[str, int], layers: Sequence[LayerRef], model_name: str = "the model") -> None:
    """:func:`check_single_call` for every layer, in order (the first problem is raised)."""
    for layer in layers:
        check_single_call(calls, layer, model_name)


def count_calls(model: nn.Module, batch: torch.Tensor) -> Counter[str]:
    """Calls per module path in one forward pass of ``batch`` (float32 (N, 3, H, W)), run without
    gradients in eval mode; every module's train/eval mode is restored afterwards. A TorchScript
    model takes no hooks: its count is empty (featviz then picks no call of it)."""
    if is_script(model):
        return Counter()
    modes = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
        with CallCounter(model) as counter, torch.no_grad():
            model(batch)
    finally:
        for module, mode in modes:
            module.train(mode)
    return counter.calls


__all__ = ["CallCounter", "check_calls", "check_single_call", "count_calls", "single_call_alternative"]
