"""Gate activations seen from inside a forward pass: which module ran sigmoid, hard-sigmoid or softmax.

Learned attention (SE, ECA, CBAM, …) multiplies a feature map by a gate that a sigmoid or softmax
produced, inside a module's forward. Hooks see module boundaries only, so this module also watches
torch functions (a ``TorchFunctionMode``) and ties each gate call to the modules running at that
moment: :func:`trace_gates` for the one probe pass that finds gates, :class:`GateRecorder` for
keeping chosen gate outputs during a capture. Hooks are removed and flags restored on exit.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch.nn import functional
from torch.overrides import TorchFunctionMode

from featviz.capture.layers import is_script

if TYPE_CHECKING:
    from torch import nn


def first_tensor(value: Any) -> torch.Tensor | None:
    """``value`` itself if a tensor, else the first tensor of a tuple/list/dict, else None."""
    if isinstance(value, torch.Tensor):
        return value
    values = value.values() if isinstance(value, dict) else value
    if isinstance(values, (tuple, list)) or isinstance(value, dict):
        return next((v for v in values if isinstance(v, torch.Tensor)), None)
    return None



# --- gate activations: what sigmoid, hard-sigmoid and softmax computed inside modules ---------

def _gate_function_names() -> dict[Any, str]:
    return {torch.sigmoid: "sigmoid", torch.Tensor.sigmoid: "sigmoid", functional.sigmoid: "sigmoid",
            functional.hardsigmoid: "hardsigmoid", torch.softmax: "softmax", torch.Tensor.softmax: "softmax",
            functional.softmax: "softmax"}


def _softmax_dim(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int | None:
    dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
    return dim if isinstance(dim, int) else None


@dataclass
class GateCall:
    """One call of a gate activation during a traced forward pass.

    ``output``: its result, detached and copied (any shape; values in (0, 1), softmax rows sum
    to 1). ``modules``: the paths of the modules running at that moment, outermost first;
    ``counts[path]``: how many gate calls that module had made before this one (its index k).
    """

    function: str  # "sigmoid", "hardsigmoid" or "softmax"
    dim: int | None  # softmax's dimension
    output: torch.Tensor
    modules: tuple[str, ...]
    counts: dict[str, int]


@dataclass
class ModuleCall:
    """A module that ran gate activations: its first tensor input and its output, copied.

    ``input``/``output``: float tensors as the module got and returned them (usually
    (N, C, H, W)); ``output`` is None when the module returned no tensor.
    """

    path: str
    module: nn.Module
    input: torch.Tensor | None
    output: torch.Tensor | None
    calls: list[int]  # indices into GateTrace.calls, in call order


@dataclass
class GateTrace:
    calls: list[GateCall] = field(default_factory=list)
    modules: dict[str, ModuleCall] = field(default_factory=dict)


class _GateMode(TorchFunctionMode):
    """Sees every torch function call; hands those of gate activations to ``on_call``."""

    def __init__(self, on_call: Any) -> None:
        super().__init__()
        self.on_call = on_call
        self.names = _gate_function_names()

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        name = self.names.get(func)
        if name is not None and isinstance(result, torch.Tensor):
            self.on_call(name, _softmax_dim(args, kwargs) if name == "softmax" else None, result)
        return result


def trace_gates(model: nn.Module, batch: torch.Tensor) -> GateTrace:
    """One forward pass of ``batch`` that records every gate-activation call (sigmoid,
    hard-sigmoid, softmax; as modules or as functions) and, for each module that ran one, its
    input and output, so that a caller can tell which module multiplied its input by which gate.

    Hooks live inside this call only; the model's flags are restored; nothing is kept of
    modules without gate calls. TorchScript models cannot be traced: the trace is empty.
    """
    trace = GateTrace()
    if is_script(model):
        return trace
    running: list[tuple[str, torch.Tensor | None, int]] = []  # (path, input copy, first call index)
    counts: dict[str, int] = {}

    def on_call(name: str, dim: int | None, result: torch.Tensor) -> None:
        paths = tuple(path for path, _, _ in running)
        trace.calls.append(GateCall(name, dim, result.detach().clone(), paths,
                                    {path: counts.get(path, 0) for path in paths}))
        for path in paths:
            counts[path] = counts.get(path, 0) + 1

    def before(path: str) -> Any:
        def hook(module: nn.Module, inputs: Any) -> None:
            given = first_tensor(inputs)
            running.append((path, None if given is None else given.detach().clone(), len(trace.calls)))

        return hook

    def after(path: str) -> Any:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            _, given, first = running.pop()
            if len(trace.calls) > first and path not in trace.modules:
                produced = first_tensor(output)
                trace.modules[path] = ModuleCall(path, module, given,
                                                 None if produced is None else produced.detach().clone(),
                                                 list(range(first, len(trace.calls))))

        return hook

    training = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with ExitStack() as stack:
            for path, module in model.named_modules():
                stack.callback(module.register_forward_pre_hook(before(path)).remove)
                stack.callback(module.register_forward_hook(after(path)).remove)
            with torch.no_grad(), _GateMode(on_call):
                model(batch)
    finally:
        for module, flag in training:
            module.train(flag)
    return trace


class GateRecorder:
    """Inside :class:`ActivationCapture`: the outputs of chosen gate calls, named by the module
    that makes them and the call's index k within that module's forward (``"<path>:gate<k>"``)."""

    def __init__(self, model: nn.Module, wanted: dict[str, set[int]], keep: Any) -> None:
        self.model = model
        self.wanted = wanted
        self.keep = keep  # keep(key, tensor)
        self.active: dict[str, int] = {}  # owner path -> gate calls so far in its running forward
        self.done: set[str] = set()

    def install(self, stack: ExitStack) -> None:
        for path in self.wanted:
            module = self.model.get_submodule(path) if path else self.model
            stack.callback(module.register_forward_pre_hook(self._enter(path)).remove)
            stack.callback(module.register_forward_hook(self._leave(path)).remove)
        mode = _GateMode(self._on_call)
        stack.enter_context(mode)

    def _enter(self, path: str) -> Any:
        def hook(module: nn.Module, inputs: Any) -> None:
            if path not in self.done:
                self.active[path] = 0

        return hook

    def _leave(self, path: str) -> Any:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if self.active.pop(path, None) is not None:
                self.done.add(path)  # a module called twice: keep its first call's gates

        return hook

    def _on_call(self, name: str, dim: int | None, result: torch.Tensor) -> None:
        for path in list(self.active):
            index = self.active[path]
            self.active[path] = index + 1
            if index in self.wanted[path]:
                self.keep(f"{path}:gate{index}", result.detach().clone())
