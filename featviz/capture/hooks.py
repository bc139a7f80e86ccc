"""The only place hooks live: collect the outputs of chosen modules during one forward pass.

Hooks are registered when the ``with`` block starts and removed when it ends, also when the
forward pass raises; the model's training flags are restored; gradients are never recorded.
The forward pass is cut short once every requested module has produced its output, so asking
for AlexNet's layer 0 does not pay for the classifier.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

import torch

from featviz.capture.calls import CallCounter
from featviz.capture.frozen import frozen, restore_modes
from featviz.capture.gatetrace import GateRecorder, first_tensor
from featviz.capture.layers import LayerRef, feature_stack, is_script
from featviz.capture.layouts import PLAIN, MapLayout, map_layout
from featviz.errors import FeatvizError, LayerError

if TYPE_CHECKING:
    from torch import nn


class _StopForward(Exception):
    """Raised from the last hook to end the forward pass early; never escapes this module."""


def _as_tensor(output: Any, path: str) -> torch.Tensor:
    """The tensor a module produced: itself, or the first tensor of a tuple/list/dict output."""
    tensor = first_tensor(output)
    if tensor is None:
        raise LayerError(f"layer {path} produced {type(output).__name__}, not a tensor",
                         hint="choose a layer whose output is a feature map")
    return tensor


def _release(stack: ExitStack | None, training: list[tuple[nn.Module, bool]]) -> None:
    """Remove the hooks a capture registered, then put every module's train/eval flag back,
    also when removing a hook raised."""
    try:
        if stack is not None:
            stack.close()
    finally:
        restore_modes(training)


class ActivationCapture:
    """Context manager that records what the given layers output.

    >>> with ActivationCapture(model, layers) as capture:
    ...     activations = capture.run(batch)   # {path: float32 (N, C, H, W)}

    Each hook keeps its own copy of the output: an in-place op after the layer (AlexNet's
    ``ReLU(inplace=True)`` after ``features.0``) would otherwise change what was captured.
    """

    def __init__(self, model: nn.Module, layers: Sequence[LayerRef], stop_early: bool = True,
                 copy: bool = True, inputs_of: Sequence[str] = (),
                 gate_calls: Mapping[str, set[int]] | None = None, keep_graph: bool = False) -> None:
        self.model = model
        self.keep_graph = keep_graph  # outputs keep their autograd graph (receptive fields need it)
        self.layers = list(layers)
        self.inputs_of = set(inputs_of)  # paths whose input is also kept, as "<path>:input"
        self.gate_calls = dict(gate_calls or {})  # "<path>:gate<k>": the k-th gate call inside path
        self.expected = len(self.layers) + len(self.inputs_of) + sum(len(k) for k in self.gate_calls.values())
        self.stop_early = stop_early
        self.copy = copy
        self.activations: dict[str, torch.Tensor] = {}
        self.output: torch.Tensor | None = None  # the model's output, when the pass ran to the end
        self._calls: dict[str, int] = {}  # layer path -> calls of its module so far in this pass
        self._stack: ExitStack | None = None
        self._training: list[tuple[nn.Module, bool]] = []

    def __enter__(self) -> ActivationCapture:
        self._training = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        self._stack = ExitStack()
        if not is_script(self.model):
            try:
                for ref in self.layers:
                    handle = ref.module.register_forward_hook(self._make_hook(ref.path, ref.call or 1))
                    self._stack.callback(handle.remove)
                    if ref.path in self.inputs_of:  # before the module runs: it may change its input in place
                        handle = ref.module.register_forward_pre_hook(self._make_input_hook(ref.path))
                        self._stack.callback(handle.remove)
                if self.gate_calls:
                    GateRecorder(self.model, self.gate_calls, self._keep).install(self._stack)
            except BaseException:
                self._stack.close()
                raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        _release(self._stack, self._training)
        self._stack = None

    def _make_hook(self, path: str, call: int) -> Any:
        """The hook that keeps the ``call``-th output (from 1) of the module as ``path``; a module
        that runs several times is checked by :mod:`featviz.capture.calls` before (a layer named
        without a call is its first)."""
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            self._calls[path] = self._calls.get(path, 0) + 1
            if self._calls[path] != call:  # another call of the module: never mixed in
                return
            tensor = _as_tensor(output, path)
            if not self.keep_graph:
                tensor = tensor.detach()
            self._keep(path, tensor.clone() if self.copy else tensor)

        return hook

    def _keep(self, key: str, tensor: torch.Tensor) -> None:
        self.activations[key] = tensor
        if self.stop_early and len(self.activations) == self.expected:
            raise _StopForward

    def _make_input_hook(self, path: str) -> Any:
        def hook(module: nn.Module, inputs: Any) -> None:
            key = f"{path}:input"
            if key not in self.activations:  # a module called twice: keep its first input
                given = _as_tensor(inputs, path).detach()
                self.activations[key] = given.clone() if self.copy else given

        return hook

    def run(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """Forward ``batch`` (float32 (N, 3, H, W) on the model's device); return the captures
        keyed by layer path, in the order the layers were requested."""
        self.activations = {}
        self.output = None
        self._calls = {}
        with torch.set_grad_enabled(self.keep_graph):
            if is_script(self.model):
                self._run_stack(batch)
                if not self.stop_early:  # the whole pass, by the model's own forward
                    self.output = _as_tensor(self.model(batch), "output")
            else:
                try:
                    self.output = _as_tensor(self.model(batch), "output")
                except _StopForward:
                    pass
        missing = [ref.path for ref in self.layers if ref.path not in self.activations]
        missing += [f"{p}:gate{k}" for p, ks in self.gate_calls.items() for k in ks
                    if f"{p}:gate{k}" not in self.activations]
        if is_script(self.model) and self.inputs_of:
            raise LayerError("layer inputs cannot be captured in a TorchScript model")
        if missing:
            raise LayerError(
                f"layer {missing[0]} was never run by the model's forward pass",
                hint="choose a module that the forward pass calls (see `featviz layers`)",
            )
        return dict(self.activations)

    def _run_stack(self, batch: torch.Tensor) -> None:
        """TorchScript modules take no Python hooks: run the feature stack one module after the
        other, as the seed script does, up to the last requested entry, and record the
        requested entries. (The model's own forward pass may do more between two entries,
        such as ResNet's flatten before ``fc``; that is why it stops as soon as it can.)"""
        stack = feature_stack(self.model)
        wanted = {ref.path for ref in self.layers}
        unknown = wanted - {path for path, _ in stack}
        if unknown:
            name = sorted(unknown)[0]
            raise LayerError(
                f"layer {name} cannot be captured in a TorchScript model: TorchScript takes no hooks, so "
                "featviz runs its feature stack one entry after another and sees only the entries' outputs",
                hint="pick a feature-stack entry (an index or a path listed by `featviz layers`), or pass the "
                     "model as a package.module:factory",
            )
        x, previous = batch, "the input"
        for path, module in stack:
            if not wanted - set(self.activations):
                return
            try:
                x = module(x)
            except RuntimeError as exc:
                raise LayerError(
                    f"layer {path} of a TorchScript model cannot take the output of {previous} "
                    f"({str(exc).strip().splitlines()[-1][:160]}): TorchScript takes no hooks, so featviz runs its "
                    "feature stack one entry after another, and the model's own forward pass does more in between",
                    hint="pick an earlier layer, or pass the model as a package.module:factory",
                ) from exc
            previous = path
            if path in wanted:
                self.activations[path] = x.detach().clone() if self.copy else x.detach()


def capture(model: nn.Module, layers: Sequence[LayerRef], batch: torch.Tensor,
            inputs_of: Sequence[str] = (), stop_early: bool = True,
            keep_output: bool = False, gate_calls: Mapping[str, set[int]] | None = None) -> dict[str, torch.Tensor]:
    """One forward pass of ``batch``; the outputs of ``layers`` keyed by path (and the inputs of
    the paths in ``inputs_of``, keyed ``<path>:input``, and the gate calls of ``gate_calls``,
    keyed ``<path>:gate<k>``). See :class:`ActivationCapture`."""
    with ActivationCapture(model, layers, stop_early=stop_early and not keep_output, inputs_of=inputs_of,
                           gate_calls=gate_calls) as recorder:
        captured = recorder.run(batch)
    if keep_output and recorder.output is not None:  # the whole pass ran: its result is the model's output
        captured[":output"] = recorder.output
    return captured


def capture_with_graph(model: nn.Module, layer: LayerRef, batch: torch.Tensor) -> torch.Tensor:
    """The output of ``layer`` for ``batch`` with its autograd graph kept, so that a gradient
    with respect to ``batch`` can be taken (:mod:`featviz.maps.receptive`). The pass stops at the layer.
    Token and channels-last outputs come as the feature map (N, C, H, W) the pictures show
    (:mod:`featviz.capture.layouts`), so unit (y, x) is the same unit everywhere."""
    if is_script(model):
        raise LayerError("receptive fields need a Python module: a TorchScript model takes no hooks",
                         hint="load the model from torchvision or a package.module:factory")
    with ActivationCapture(model, [layer], copy=False, keep_graph=True) as recorder:
        output = recorder.run(batch)[layer.path]
    layout = map_layout(model, layer, tuple(output.shape), (int(batch.shape[-2]), int(batch.shape[-1])))
    return output if layout is None else layout.to_map(output)


def output_shapes(model: nn.Module, layers: Sequence[LayerRef], example: torch.Tensor) -> dict[str, list[int]]:
    """Output shape of each layer (without the batch dimension) for ``example``; layers the
    forward pass does not reach are absent. Nothing is copied."""
    if is_script(model):  # only the feature stack's entries can be seen (see ActivationCapture._run_stack)
        entries = {path for path, _ in feature_stack(model)}
        layers = [ref for ref in layers if ref.path in entries]
    recorder = ActivationCapture(model, layers, stop_early=False, copy=False)
    shapes: dict[str, list[int]] = {}
    with recorder:
        try:
            import torch

            with torch.no_grad():
                if is_script(model):
                    recorder._run_stack(example)
                else:
                    model(example)
        except (LayerError, RuntimeError, AssertionError, ValueError):
            pass  # a layer that breaks the pass (or an input size the model refuses): the shapes so far stand
    for path, tensor in recorder.activations.items():
        shapes[path] = list(tensor.shape[1:])
    return shapes


def describe_layers(
    model: nn.Module, example: torch.Tensor, include_all: bool = False
) -> list[dict[str, Any]]:
    """Rows for ``featviz layers``: index, path, type and output shape for ``example``, and the
    feature map each output is drawn as (:mod:`featviz.capture.layouts`): ``map_shape`` [C, H, W]
    (None: no feature map) and ``layout`` (``"tokens"``, ``"channels_last"``, ``"nchw"``, or None;
    ``tokens``: prefix and grid, ``layout_error``: why featviz cannot tell), and ``calls``: how
    many times the module ran in the pass (2 for a ResNet block's ``relu``: pick one with
    ``--layer PATH@K``; 0 when never reached; None for a TorchScript model, which takes no hooks).

    ``example``: float32 (1, 3, H, W) on the model's device. Shapes come from one forward pass
    with hooks on every listed module (the shape of a module's first call; its calls are
    counted in the same pass); a module the forward pass never reaches has shape None.
    """
    stack = feature_stack(model)
    index_of = {path: i for i, (path, _) in enumerate(stack)}
    if include_all:
        listed = [(name, module) for name, module in model.named_modules() if name]
    else:
        listed = stack
    refs = [LayerRef(p, index_of.get(p), m) for p, m in listed]
    counter = None
    if is_script(model):
        shapes = output_shapes(model, refs, example)
    else:
        with CallCounter(model) as counter:
            shapes = output_shapes(model, refs, example)
    size = (int(example.shape[-2]), int(example.shape[-1]))
    rows = []
    for path, module in listed:
        ref = LayerRef(path, index_of.get(path), module)
        row: dict[str, Any] = {
            "index": index_of.get(path),
            "path": path,
            "type": ref.type_name,
            "output_shape": shapes.get(path),
            "map_shape": None,
            "layout": None,
            "calls": None if counter is None else counter.calls.get(path, 0),
        }
        if shapes.get(path) is not None:
            row.update(_map_facts(model, ref, shapes[path], size))
        rows.append(row)
    return rows


def _map_facts(model: nn.Module, ref: LayerRef, shape: list[int], size: tuple[int, int]) -> dict[str, Any]:
    """``map_shape``, ``layout`` (and ``tokens`` or ``layout_error``) of one output shape."""
    try:
        layout = map_layout(model, ref, [1, *shape], size)
    except FeatvizError as exc:
        return {"layout_error": str(exc)}
    if layout is None:
        return {}
    mapped = list(layout.to_map(torch.empty(1, *shape, device="meta")).shape[1:])
    facts: dict[str, Any] = {"map_shape": mapped, "layout": layout.kind}
    if layout.tokens is not None:
        facts["tokens"] = {"prefix": layout.tokens.prefix, "grid": list(layout.tokens.grid)}
    return facts


def feature_map_paths(model: nn.Module, example: torch.Tensor) -> list[str]:
    """The feature-stack entries whose output for ``example`` (float32 (1, 3, H, W)) is a
    feature map larger than 1x1 (N, C, H, W, or tokens / channels-last made one by
    :mod:`featviz.capture.layouts`): what ``--layer all`` means. A global pool's 1x1
    output and a classifier's (N, classes) are not; nor is a layer whose layout featviz
    cannot tell."""
    rows = describe_layers(model, example)
    return [row["path"] for row in rows
            if row["map_shape"] is not None and row["map_shape"][1] * row["map_shape"][2] > 1]


class GradientCapture:
    """Context manager for class-attention passes: one layer's output, and gradients that stop there.

    >>> with GradientCapture(model, layer) as grads:
    ...     logits = grads.run(batch)          # the model's output, float32 (N, classes)
    ...     grads.activations                  # float32 (N, C, H, W), a private copy
    ...     torch.autograd.grad(score, grads.leaf)

    The forward hook keeps ``activations = out.detach().clone()`` and lets the pass go on from a
    fresh leaf tensor (``leaf = out.detach().clone().requires_grad_(True)``, continued as
    ``leaf.clone()``): gradients are computed only from the layer up (nothing below it is
    differentiated), and an in-place op after the layer (AlexNet's ``ReLU(inplace=True)``)
    changes neither the captured activations nor the leaf. Parameters do not need gradients for
    the pass: their ``requires_grad`` flags are turned off on entry and every flag, and every
    module's train/eval mode, is restored on exit, also when the pass raises.

    ``replace``: with it the layer's output is not kept but replaced by ``replace(output)``
    (Ablation-CAM's ablated copies, float32 (K, C, H, W)); no leaf is made then.

    Token and channels-last layers (:mod:`featviz.capture.layouts`): :attr:`activations` is the
    output as a feature map (N, C, H, W) and :attr:`layout` says how it was made; the leaf keeps
    the layer's own shape (the model continues from it), so a gradient with respect to the leaf
    becomes a map by ``layout.to_map`` (what pytorch-grad-cam's ``reshape_transform`` does to
    activations and gradients alike); ``replace`` gets and returns maps.
    """

    def __init__(self, model: nn.Module, layer: LayerRef, with_grad: bool = True,
                 replace: Any = None) -> None:
        self.model = model
        self.layer = layer
        self.with_grad = with_grad
        self.replace = replace
        self.activations: torch.Tensor | None = None
        self.leaf: torch.Tensor | None = None
        self.layout: MapLayout | None = None  # how the output became a map; None: it is no feature map
        self.output_shape: tuple[int, ...] | None = None  # the layer's own output shape
        self._input_size: tuple[int, int] = (0, 0)
        self._stack: ExitStack | None = None
        self._calls = 0  # calls of the layer in the current pass

    def __enter__(self) -> GradientCapture:
        self._stack = ExitStack()
        try:
            self._stack.enter_context(frozen(self.model, "class attention"))
            handle = self.layer.module.register_forward_hook(self._hook)
            self._stack.callback(handle.remove)  # removed before the model is given back
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()

    def _hook(self, module: nn.Module, inputs: Any, output: Any) -> Any:
        if not isinstance(output, torch.Tensor):
            raise LayerError(f"layer {self.layer.path} produced {type(output).__name__}, not a tensor",
                             hint="class attention needs a layer whose output is one feature map")
        self._calls += 1
        wanted = self.layer.call or 1
        if self._calls > 1 and self.layer.call is None:  # never mix calls (featviz.capture.calls)
            raise LayerError(f"layer {self.layer.path} runs more than once in one forward pass",
                             hint=f"pick one call with --layer {self.layer.path}@K (K from 1), or choose a "
                                  "module that runs once, such as the block around it")
        if self._calls != wanted:  # another call of the module: it runs untouched
            return None
        self.output_shape = tuple(output.shape)
        self.layout = map_layout(self.model, self.layer, self.output_shape, self._input_size)
        layout = self.layout or PLAIN
        if self.replace is not None:
            return layout.from_map(self.replace(layout.to_map(output.detach())), output.detach())
        self.activations = layout.to_map(output.detach()).clone()
        if not self.with_grad:
            return None
        self.leaf = output.detach().clone().requires_grad_(True)
        return self.leaf.clone()

    def run(self, batch: torch.Tensor) -> torch.Tensor:
        """Forward ``batch`` (float32 (N, 3, H, W)); the model's output (its first tensor),
        differentiable with respect to :attr:`leaf` when ``with_grad``."""
        self.activations, self.leaf, self.layout, self._calls = None, None, None, 0
        self._input_size = (int(batch.shape[-2]), int(batch.shape[-1]))
        with torch.enable_grad() if self.with_grad else torch.no_grad():
            output = _as_tensor(self.model(batch), "output")
        if self._calls < (self.layer.call or 1):
            raise LayerError(f"layer {self.layer.path} was never run by the model's forward pass"
                             if self._calls == 0 else
                             f"layer {self.layer.path}: {self.layer.module_path} ran only {self._calls} "
                             f"time(s) in this forward pass",
                             hint="choose a module that the forward pass calls (see `featviz layers --all`)")
        return output
