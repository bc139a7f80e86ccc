"""Attention a network learned: squeeze-and-excitation blocks and their gates.

SENet (Hu et al. 2018) squeezes each channel to its mean, passes the vector through a small
bottleneck (FC, activation, FC) and a sigmoid, and multiplies the features by the result: the
gate g in (0, 1)^C is the network's own channel attention for this image. torchvision's
EfficientNet, MobileNetV3 and RegNetY use ``torchvision.ops.SqueezeExcitation``; a user's model
may hold a module of the same structure. featviz finds both and records each gate's output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import nn
from torchvision.ops import SqueezeExcitation

from featviz.errors import LayerError

if TYPE_CHECKING:

    from featviz.capture.layers import LayerRef


@dataclass(frozen=True)
class SEBlock:
    """A squeeze-and-excitation block: its path, and the child whose output is the gate."""

    path: str
    module: nn.Module
    gate_path: str
    gate: nn.Module


def _channels(layer: nn.Module, side: str) -> int | None:
    if isinstance(layer, nn.Conv2d):
        return layer.in_channels if side == "in" else layer.out_channels
    if isinstance(layer, nn.Linear):
        return layer.in_features if side == "in" else layer.out_features
    return None


def se_gate(module: nn.Module) -> tuple[str, nn.Module] | None:
    """The (child name, child) producing the gate if ``module`` is an SE block, else None.

    Recognised: ``torchvision.ops.SqueezeExcitation``, and any module whose children are, in
    order, at least two 1x1 convolutions or linear layers that map C channels back to C, and a
    last child that is a Sigmoid or Hardsigmoid (the structure of SENet's block). Not an
    ``nn.Sequential``: its output is the gate itself, not the features scaled by it.
    """
    if isinstance(module, SqueezeExcitation):
        return "scale_activation", module.scale_activation
    if isinstance(module, nn.Sequential):  # returns its last child's output: the gate, unscaled
        return None
    children = list(module.named_children())
    if len(children) < 3 or not isinstance(children[-1][1], (nn.Sigmoid, nn.Hardsigmoid)):
        return None
    projections = [
        child for _, child in children
        if isinstance(child, nn.Linear) or (isinstance(child, nn.Conv2d) and child.kernel_size == (1, 1))
    ]
    if len(projections) < 2:
        return None
    if _channels(projections[0], "in") != _channels(projections[-1], "out"):
        return None
    return children[-1]


def find_se_blocks(model: nn.Module) -> list[SEBlock]:
    """Every SE block of ``model``, in module order."""
    blocks = []
    for path, module in model.named_modules():
        found = se_gate(module)
        if found is not None:
            name, gate = found
            blocks.append(SEBlock(path, module, f"{path}.{name}" if path else name, gate))
    return blocks


def se_block_for(model: nn.Module, layer: LayerRef, model_name: str = "the model") -> SEBlock:
    """The SE block that ``layer`` names: the block itself, or the last block inside it.

    Raises :class:`LayerError` naming the nearest blocks when there is none.
    """
    blocks = find_se_blocks(model)
    for block in blocks:
        if block.path == layer.path:
            return block
    inside = [b for b in blocks if b.path.startswith(layer.path + ".") or not layer.path]
    if inside:
        return inside[-1]
    if not blocks:
        raise LayerError(
            f"{model_name} has no squeeze-and-excitation blocks, so it has no learned channel attention",
            hint="use --channel se, cbam or dct, or a model with SE blocks (efficientnet_b0, mobilenet_v3_small, regnet_y_400mf)",
        )
    order = {path: i for i, (path, _) in enumerate(model.named_modules())}
    where = order.get(layer.path, 0)
    nearest = sorted(blocks, key=lambda b: abs(order[b.path] - where))[:3]
    raise LayerError(
        f"layer {layer.path} is not and does not contain a squeeze-and-excitation block",
        hint="the nearest blocks are " + ", ".join(b.path for b in nearest)
        + f"; `featviz layers --model {model_name} --all` marks them all",
    )
