"""Receptive fields: which input pixels can change the unit at (y, x) of a layer, and where that
rectangle lies in the ORIGINAL photo.

Method (works for any Python model, no architecture tables): the receptive field is the support
of the gradient of the unit with respect to the input, computed on a *positive surrogate* of the
model, because on the real weights zeros hide part of the field (a ReLU that is off, a max-pool
that routes the gradient to one element only, a weight that happens to be 0):

* a deep copy of the model (the user's model is not touched), in float32;
* every convolution and linear weight set to 1 / fan-in (each becomes an average: values stay
  about 1 at any depth), every bias to 0;
* batch norms made the identity (mean 0, variance 1, scale 1, shift 0);
* max-pools replaced by average pools of the same kernel, stride, padding and ceil mode (the
  gradient then reaches every element of a window);
* an all-ones input, so that every activation is positive and every ReLU passes its gradient.

What is reported is the bounding box of the support, so what must not vanish is the largest
gradient on the outermost row and column of a field: about (1/3)^depth for stacked 3x3
convolutions (the corner alone is (1/9)^depth), which float32 holds up to about 90 of them.
When any gradient of a chunk comes within 1e-30 of zero (float32 stops at 1e-45), the chunk is
computed again in float64, which holds fields hundreds of layers deep; a row lost to underflow
would show up first as such tiny values on the row inside it (neighbouring rows differ by a
factor of about the depth, not 1e15). Tested with 100 stacked convolutions, where float32 alone
is wrong.

For networks of convolutions, pools, batch norms, ReLU-like activations, residual sums and
concatenations, the support is then exactly the theoretical receptive field, clipped at the image
borders (zero padding contributes nothing). Layer/group norms, attention and other
data-dependent operations are not made positive here; their fields may come out smaller.

The result depends only on the architecture, the layer, the input size and the position, so
:class:`ReceptiveFields` computes each (layer, input size, y, x) once, several positions per
backward pass (each a separate copy of the input in one batch).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from featviz.capture.hooks import capture_with_graph
from featviz.capture.layers import resolve_layers
from featviz.capture.tokens import TokenLayout
from featviz.errors import LayerError
from featviz.models.preprocess import CropBox

#: Positions per backward pass: each is one input of the batch (memory grows with it).
CHUNK = 8


@dataclass(frozen=True)
class Field:
    """A receptive field in network-input pixels, half-open: rows top..bottom-1, columns left..right-1."""

    top: int
    left: int
    bottom: int
    right: int


#: Below this, a float32 gradient may be near underflow: the chunk is redone in float64.
TINY = 1e-30


def positive_surrogate(model: nn.Module) -> nn.Module:
    """A float32 deep copy of ``model`` whose gradient support is the receptive field (see the
    module docstring). ``model`` itself is left exactly as it was."""
    surrogate = copy.deepcopy(model).float().eval()
    for name, module in list(surrogate.named_modules()):
        replacement = _average_pool_for(module)
        if replacement is not None:
            _set_submodule(surrogate, name, replacement)
    with torch.no_grad():
        for module in surrogate.modules():
            _make_positive(module)
    for parameter in surrogate.parameters():
        parameter.requires_grad_(False)
    return surrogate


def _average_pool_for(module: nn.Module) -> nn.Module | None:
    if isinstance(module, nn.MaxPool2d):
        if module.dilation not in (1, (1, 1)):
            raise LayerError("receptive fields of dilated max-pools are not supported",
                             hint="choose a layer before the dilated pool")
        return nn.AvgPool2d(module.kernel_size, module.stride, module.padding, ceil_mode=module.ceil_mode,
                            count_include_pad=True)
    if isinstance(module, nn.AdaptiveMaxPool2d):
        return nn.AdaptiveAvgPool2d(module.output_size)
    return None


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, name, module)


def _make_positive(module: nn.Module) -> None:
    """Averaging weights, zero biases, identity batch norms; other parameters 1."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        if module.running_mean is not None and module.running_var is not None:
            module.running_mean.zero_()
            module.running_var.fill_(1.0)
        module.track_running_stats = module.running_mean is not None
    for name, parameter in module.named_parameters(recurse=False):
        if name == "bias":
            parameter.zero_()
        elif name == "weight" and isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
            parameter.fill_(1.0 / max(1, parameter[0].numel()))
        else:
            parameter.fill_(1.0)


