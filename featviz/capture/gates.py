"""Attention a network learned, recognised by what it computes, not by its class name.

A learned attention module multiplies its input by a gate that a gate activation inside it
produced: SENet's ``x * sigmoid(...)``, ECA's, CBAM's channel and spatial gates, Gather-Excite,
Global Context, BAM's ``x * (1 + sigmoid(...))``, torchvision's ``SqueezeExcitation``, or a
user's own block. featviz finds them with one probe forward pass (:func:`featviz.capture.gatetrace.trace_gates`
records every sigmoid, hard-sigmoid and softmax call and the input and output of the modules
that ran them) and keeps a module M with a gate call g when, for M's input x and output y,

    y == x * g   or   y == x * (1 + g)     (broadcast, up to float rounding)

for one reading of g: (C, 1, 1) is channel attention, (1, H, W) spatial attention, (C, H, W) a
full 3-D map (BAM). The innermost such module owns the gate (CBAM's ``channel`` and ``spatial``,
not the CBAM module around them). Two softmax gates are recognised by shape, since the tensor
they weight is not M's input: a softmax over dimension 1 of size R >= 2 holding R x C values for
M's C output channels is a *branch* attention (Selective Kernel, Split Attention: the weight of
each branch per channel), and a softmax over the last dimension holding H x W values for M's
(C, H, W) input is a *context* map (Global Context's attention pooling, weights summing to 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from featviz.capture.gatetrace import GateCall, GateTrace, ModuleCall, trace_gates
from featviz.capture.layers import LayerRef
from featviz.errors import LayerError

KINDS = ("channel", "spatial", "3d", "branch", "context")
# what --channel learned can draw (3-D: spatial mean; branch: branch 0's share)
CHANNEL_KINDS = ("channel", "3d", "branch")
SPATIAL_KINDS = ("spatial", "3d", "context")  # what --spatial learned can draw (3-D: its channel mean)


@dataclass(frozen=True)
class Gate:
    """One learned gate: the module that applies it and how to find it again.

    ``call``: the index k of the gate activation among those the owner's forward runs, so that
    :func:`featviz.capture.hooks.capture` records it as ``"<path>:gate<k>"``. ``source``: the
    submodule that computed it (``layer1.0.se.gate``), or ``<path>:<function>`` for a function
    call. ``offset``: 1 where the module multiplies by 1 + g (BAM), else 0. ``branches``: R for
    a branch gate, else 1.
    """

    path: str
    module: nn.Module
    kind: str
    call: int
    function: str
    source: str
    offset: float = 0.0
    branches: int = 1

    @property
    def key(self) -> str:
        return f"{self.path}:gate{self.call}"


def probe_input(model: nn.Module, height: int, width: int) -> torch.Tensor:
    """A seeded random input (1, 3, H, W) on the model's device: not zeros, so that a gate
    cannot match by multiplying zeros; the caller's RNG is left alone."""
    parameter = next(iter(model.parameters()), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    generator = torch.Generator().manual_seed(0)
    return torch.randn(1, 3, height, width, generator=generator).to(device)


def find_gates(model: nn.Module, example: torch.Tensor) -> list[Gate]:
    """Every learned gate of ``model`` met during a forward pass of ``example`` ((1, 3, H, W)),
    in the order the gates ran. A model that cannot run ``example`` is a :class:`LayerError`."""
    try:
        trace = trace_gates(model, example)
    except RuntimeError as exc:
        raise LayerError(f"cannot look for learned attention: the model fails on a {tuple(example.shape)} input "
                         f"({str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__})",
                         hint="check --resize/--crop, or that the model takes 3-channel images") from exc
    gates: list[Gate] = []
    for index, call in enumerate(trace.calls):
        gate = _owner(trace, index, call)
        if gate is not None:
            gates.append(gate)
    return gates


def _owner(trace: GateTrace, index: int, call: GateCall) -> Gate | None:
    for path in reversed(call.modules):  # innermost first
        module_call = trace.modules.get(path)
        if module_call is None or index not in module_call.calls:
            continue
        found = _match(module_call, call)
        if found is not None:
            kind, offset, branches = found
            return Gate(path, module_call.module, kind, call.counts[path], call.function,
                        _source(call, path), offset, branches)
    return None


def _source(call: GateCall, owner: str) -> str:
    inner = call.modules[-1] if call.modules else owner
    return inner if inner != owner else f"{owner}:{call.function}"


def _match(module_call: ModuleCall, call: GateCall) -> tuple[str, float, int] | None:
    x, y, g = module_call.input, module_call.output, call.output
    if call.function == "softmax":
        return _match_softmax(x, y, g, call.dim)
    if x is None or y is None or x.dim() != 4 or x.shape != y.shape or g.shape[0] != x.shape[0]:
        return None
    batch, channels, height, width = x.shape
    per_sample = g.numel() // batch
    readings = [(kind, shape) for kind, shape, size in (
        ("channel", (batch, channels, 1, 1), channels), ("spatial", (batch, 1, height, width), height * width),
        ("3d", (batch, channels, height, width), channels * height * width)) if size == per_sample]
    xf, yf = x.double(), y.double()
    tolerance = 1e-6 + 1e-4 * float(yf.abs().max())
    for kind, shape in readings:
        gate = g.double().reshape(shape)
        for offset in (0.0, 1.0):
            if torch.allclose(yf, xf * (gate + offset), rtol=1e-4, atol=tolerance):
                return kind, offset, 1
    return None


def _match_softmax(x: torch.Tensor | None, y: torch.Tensor | None, g: torch.Tensor,
                   dim: int | None) -> tuple[str, float, int] | None:
    if dim is None or y is None or y.dim() != 4:
        return None
    dim = dim % g.dim()
    batch = g.shape[0]
    per_sample = g.numel() // batch
    if dim == 1 and g.shape[1] >= 2 and per_sample == g.shape[1] * y.shape[1]:
        return "branch", 0.0, int(g.shape[1])
    if dim == g.dim() - 1 and x is not None and x.dim() == 4 and per_sample == x.shape[2] * x.shape[3] \
            and g.shape[-1] == x.shape[2] * x.shape[3]:
        return "context", 0.0, 1
    return None


def gate_values(gate: Gate, raw: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
    """The captured gate ``raw`` in the shape of its kind, float32 on its device:
    channel (N, C); spatial and context (N, H, W); 3d (N, C, H, W); branch (N, R, C).
    ``activations``: the owner's output (N, C, H, W), for the sizes."""
    batch, channels, height, width = activations.shape
    values = raw.float()
    if gate.kind == "channel":
        return values.reshape(batch, channels)
    if gate.kind == "branch":
        return values.reshape(batch, gate.branches, channels)
    if gate.kind == "3d":
        return values.reshape(batch, channels, height, width)
    return values.reshape(batch, values.numel() // batch).reshape(batch, *_grid(values.numel() // batch, activations))


def _grid(size: int, activations: torch.Tensor) -> tuple[int, int]:
    height, width = activations.shape[2:]
    if size == height * width:
        return int(height), int(width)
    raise LayerError(f"a spatial gate of {size} values does not fit a {height}x{width} feature map")


def channel_gate(values: torch.Tensor, gate: Gate) -> torch.Tensor:
    """(N, C) channel weights from a channel gate, the spatial mean of a 3-D gate, or the share
    of branch 0 of a branch gate (N, R, C) (with two branches, branch 1 gets the rest)."""
    if gate.kind == "3d":
        return values.mean(dim=(2, 3))
    return values[:, 0] if gate.kind == "branch" else values


def spatial_gate(values: torch.Tensor, gate: Gate) -> torch.Tensor:
    """(N, H, W) in [0, 1]: a spatial gate as computed, the channel mean of a 3-D gate, or a
    context map scaled by its maximum (its weights sum to 1, so their size says nothing)."""
    if gate.kind == "3d":
        return values.mean(dim=1)
    if gate.kind == "context":
        return values / values.flatten(1).amax(dim=1).clamp_min(1e-12)[:, None, None]
    return values


def gate_for(gates: list[Gate], model: nn.Module, ref: LayerRef, kinds: tuple[str, ...],
             model_name: str, option: str) -> Gate:
    """The gate of one of ``kinds`` that ``ref`` names: owned by the layer itself, else the last
    one inside it. Raises :class:`LayerError` naming the nearest such gates."""
    fitting = [g for g in gates if g.kind in kinds]
    own = [g for g in fitting if g.path == ref.path]
    if own:
        return own[-1]
    inside = [g for g in fitting if g.path.startswith(ref.path + ".") or not ref.path]
    if inside:
        return inside[-1]
    what = "squeeze-and-excitation blocks or other learned channel gates" if "channel" in kinds \
        else "learned spatial gates (CBAM's or BAM's spatial branch, Global Context)"
    if not fitting:
        raise LayerError(f"{model_name} has no {what}, so it has no learned attention for {option}",
                         hint=_no_gate_hint(option))
    order = {path: i for i, (path, _) in enumerate(model.named_modules())}
    where = order.get(ref.path, 0)
    nearest = sorted(dict.fromkeys(g.path for g in fitting), key=lambda p: abs(order.get(p, 0) - where))[:3]
    raise LayerError(
        f"layer {ref.path} is not and does not contain one of the {what} ({option})",
        hint="the nearest are " + ", ".join(nearest) + f"; `featviz layers --model {model_name} --all` marks them all",
    )


def _no_gate_hint(option: str) -> str:
    if "channel" in option:
        return ("use --channel se, cbam or dct, or a model with SE blocks (efficientnet_b0, mobilenet_v3_small, "
                "regnet_y_400mf, timm:seresnet18)")
    return "use --spatial mean, max or meanmax, or a model with CBAM or BAM blocks"


def gate_kinds(gates: list[Gate]) -> dict[str, list[str]]:
    """Module path -> the kinds of the gates it owns, for ``featviz layers``."""
    kinds: dict[str, list[str]] = {}
    for gate in gates:
        kinds.setdefault(gate.path, [])
        if gate.kind not in kinds[gate.path]:
            kinds[gate.path].append(gate.kind)
    return kinds


def every_gate(gates: list[Gate], kinds: tuple[str, ...], model_name: str, option: str) -> list[Gate]:
    """``--layer all`` with a learned option: every gate of those kinds, one per module."""
    chosen = list({g.path: g for g in gates if g.kind in kinds}.values())
    if not chosen:
        raise LayerError(f"{model_name} has no learned gates for {option}", hint=_no_gate_hint(option))
    return chosen


def learned_channel(gate: Gate, captured: dict[str, torch.Tensor]
                    ) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, Any]]:
    """``--channel learned`` at ``gate``'s module: (w (N, C) in (0, 1), the module's input
    (N, C, H, W) or None for a branch gate, summary fields). w = g for a channel gate, the
    spatial mean of a 3-D gate, branch 0's weight for a branch gate (all branches (N, R, C) go
    to ``raw_gates["branch_weights"]``)."""
    before = captured[f"{gate.path}:input"].float()
    values = gate_values(gate, captured[gate.key], captured[gate.path] if gate.kind == "branch" else before)
    weights = channel_gate(values, gate)
    extra: dict[str, Any] = {"se_block": gate.path, "gate_module": gate.source, "gate_kind": gate.kind,
                   "gate_function": gate.function, "gate": weights}
    if gate.offset:
        extra["gate_offset"] = gate.offset
    if gate.kind == "3d":
        extra["raw_gates"] = {"gate_3d": values}
    if gate.kind == "branch":  # the input is not what the branches weight: no before|after picture
        extra["raw_gates"] = {"branch_weights": values}
        return weights, None, extra
    return weights, before, extra


def learned_spatial(gate: Gate, captured: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
    """``--spatial learned``: (the gate (N, h, w) in [0, 1] at its module's resolution, summary
    fields)."""
    values = gate_values(gate, captured[gate.key], captured[f"{gate.path}:input"].float())
    extra: dict[str, Any] = {"spatial_gate": gate.path, "spatial_gate_module": gate.source,
                             "spatial_gate_kind": gate.kind}
    if gate.offset:
        extra["spatial_gate_offset"] = gate.offset
    if gate.kind == "3d":
        extra["raw_gates"] = {"gate_3d": values}
    return spatial_gate(values, gate), extra
