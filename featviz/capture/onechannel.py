"""One output channel per image of a convolution: what the optimiser's channel objective reads.

Feature visualisation of channel c needs, from the layer, only channel c of image i's output
(image i belongs to one channel). A full :class:`torch.nn.Conv2d` computes all C_out channels for
every image and back-propagates through all of them; when the layer IS the convolution, the
objective's gradient is zero on all but one, so C_out - 1 of every C_out channels are work thrown
away. At AlexNet's ``features.3`` (192 channels, 5 x 5) that convolution is about half of a
64-image step, forward and backward (``benchmarks/optimize.py``).

:func:`one_channel_conv` computes image i's channel ``units[i]`` only, exactly as the convolution
defines it (the same weights, bias, padding mode, stride, dilation and groups), in two steps:

1. every tap's weighted sum of the input channels at every padded pixel, one batched matrix
   product: z[i, t, p] = sum_c w[units[i], c, t] x_pad[i, c, p] (t: the kernel's taps);
2. the output pixel (y, x) adds up tap t = (a, b) at the pixel it looks at:
   out[i, y, x] = sum_t z[i, t, y * stride + a * dilation, x * stride + b * dilation] + bias,
   as a sum of strided views (:class:`_TapSum`, whose backward writes each tap's view once).

Step 1 computes every tap at every padded pixel, also those a stride skips, so it pays only when
``z`` is smaller than the convolution's whole output: :func:`worth_picking` says when (stride 1
and 5 x 5 into 192 channels: 25 taps against 192 channels, yes; AlexNet's first layer, 11 x 11
at stride 4: 121 taps at 16 times the output's pixels against 64 channels, no). It also refuses
any module whose output it cannot vouch for: a subclass of Conv2d (its forward may differ:
timm's ``Conv2dSame``, weight standardisation), a replaced ``forward``, or hooks of others on the
module (:func:`is_plain_conv`). The engine then runs the plain convolution.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional


def is_plain_conv(module: nn.Module) -> bool:
    """Whether ``module`` is a :class:`~torch.nn.Conv2d` whose output :func:`one_channel_conv`
    can vouch for: the class itself (not a subclass), its own ``forward``, and no hooks (call this
    before registering any of one's own)."""
    return (type(module) is nn.Conv2d and "forward" not in module.__dict__
            and not (module._forward_pre_hooks or module._forward_hooks or module._backward_hooks))


def worth_picking(module: nn.Conv2d, inputs: torch.Tensor) -> bool:
    """Whether :func:`one_channel_conv`'s tap sums (N, taps, padded pixels) hold fewer numbers
    than the convolution's full output (N, C_out, H', W') for this (N, C, H, W) batch."""
    if inputs.dim() != 4:
        return False
    height, width = _padded_size(module, inputs)
    out_height, out_width = _output_size(module, height, width)
    taps = module.kernel_size[0] * module.kernel_size[1]
    return taps * height * width < module.out_channels * out_height * out_width


def one_channel_conv(module: nn.Conv2d, inputs: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
    """Channel ``units[i]`` of ``module(inputs)[i]`` for every image i: float (N, H', W'),
    differentiable with respect to ``inputs`` (float (N, C_in, H, W)); the module's weights are
    read, not differentiated."""
    weight = module.weight.detach()[units]  # (N, C_in / groups, kh, kw)
    if module.groups > 1:  # unit u reads the input channels of its group only
        per_group = module.in_channels // module.groups
        group = units // (module.out_channels // module.groups)
        channels = group[:, None] * per_group + torch.arange(per_group, device=units.device)
        inputs = inputs[torch.arange(inputs.shape[0], device=units.device)[:, None], channels]
    padded = _pad(module, inputs)
    taps = weight.flatten(2).transpose(1, 2)  # (N, kh * kw, C_in / groups)
    sums = torch.bmm(taps, padded.flatten(2))  # (N, kh * kw, Hp * Wp)
    height, width = padded.shape[2:]
    out = _TapSum.apply(sums.view(-1, *module.kernel_size, height, width), module.stride, module.dilation,
                        _output_size(module, height, width))
    if module.bias is not None:
        out = out + module.bias.detach()[units].view(-1, 1, 1)
    picked: torch.Tensor = out
    return picked


def _pad_amounts(module: nn.Conv2d) -> tuple[int, int, int, int]:
    """(left, right, top, bottom), as Conv2d pads ("same": the extra pixel right and bottom)."""
    if module.padding == "valid":
        return 0, 0, 0, 0
    if module.padding == "same":
        amounts: list[int] = []
        for dilation, kernel in zip(reversed(module.dilation), reversed(module.kernel_size), strict=True):
            total = dilation * (kernel - 1)
            amounts += [total // 2, total - total // 2]
        return amounts[0], amounts[1], amounts[2], amounts[3]
    rows, cols = (int(amount) for amount in module.padding)  # a pair of ints once not a string
    return cols, cols, rows, rows


def _padded_size(module: nn.Conv2d, inputs: torch.Tensor) -> tuple[int, int]:
    left, right, top, bottom = _pad_amounts(module)
    return inputs.shape[2] + top + bottom, inputs.shape[3] + left + right


def _pad(module: nn.Conv2d, inputs: torch.Tensor) -> torch.Tensor:
    amounts = _pad_amounts(module)
    if not any(amounts):
        return inputs
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    return functional.pad(inputs, amounts, mode=mode)


def _output_size(module: nn.Conv2d, height: int, width: int) -> tuple[int, int]:
    """The convolution's output (H', W') for a padded input of (height, width)."""
    return tuple(  # type: ignore[return-value]
        (side - dilation * (kernel - 1) - 1) // stride + 1
        for side, kernel, stride, dilation in zip((height, width), module.kernel_size, module.stride,
                                                  module.dilation, strict=True))


def _tap_view(tensor: torch.Tensor, a: int, b: int, stride: tuple[int, ...], dilation: tuple[int, ...],
              size: tuple[int, int]) -> torch.Tensor:
    """Tap (a, b)'s pixels for every output pixel: a strided view (N, H', W') of (N, kh, kw, Hp, Wp)."""
    top, left = a * dilation[0], b * dilation[1]
    return tensor[:, a, b, top:top + stride[0] * (size[0] - 1) + 1:stride[0],
                  left:left + stride[1] * (size[1] - 1) + 1:stride[1]]


class _TapSum(torch.autograd.Function):
    """out[i, y, x] = sum over taps (a, b) of sums[i, a, b, y * s + a * d, x * s + b * d]."""

    @staticmethod
    def forward(ctx: Any, sums: torch.Tensor, stride: tuple[int, ...], dilation: tuple[int, ...],
                size: tuple[int, int]) -> torch.Tensor:
        ctx.shape, ctx.stride, ctx.dilation, ctx.size = sums.shape, stride, dilation, size
        out = sums.new_zeros(sums.shape[0], *size)
        for a in range(sums.shape[1]):
            for b in range(sums.shape[2]):
                out += _tap_view(sums, a, b, stride, dilation, size)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        grad_sums = grad.new_zeros(ctx.shape)
        for a in range(ctx.shape[1]):
            for b in range(ctx.shape[2]):
                _tap_view(grad_sums, a, b, ctx.stride, ctx.dilation, ctx.size).copy_(grad)
        return grad_sums, None, None, None