def input_fields(surrogate: nn.Module, layer_path: str, input_size: tuple[int, int],
                 positions: Sequence[tuple[int, int]]) -> list[Field]:
    """The receptive field of unit (y, x) (summed over channels: they share it) of
    ``layer_path`` for an input of ``input_size`` (height, width), for each position.

    One backward pass per :data:`CHUNK` positions: the batch holds one all-ones input
    (N, 3, H, W) per position, and the gradient of each input is that position's alone. A chunk
    whose smallest gradient is below :data:`TINY` is redone in float64 (see the module docstring).
    """
    fields: list[Field] = []
    for start in range(0, len(positions), CHUNK):
        chunk = positions[start:start + CHUNK]
        gradient = _gradients(surrogate, layer_path, input_size, chunk)
        smallest = gradient[gradient > 0].min() if bool((gradient > 0).any()) else None
        if smallest is not None and gradient.dtype == torch.float32 and float(smallest) < TINY:
            gradient = _gradients(surrogate.double(), layer_path, input_size, chunk)  # stays float64 from now on
        support = gradient.abs().sum(dim=1) > 0  # bool (N, H, W)
        fields.extend(_bounding_field(plane) for plane in support)
    return fields


def _gradients(surrogate: nn.Module, layer_path: str, input_size: tuple[int, int],
               chunk: Sequence[tuple[int, int]]) -> torch.Tensor:
    """d(sum over channels of unit (y, x)) / d input, one input per position: (N, 3, H, W), in
    the surrogate's dtype. ``layer_path`` may pick a call (``layer1.0.relu@2``): the field of that call's output."""
    [ref] = resolve_layers(surrogate, [layer_path])
    first = next(iter(surrogate.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None else torch.float32
    inputs = torch.ones(len(chunk), 3, *input_size, dtype=dtype, device=device, requires_grad=True)
    output = capture_with_graph(surrogate, ref, inputs)
    height, width = output.shape[2:]
    for y, x in chunk:
        if not (0 <= y < height and 0 <= x < width):
            raise LayerError(f"position ({y}, {x}) is outside layer {layer_path}'s {height}x{width} map")
    rows = torch.arange(len(chunk), device=device)
    ys = torch.tensor([y for y, _ in chunk], device=device)
    xs = torch.tensor([x for _, x in chunk], device=device)
    picked = output[rows, :, ys, xs].sum()
    (gradient,) = torch.autograd.grad(picked, inputs)
    return gradient


def _bounding_field(support: torch.Tensor) -> Field:
    """Bounding rectangle of a bool (H, W) support, half-open."""
    rows = torch.nonzero(support.any(dim=1)).flatten()
    cols = torch.nonzero(support.any(dim=0)).flatten()
    if rows.numel() == 0:
        return Field(0, 0, 0, 0)
    return Field(int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)


def patch_field(layout: TokenLayout, y: int, x: int) -> Field:
    """Where token (y, x) of a vision transformer's patch grid lives: its own patch, in
    network-input pixels. Not its receptive field: after the first self-attention every token can
    see the whole image, so that field is the whole input for every token, which would make
    every atlas crop the whole photo. (The positive surrogate above is no answer for tokens
    either: it does not make LayerNorm or attention positive, and its fields of token layers
    came out as the patch, the whole input or empty, depending on the layer.)"""
    rows, cols = layout.patch
    return Field(y * rows, x * cols, (y + 1) * rows, (x + 1) * cols)


def photo_box(field: Field, input_size: tuple[int, int], crop: CropBox, photo_size: tuple[int, int]) -> list[float]:
    """``field`` (network-input pixels) as [left, top, right, bottom] in the ORIGINAL photo's
    pixels, through the crop box (the part of the photo that resize and crop kept, which spans
    the input), clipped to the photo (a crop larger than the resized photo pads it)."""
    height, width = input_size
    scale_x = (crop.right - crop.left) / width
    scale_y = (crop.bottom - crop.top) / height
    photo_w, photo_h = photo_size
    box = [crop.left + field.left * scale_x, crop.top + field.top * scale_y,
           crop.left + field.right * scale_x, crop.top + field.bottom * scale_y]
    clipped = [min(max(box[0], 0.0), photo_w), min(max(box[1], 0.0), photo_h),
               min(max(box[2], 0.0), photo_w), min(max(box[3], 0.0), photo_h)]
    return [round(v, 2) for v in clipped]


def _separable_fields(surrogate: nn.Module, layer_path: str, input_size: tuple[int, int],
                      positions: Sequence[tuple[int, int]]) -> dict[tuple[int, int], Field] | None:
    """The fields of many positions from few backward passes, or None where that is not sound.

    In a network of convolutions, pools, norms, element-wise operations, residual sums and
    concatenations, the rows a unit's field spans do not depend on the unit's column, nor its
    columns on its row. So the rows of every needed y come from units (y, x0), the columns of
    every needed x from units (y0, x): |Y| + |X| positions instead of |Y| x |X|. The assumption
    is then checked on up to :data:`CHUNK` other positions, computed directly; if any differs
    (a position-dependent model: masks, coordinate maps), None, and every position is computed
    directly."""
    ys = sorted({y for y, _ in positions})
    xs = sorted({x for _, x in positions})
    y0, x0 = ys[len(ys) // 2], xs[len(xs) // 2]
    probes = [(y, x0) for y in ys] + [(y0, x) for x in xs if (y0, x) not in {(y, x0) for y in ys}]
    probe_fields = dict(zip(probes, input_fields(surrogate, layer_path, input_size, probes), strict=True))
    rows = {y: probe_fields[(y, x0)] for y in ys}
    cols = {x: probe_fields[(y0, x)] for x in xs}
    predicted = {(y, x): Field(rows[y].top, cols[x].left, rows[y].bottom, cols[x].right) for y, x in positions}
    others = [p for p in positions if p not in probe_fields]
    sample = others[:: max(1, len(others) // CHUNK)][:CHUNK]
    for position, field in zip(sample, input_fields(surrogate, layer_path, input_size, sample), strict=True):
        if predicted[position] != field:
            return None
    return predicted


class ReceptiveFields:
    """Receptive fields of one model, computed on demand and cached per
    (layer, input size, y, x): they depend on nothing else.

    ``separable``: take the fields of many positions from their rows and columns
    (:func:`_separable_fields`, checked on a sample, direct where the check fails) when that
    needs fewer backward passes; False computes every position directly."""

    def __init__(self, model: nn.Module, separable: bool = True) -> None:
        self._model = model
        self.separable = separable
        self._surrogate: nn.Module | None = None
        self._cache: dict[tuple[str, tuple[int, int], int, int], Field] = {}

    def fields(self, layer_path: str, input_size: tuple[int, int],
               positions: Iterable[tuple[int, int]]) -> dict[tuple[int, int], Field]:
        """{(y, x): Field} for every position, computing only the ones not seen before."""
        wanted = sorted(set(positions))
        missing = [p for p in wanted if (layer_path, input_size, *p) not in self._cache]
        if missing:
            if self._surrogate is None:
                self._surrogate = positive_surrogate(self._model)
            found = None
            distinct = len({y for y, _ in missing}) + len({x for _, x in missing})
            if self.separable and distinct + CHUNK < len(missing):
                found = _separable_fields(self._surrogate, layer_path, input_size, missing)
            if found is None:
                found = dict(zip(missing, input_fields(self._surrogate, layer_path, input_size, missing), strict=True))
            for position, field in found.items():
                self._cache[(layer_path, input_size, position[0], position[1])] = field
        return {p: self._cache[(layer_path, input_size, p[0], p[1])] for p in wanted}
