"""Differentiable capture for feature visualisation: one layer's output WITH its autograd graph
back to the input, and Lucid's redirected ReLU gradient so that a dead channel still gets a push.

:class:`DrivenLayer` is the optimiser's view of the model. On entry it puts the model in eval
mode and turns every parameter's ``requires_grad`` off (only the image is optimised); on exit it
removes its hooks and restores every module's train/eval flag and every parameter's flag, also
when the pass raised. Nothing on the model is changed in between: the redirected ReLU is a
:class:`~torch.overrides.TorchFunctionMode` active only during :meth:`DrivenLayer.run`, not a
module swap, and a convolution layer read one channel per image
(:mod:`featviz.capture.onechannel`) is skipped by a forward pre-hook that computes those
channels from its input, not replaced.

**Redirected ReLU** (Lucid, ``lucid/misc/redirected_relu_grad.py``): a ReLU whose input is
negative passes no gradient, so a channel that is 0 everywhere on the first random image would
stay black. Per sample of the batch, where the ordinary ReLU gradient is all zero, the gradient
is passed through anyway except where it would push an already negative input lower.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch.nn import functional
from torch.overrides import TorchFunctionMode

from featviz.capture.frozen import frozen
from featviz.capture.layers import LayerRef
from featviz.capture.onechannel import is_plain_conv, one_channel_conv, worth_picking
from featviz.errors import LayerError

if TYPE_CHECKING:
    from torch import nn


class _Stop(Exception):
    """Raised by the hook once the layer ran, when the rest of the network is not needed."""


class RedirectedReLU(torch.autograd.Function):
    """ReLU forward; Lucid's redirected gradient backward. ``x``: float (N, ...)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        negative = x < 0
        relu_grad = grad.masked_fill(negative, 0)
        if relu_grad.dim() < 2:
            return relu_grad
        alive = relu_grad.flatten(1).ne(0).any(dim=1)  # (N,): the ordinary gradient gets through
        if bool(alive.all()):  # the usual case once the images respond: the plain ReLU gradient
            return relu_grad
        # grad is d(loss)/d(out); a positive one pushes x lower under gradient descent
        redirected = grad.masked_fill(negative & (grad > 0), 0)
        return torch.where(alive.view(-1, *([1] * (grad.dim() - 1))), relu_grad, redirected)


class _RedirectMode(TorchFunctionMode):
    """Every ``F.relu`` / ``torch.relu`` call (nn.ReLU included, in place or not) becomes
    :class:`RedirectedReLU`; an in-place call returns a new tensor instead."""

    _RELUS: ClassVar[frozenset[Any]] = frozenset(
        {functional.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_})

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        if func in self._RELUS and args and isinstance(args[0], torch.Tensor) and args[0].requires_grad:
            return RedirectedReLU.apply(args[0])
        return func(*args, **(kwargs or {}))


class DrivenLayer:
    """Context manager: forward a batch and get ``layer``'s output with its graph.

    >>> with DrivenLayer(model, ref, need_output=False) as driven:
    ...     acts = driven.run(images)     # float32 (N, C, H, W), differentiable w.r.t. images

    ``need_output``: run the whole network and keep its output in :attr:`output` (the class
    objective); otherwise the pass stops once the layer ran. ``redirect``: redirected ReLU.
    ``pick``: int (N,), the one channel of each image that the caller will read; when the layer
    is a plain convolution and computing those channels alone is cheaper
    (:mod:`featviz.capture.onechannel`), :meth:`run` returns them, float (N, H', W'), and
    :attr:`picked` is True; otherwise it returns the whole output and :attr:`picked` is False.
    """

    def __init__(self, model: nn.Module, layer: LayerRef | None, need_output: bool = False,
                 redirect: bool = True, pick: torch.Tensor | None = None) -> None:
        self.model = model
        self.layer = layer
        self.need_output = need_output or layer is None
        self.redirect = redirect
        self.output: torch.Tensor | None = None
        self.picked = False  # whether the last run's result is the picked channels (N, H', W')
        self._pick = pick
        self._acts: torch.Tensor | None = None
        self._call = (layer.call if layer is not None else None) or 1  # ``layer@K``'s K, else the first
        self._calls = 0  # calls of the layer's module in the current pass
        self._pre_calls = 0  # the same, counted before each call (the pick's hook)
        self._stack: ExitStack | None = None

    def __enter__(self) -> DrivenLayer:
        self._stack = ExitStack()
        try:
            self._stack.enter_context(frozen(self.model, "optimising an image"))
            if self.layer is not None:
                if self._pick is not None and not self.need_output and is_plain_conv(self.layer.module):
                    pre = self.layer.module.register_forward_pre_hook(self._pick_hook)
                    self._stack.callback(pre.remove)
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

    def _hook(self, module: nn.Module, inputs: Any, output: Any) -> None:
        self._calls += 1
        if self._acts is not None or self._calls != self._call:
            return  # a module that runs several times: only the picked call (``layer@K``, else the first)
        tensor = output if isinstance(output, torch.Tensor) else next(
            (v for v in (output if isinstance(output, (tuple, list)) else ()) if isinstance(v, torch.Tensor)), None)
        if tensor is None:
            raise LayerError(f"layer {self.layer.path if self.layer else '?'} produced {type(output).__name__}, "
                             "not a tensor", hint="choose a layer whose output is a feature map")
        self._acts = tensor
        if not self.need_output:
            raise _Stop

    def _pick_hook(self, module: nn.Module, inputs: tuple[Any, ...]) -> None:
        """Before the layer's convolution runs: its picked channels instead, then stop."""
        self._pre_calls += 1
        if self._pre_calls != self._call or self._pick is None:
            return
        if inputs and isinstance(inputs[0], torch.Tensor) and isinstance(module, torch.nn.Conv2d) \
                and inputs[0].shape[0] == self._pick.shape[0] and worth_picking(module, inputs[0]):
            self._acts, self.picked = one_channel_conv(module, inputs[0], self._pick), True
            raise _Stop

    def run(self, images: torch.Tensor, redirect: bool | None = None) -> torch.Tensor | None:
        """Forward ``images`` (float32 (N, 3, H, W), normalised, requiring grad); the layer's
        output (float (N, C, ...); the picked channels, float (N, H', W'), when :attr:`picked`)
        with its graph, or None without a layer. ``redirect``: this pass's redirected ReLU,
        overriding the constructor's (None: the constructor's)."""
        self._acts, self.output, self._calls, self._pre_calls, self.picked = None, None, 0, 0, False
        with ExitStack() as stack:
            if self.redirect if redirect is None else redirect:
                stack.enter_context(_RedirectMode())
            try:
                result = self.model(images)
                self.output = result if isinstance(result, torch.Tensor) else None
            except _Stop:
                pass
        if self.layer is not None and self._acts is None:
            raise LayerError(f"layer {self.layer.path} was never run by the model's forward pass",
                             hint="choose a module that the forward pass calls (see `featviz layers`)")
        return self._acts
