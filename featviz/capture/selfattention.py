"""Self-attention, captured right: the attention probabilities of every transformer block.

Fused attention hides the probabilities: timm's ``Attention`` modules call
``F.scaled_dot_product_attention`` when their ``fused_attn`` flag is set (timm reads it once per
module, at construction), and torchvision's ``EncoderBlock`` asks its ``nn.MultiheadAttention``
for ``need_weights=False``. A hook on either collects nothing, silently. For the pass,
:class:`SelfAttentionCapture` therefore

* timm (ViT, DeiT, DINO, DINOv2, EVA-style modules: a ``fused_attn`` flag and an ``attn_drop``
  dropout applied right after the softmax): turns ``fused_attn`` off on the existing modules and
  records the output of ``attn_drop``, which in eval mode IS the softmax A that multiplies V;
* torchvision's ``VisionTransformer``: a forward pre-hook sets ``need_weights=True,
  average_attn_weights=False`` and a forward hook records the per-head weights (for gradients,
  the softmax tensor that ``bmm`` multiplies with V, of which the returned weights are a view);

and puts every flag, hook, train/eval mode and ``requires_grad`` back on exit, also when the
pass raises. Windowed attention (Swin) has no attention of the class token over the whole image
and is refused with a sentence saying what featviz draws instead; a transformer whose attention
featviz cannot reach (functional SDPA, an unknown attention class) is refused the same way,
never answered with an empty list.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from featviz.capture.frozen import frozen
from featviz.capture.layers import is_script
from featviz.errors import UsageError

__all__ = ["AttentionBlock", "SelfAttention", "SelfAttentionCapture", "attention_blocks", "blocks_upto",
           "self_attention"]

#: What featviz draws for a model whose attention it cannot draw (the end of every refusal).
INSTEAD = ("featviz draws its blocks' outputs as feature maps (--layer) and the CAM family on them "
           "(--cam gradcam) instead")


@dataclass(frozen=True)
class AttentionBlock:
    """One self-attention block: ``name`` is the block's module path (``blocks.3``,
    ``encoder.layers.encoder_layer_3``), ``path`` its attention module's, ``kind`` ``"timm"``
    or ``"torchvision"``."""

    name: str
    path: str
    module: nn.Module
    kind: str


@dataclass
class SelfAttention:
    """What one pass recorded. ``attentions[b]``: float32 (N, heads, T, T), block ``names[b]``'s
    probabilities (row t: how query token t spreads over the T keys; rows sum to 1; prefix tokens
    included, in token order); blocks in the order the model runs them. ``logits``: the model's
    output, float32 (N, classes)."""

    names: list[str]
    attentions: list[torch.Tensor]
    logits: torch.Tensor


def _parent(path: str) -> str:
    return path.rpartition(".")[0] or path


def _is_windowed(module: nn.Module) -> bool:
    return "windowattention" in type(module).__name__.lower()


def _is_timm(module: nn.Module) -> bool:
    return isinstance(getattr(module, "fused_attn", None), bool) and isinstance(getattr(module, "attn_drop", None),
                                                                               nn.Dropout)


def attention_blocks(model: nn.Module, model_name: str = "the model") -> list[AttentionBlock]:
    """The self-attention blocks of ``model`` in module order (which is the order timm and
    torchvision run them). Raises :class:`UsageError` for windowed attention (Swin), for a model
    with attention modules featviz cannot reach, and for a model with none (a CNN)."""
    if is_script(model):
        raise UsageError("attention capture needs Python hooks, which a TorchScript model does not take",
                         hint="load the model as a timm: or torchvision name, or a package.module:factory")
    blocks: list[AttentionBlock] = []
    windowed: list[str] = []
    unknown: list[str] = []
    for path, module in model.named_modules():
        if _is_windowed(module):
            windowed.append(path)
        elif isinstance(module, nn.MultiheadAttention) and module.batch_first and module._qkv_same_embed_dim:
            blocks.append(AttentionBlock(_parent(path), path, module, "torchvision"))
        elif _is_timm(module):
            blocks.append(AttentionBlock(_parent(path), path, module, "timm"))
        elif type(module).__name__.endswith(("Attention", "MultiheadAttention")) and not any(
                path.startswith(b.path + ".") for b in blocks):
            unknown.append(f"{path} ({type(module).__name__})")
    if windowed:
        raise UsageError(f"{model_name} uses windowed self-attention (Swin, e.g. {windowed[0]}): each window attends "
                         "only within itself, so there is no attention of a class token over the whole image to draw",
                         hint=INSTEAD)
    if unknown and not blocks:
        raise UsageError(f"featviz cannot capture the attention of {model_name}: its attention modules "
                         f"({', '.join(unknown[:3])}) compute it in one fused call that exposes no probabilities",
                         hint=INSTEAD)
    if not blocks:
        raise UsageError(f"{model_name} has no self-attention blocks: attention heads, rollout and relevance "
                         "need a vision transformer (timm ViT/DeiT/DINO/EVA or torchvision VisionTransformer)",
                         hint="for a CNN, use --cam gradcam (or another CAM method) on a convolutional layer")
    return blocks


class SelfAttentionCapture:
    """Context manager that records every block's attention probabilities during one pass.

    >>> with SelfAttentionCapture(model) as capture:
    ...     logits = capture.run(batch)    # float32 (N, classes); batch float32 (N, 3, H, W)
    ...     capture.names                  # ["blocks.0", "blocks.1", ...]
    ...     capture.attentions             # [float32 (N, heads, T, T)] per block, detached

    ``keep_graph=True``: the pass runs with gradients (from the input, the parameters' own
    ``requires_grad`` flags switched off for the pass) and ``capture.graph`` holds, per block,
    the very tensors that multiply V (timm: (N, heads, T, T); torchvision: (N·heads, T, T)),
    for ``torch.autograd.grad``; :meth:`gradients` reshapes the result. The model gets back its
    ``fused_attn`` flags, train/eval modes and ``requires_grad`` flags, and loses every hook, on
    exit, also when the pass raised.
    """

    def __init__(self, model: nn.Module, *, keep_graph: bool = False, model_name: str = "the model") -> None:
        self.model = model
        self.keep_graph = keep_graph
        self.blocks = attention_blocks(model, model_name)
        self.names = [b.name for b in self.blocks]
        self.attentions: list[torch.Tensor] = []
        self.graph: list[torch.Tensor] = []
        self._seen: dict[str, torch.Tensor] = {}
        self._stack: ExitStack | None = None

    def __enter__(self) -> SelfAttentionCapture:  # not typing.Self: Python 3.10 has none
        stack = ExitStack()
        self._stack = stack
        try:
            # eval, and no parameter gradients (those flow from the input with keep_graph), all put back
            stack.enter_context(frozen(self.model, "attention capture"))
            for block in self.blocks:
                if block.kind == "timm":
                    timm_attention: Any = block.module  # fused_attn: a plain bool attribute, read per call
                    stack.callback(setattr, timm_attention, "fused_attn", timm_attention.fused_attn)
                    timm_attention.fused_attn = False
                    probe: nn.Module = timm_attention.attn_drop
                    stack.callback(probe.register_forward_hook(self._timm_hook(block.name)).remove)
                else:
                    stack.callback(block.module.register_forward_pre_hook(_want_weights, with_kwargs=True).remove)
                    stack.callback(block.module.register_forward_hook(self._torchvision_hook(block.name)).remove)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._stack is not None:
            self._stack.close()
        self._stack = None

    def _timm_hook(self, name: str) -> Any:
        def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            self._keep(name, output)
        return hook

    def _torchvision_hook(self, name: str) -> Any:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            weights = output[1] if isinstance(output, tuple) and len(output) == 2 else None
            if isinstance(weights, torch.Tensor):
                base = weights._base  # the softmax that bmm multiplies V with; weights is its view
                self._keep(name, base if base is not None and base.numel() == weights.numel() else weights)
        return hook

    def _keep(self, name: str, tensor: torch.Tensor) -> None:
        if name not in self._seen:  # a block run twice: its first call is the one recorded
            self._seen[name] = tensor

    def run(self, batch: torch.Tensor) -> torch.Tensor:
        """Forward ``batch`` (float32 (N, 3, H, W), on the model's device); return the logits
        (N, classes) and fill :attr:`attentions` (and :attr:`graph` with ``keep_graph``).
        Raises :class:`UsageError` when a block recorded nothing or no probabilities."""
        self._seen = {}
        n = batch.shape[0]
        with torch.set_grad_enabled(self.keep_graph):
            given = batch.detach().requires_grad_(True) if self.keep_graph else batch
            output = self.model(given)
        logits = output[0] if isinstance(output, (tuple, list)) else output
        if not isinstance(logits, torch.Tensor):
            raise UsageError(f"the model returned {type(output).__name__}, not class logits (N, classes)")
        self.graph = []
        self.attentions = []
        for name in self.names:
            tensor = self._seen.get(name)
            if tensor is None:
                raise UsageError(f"featviz recorded no attention in block {name}: the block was never run, or "
                                 "computes its attention in a fused call", hint=INSTEAD)
            probabilities = tensor.detach().float().reshape(n, -1, *tensor.shape[-2:])
            # a spot check, not a full one (T² sums per head cost ~5 % of a forward): the first
            # and last query rows of every photo and head must be probabilities
            rows = probabilities[:, :, [0, -1], :].sum(dim=-1)
            if (probabilities.shape[-1] != probabilities.shape[-2] or probabilities.shape[1] < 1
                    or not torch.allclose(rows, torch.ones_like(rows), atol=1e-3)):
                raise UsageError(f"block {name} recorded a tensor of shape {tuple(tensor.shape)} that is not "
                                 "self-attention probabilities (square, rows summing to 1)", hint=INSTEAD)
            self.graph.append(tensor)
            # no copy: the softmax output is only read after the hook (``attn @ v``; dropout is
            # the identity in eval mode), in timm and in torch's multi_head_attention_forward
            self.attentions.append(probabilities)
        self._seen = {}
        return logits

    def gradients(self, score: torch.Tensor, retain_graph: bool = False, upto: int | None = None) -> list[torch.Tensor]:
        """d score / dA for the first ``upto`` blocks (None: all): float32 (N, heads, T, T), in
        block order. ``score``: a scalar from the logits of the last :meth:`run` (with
        ``keep_graph=True``)."""
        if not self.keep_graph:
            raise RuntimeError("gradients need SelfAttentionCapture(keep_graph=True)")
        count = len(self.graph) if upto is None else upto
        grads = torch.autograd.grad(score, self.graph[:count], retain_graph=retain_graph, allow_unused=True)
        out = []
        for name, grad, a in zip(self.names[:count], grads, self.attentions[:count], strict=True):
            if grad is None:
                raise UsageError(f"the class score does not depend on the attention of block {name}",
                                 hint="relevance needs every block up to the chosen one on the way to the logits")
            out.append(grad.detach().float().reshape(a.shape))
        return out



def _want_weights(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """torchvision's EncoderBlock asks for ``need_weights=False``: ask for per-head weights instead."""
    return args, {**kwargs, "need_weights": True, "average_attn_weights": False}


def self_attention(model: nn.Module, batch: torch.Tensor, model_name: str = "the model") -> SelfAttention:
    """One forward pass of ``batch`` (float32 (N, 3, H, W) on the model's device) that returns
    every block's attention probabilities: see :class:`SelfAttention`. The logits equal those of
    the model without capture (unfused attention computes the same softmax, to float rounding)."""
    with SelfAttentionCapture(model, model_name=model_name) as capture:
        logits = capture.run(batch)
    return SelfAttention(list(capture.names), list(capture.attentions), logits.detach().float())


def blocks_upto(names: Sequence[str], chosen: str | None) -> int:
    """How many blocks lead up to and include the block called ``chosen`` (None: all of them).
    Raises :class:`UsageError` naming the blocks when ``chosen`` is none of them."""
    if chosen is None:
        return len(names)
    if chosen in names:
        return names.index(chosen) + 1
    inside = [n for n in names if chosen.startswith(n + ".")]
    if inside:
        return names.index(inside[0]) + 1
    shown = ", ".join(names[:3]) + (f", …, {names[-1]}" if len(names) > 3 else "")
    raise UsageError(f"layer {chosen} is no transformer block: attention maps are drawn at a block ({shown})",
                     hint=f"use --layer {names[-1]} (the last block) or another block listed")
