"""A model held still for one pass: eval mode, no parameter gradients, everything put back.

Class-attention passes (:class:`featviz.capture.hooks.GradientCapture`), the attention capture
(:class:`featviz.capture.selfattention.SelfAttentionCapture`, whose relevance differentiates from
the input) and the optimiser's passes (:class:`featviz.capture.drive.DrivenLayer`) differentiate
with respect to something other than the weights (a layer's output, the input image), so the
parameters' ``requires_grad`` flags are turned off (no weight gradients are computed or kept)
and dropout and batch-norm statistics are frozen by ``eval()``. The user's model must come back
exactly as it was, also when the pass raised: every module's train/eval flag and every
parameter's flag are restored.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from featviz.capture.layers import is_script
from featviz.errors import LayerError


def restore_modes(training: list[tuple[nn.Module, bool]]) -> None:
    """Put back each module's own train/eval flag as recorded, one attribute per module that
    changed (``Module.train`` recurses into the children: calling it on every module costs
    O(modules²) attribute writes, measured at ~10 % of a DeiT-small forward)."""
    for module, flag in training:
        if module.training != flag:
            module.training = flag


@contextmanager
def frozen(model: nn.Module, needs: str) -> Iterator[nn.Module]:
    """Hold ``model`` still while the block runs (see the module doc); yields the model.
    ``needs``: what needs Python hooks, for the refusal of a TorchScript model (whose modules
    take no hooks): "class attention needs Python hooks, …"."""
    if is_script(model):
        raise LayerError(f"{needs} needs Python hooks, which a TorchScript model does not take",
                         hint="load the model as a torchvision name or a package.module:factory")
    training = [(module, module.training) for module in model.modules()]
    flags = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
    try:
        model.eval()
        for parameter, _ in flags:
            parameter.requires_grad_(False)
        yield model
    finally:
        restore_modes(training)
        for parameter, flag in flags:
            parameter.requires_grad_(flag)
