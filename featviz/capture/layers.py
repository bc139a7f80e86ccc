"""Which modules: resolve ``--layer`` specs to modules, and list the layers a user can pick.

A layer is named by its position in the model's *feature stack* (``model.features`` where the
model has one, as the seed script uses for AlexNet; otherwise the model's top-level children,
so ResNet's 0..7 are conv1 .. layer4) or by a dotted module path (``layer3.1.conv2``).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from featviz.errors import LayerError

if TYPE_CHECKING:
    from torch import nn

_INDEX = re.compile(r"^[+-]?\d+$")
#: ``--layer layer1.0.relu@2``: the second call of a module that runs more than once in a pass.
#: PyTorch forbids only "." and "" in a module's name, so a module may be *named* ``x@2`` (never
#: in torchvision or timm, whose names are attributes and indices); :func:`resolve_layers`
#: refuses a spec that names such a module and a call of another one.
CALL_SUFFIX = re.compile(r"^(?P<base>.+)@(?P<call>[^@]*)$")


@dataclass(frozen=True)
class LayerRef:
    """One module to capture: its dotted path, its feature-stack index (if any) and the module.

    ``call``: which call of the module, counted from 1, when it runs more than once in one
    forward pass and one was picked (``layer1.0.relu@2``); None: its only call. ``path`` is
    then ``<module path>@<call>``, the name its results, folders and summaries carry, and
    :attr:`module_path` is the module's own dotted path.
    """

    path: str
    index: int | None
    module: nn.Module
    call: int | None = None

    @property
    def type_name(self) -> str:
        return _type_name(self.module)

    @property
    def module_path(self) -> str:
        """The module's dotted path, without the ``@K`` of a picked call."""
        return self.path if self.call is None else self.path[: -len(f"@{self.call}")]


def with_call(ref: LayerRef, call: int) -> LayerRef:
    """``ref``'s module, its ``call``-th call (1-based): the path gets ``@call``."""
    return LayerRef(f"{ref.module_path}@{call}", ref.index, ref.module, call)


def is_script(module: Any) -> bool:
    return hasattr(module, "original_name") and type(module).__name__ == "RecursiveScriptModule"


def feature_stack(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The indexable layers: the stages of ``model.feature_info`` (timm's ``act1, layer1 ..
    layer4`` or ``stages.0 ..``), else ``model.features``' children, else the top-level children."""
    stages = feature_info_stages(model)
    if stages:
        return stages
    blocks = torchvision_vit_blocks(model)
    if blocks:
        return blocks
    features = getattr(model, "features", None)
    if features is not None and hasattr(features, "named_children"):
        children = list(features.named_children())
        if children:
            return [(f"features.{name}", module) for name, module in children]
    return list(model.named_children())


def feature_info_stages(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(path, module) of each stage a timm model's ``feature_info`` names (a list of dicts with a
    ``module`` key, or timm's ``FeatureInfo``); empty when the model has none, or a name does
    not resolve. Read by attribute, so this works without importing timm."""
    info = getattr(model, "feature_info", None)
    entries = getattr(info, "info", info)
    if not isinstance(entries, list) or not entries:
        return []
    stages: list[tuple[str, nn.Module]] = []
    for entry in entries:
        path = entry.get("module") if isinstance(entry, dict) else None
        if not isinstance(path, str) or not path:
            return []
        try:
            stages.append((path, model.get_submodule(path)))
        except AttributeError:
            return []
    return stages


def torchvision_vit_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """torchvision's VisionTransformer: its patch projection, each encoder block, and the final norm
    (``conv_proj``, ``encoder.layers.encoder_layer_K``, ``encoder.ln``), so that indices, ``--layer
    all`` and ``sweep`` reach the blocks; empty for any other model. Read by attribute (no import)."""
    encoder = getattr(model, "encoder", None)
    layers = getattr(encoder, "layers", None)
    if type(model).__name__ != "VisionTransformer" or not hasattr(model, "conv_proj") or layers is None:
        return []
    blocks = [(f"encoder.layers.{name}", module) for name, module in layers.named_children()]
    norm = getattr(encoder, "ln", None)
    return [("conv_proj", model.conv_proj), *blocks, *([("encoder.ln", norm)] if norm is not None else [])]


def split_specs(specs: Iterable[str | int]) -> list[str]:
    """``["0,3", 6]`` -> ``["0", "3", "6"]``: ``--layer`` is repeatable and comma-separated."""
    parts: list[str] = []
    for spec in specs:
        parts.extend(p.strip() for p in str(spec).split(",") if p.strip())
    return parts


def resolve_layers(model: nn.Module, specs: Iterable[str | int], model_name: str = "the model",
                   feature_maps: Collection[str] | None = None,
                   calls: Mapping[str, int] | None = None) -> list[LayerRef]:
    """Turn layer specs (indices, negative indices, dotted paths, ``all``) into modules.

    ``feature_maps``: the feature-stack paths whose output is a feature map (N, C, H, W) larger
    than 1x1, when known (:func:`featviz.capture.hooks.feature_map_paths`). Then ``all`` means those
    layers (not ResNet's global pool or classifier), and a negative index counts back from the
    last of them (ResNet's -1 is layer4); non-negative indices always count the whole stack.

    A spec may end in ``@K`` (``layer1.0.relu@2``, ``3@2``): the K-th call (from 1) of a module
    that runs more than once in one pass (:mod:`featviz.capture.calls` checks K against the
    count). ``calls``: calls per module path in one pass, when counted
    (:func:`featviz.capture.calls.count_calls`); then ``all`` lists each call of an entry that
    runs more than once as a layer of its own (``name@1``, ``name@2``), since each call is a
    different feature map. The result keeps the order given, without duplicates. Raises
    :class:`LayerError` with the valid range or the closest module names.
    """
    stack = feature_stack(model)
    parts = split_specs(specs)
    if not parts:
        raise LayerError("no layer was given", hint="pass --layer K, a module path, or all")
    mapped = [(i, p, m) for i, (p, m) in enumerate(stack) if feature_maps is None or p in feature_maps]
    refs: list[LayerRef] = []
    for part in parts:
        if part.lower() == "all":
            for i, p, m in mapped:
                count = (calls or {}).get(p, 1)
                ref = LayerRef(p, i, m)
                refs.extend([ref] if count <= 1 else [with_call(ref, k) for k in range(1, count + 1)])
        else:
            refs.append(_resolve_one(model, stack, mapped, part, model_name, feature_maps is not None))
    unique: dict[str, LayerRef] = {}
    for ref in refs:
        unique.setdefault(ref.path, ref)
    return list(unique.values())


def _resolve_one(model: nn.Module, stack: Sequence[tuple[str, nn.Module]],
                 mapped: Sequence[tuple[int, str, nn.Module]], part: str, model_name: str,
                 from_maps: bool) -> LayerRef:
    """One spec that is not ``all``: an index, a module path, either with ``@K``."""
    suffix = CALL_SUFFIX.match(part)
    names = _module_names(model)
    if suffix is not None and part in names:  # a module really named "x@2"
        if suffix["base"] in names or _INDEX.match(suffix["base"]):
            raise LayerError(f"layer {part!r} is ambiguous: {model_name} has a module of that name, and "
                             f"{part!r} also means call {suffix['call']} of {suffix['base']}",
                             hint="rename the module (featviz reads @K after a layer as its K-th call)")
        suffix = None
    if suffix is None:
        return _plain(model, stack, mapped, part, model_name, from_maps)
    call = suffix["call"]
    if not call.isdigit() or int(call) < 1:
        raise LayerError(f"layer {part!r}: @ must be followed by a call number, counted from 1 ({call!r} is not one)",
                         hint=f"e.g. --layer {suffix['base']}@2 for the second call of {suffix['base']}")
    return with_call(_plain(model, stack, mapped, suffix["base"], model_name, from_maps), int(call))


def _plain(model: nn.Module, stack: Sequence[tuple[str, nn.Module]], mapped: Sequence[tuple[int, str, nn.Module]],
           part: str, model_name: str, from_maps: bool) -> LayerRef:
    """An index or a module path, without a call."""
    if _INDEX.match(part) and int(part) < 0 and from_maps:
        return _from_end(stack, mapped, int(part), model_name)
    if _INDEX.match(part):
        return _by_index(stack, int(part), model_name)
    index_of = {path: i for i, (path, _) in enumerate(stack)}
    return LayerRef(part, index_of.get(part), _by_path(model, part, model_name))


def _module_names(model: nn.Module) -> set[str]:
    return {name for name, _ in model.named_modules() if name}


def _from_end(stack: Sequence[tuple[str, nn.Module]], mapped: Sequence[tuple[int, str, nn.Module]], index: int,
              model_name: str) -> LayerRef:
    """A negative index among the layers that yield feature maps."""
    if not -len(mapped) <= index < 0:
        among = "" if len(mapped) == len(stack) else ", among the layers that yield a feature map"
        raise LayerError(
            f"layer {index} is out of range: {model_name} has {_stack_name(stack)} 0..{len(stack) - 1}"
            f" (or -{len(mapped)}..-1 from the end{among})",
            hint=f"run `featviz layers --model {model_name}` to list them",
        )
    position, path, module = mapped[index]
    return LayerRef(path, position, module)


def _stack_name(stack: Sequence[tuple[str, nn.Module]]) -> str:
    return "feature layers" if stack and stack[0][0].startswith("features.") else "top-level layers"


def _by_index(stack: Sequence[tuple[str, nn.Module]], index: int, model_name: str) -> LayerRef:
    count = len(stack)
    if count == 0:
        raise LayerError(f"{model_name} has no sub-modules to index", hint="name a module path instead")
    if not -count <= index < count:
        raise LayerError(
            f"layer {index} is out of range: {model_name} has {_stack_name(stack)} 0..{count - 1}"
            f" (or -{count}..-1 from the end)",
            hint=f"run `featviz layers --model {model_name}` to list them",
        )
    position = index % count
    path, module = stack[position]
    return LayerRef(path, position, module)


def _by_path(model: nn.Module, path: str, model_name: str) -> nn.Module:
    modules = {name: module for name, module in model.named_modules() if name}
    if path in modules:  # not get_submodule: TorchScript modules do not support it
        found: nn.Module = modules[path]
        return found
    names = list(modules)
    close = difflib.get_close_matches(path, names, n=4, cutoff=0.5)
    hint = ("did you mean " + ", ".join(close) + "?") if close else (
        f"run `featviz layers --model {model_name} --all` to list module paths"
    )
    raise LayerError(f"{model_name} has no module named {path!r}", hint=hint)


_STAGE_BREAKS = ("ReLU", "ReLU6", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d")
_NOT_STAGES = ("BatchNorm", "GroupNorm", "LayerNorm", "ReLU", "SiLU", "GELU", "Hardswish", "Dropout",
               "MaxPool", "AvgPool", "Identity", "Flatten", "Linear")


def sweep_layers(model: nn.Module, calls: Mapping[str, int] | None = None) -> list[str]:
    """Default stages of ``featviz sweep``, shallow to deep.

    A ``features`` stack with ReLUs and pools (AlexNet, VGG): the output after each of them.
    A timm model: its ``feature_info`` stages. Otherwise the feature-stack entries that do real
    work (convolutions and blocks, not norms, activations, pools or the classifier): ResNet gives
    conv1, layer1 .. layer4. ``calls`` (calls per module path in one pass, when counted): a stage
    that runs more than once becomes one stage per call (``name@1``, ``name@2``), as in
    :func:`resolve_layers`' ``all``.
    """
    stages = feature_info_stages(model)
    stack = feature_stack(model)
    if stages:  # the model says what its stages are
        chosen = [path for path, _ in stages]
    elif stack and stack[0][0].startswith("features.") and any(
            _type_name(module) in _STAGE_BREAKS for _, module in stack):
        chosen = [path for path, module in stack if _type_name(module) in _STAGE_BREAKS]
    else:
        chosen = [path for path, module in stack if not any(word in _type_name(module) for word in _NOT_STAGES)]
    counts = calls or {}
    return [name for path in chosen
            for name in ([path] if counts.get(path, 1) <= 1 else [f"{path}@{k}" for k in range(1, counts[path] + 1)])]


def _type_name(module: nn.Module) -> str:
    """The module's class name, also for TorchScript modules (their ``original_name``)."""
    return str(module.original_name) if is_script(module) else type(module).__name__


def default_cam_layer(model: nn.Module, feature_maps: Collection[str], model_name: str = "the model",
                      blocks: Sequence[str] = ()) -> LayerRef:
    """The layer a class map is drawn at when none is named: the last feature-stack entry whose
    output is a feature map (N, C, H, W) larger than 1x1, i.e. the last spatial map before
    global pooling and the classifier (ResNet: ``layer4``; AlexNet and VGG: ``features``' last
    entry, the pool that pytorch-grad-cam's examples take as ``model.features[-1]``). With
    transformer maps (rollout, relevance, heads), ``blocks``, the model's self-attention blocks
    in order (:func:`featviz.capture.selfattention.attention_blocks`): the last of them, where
    rollout and relevance end (``blocks.11``, ``encoder.layers.encoder_layer_11``).

    A class map at layer 0 (ResNet's ``conv1``) means nothing: the class is decided after the
    last feature map, which is where CAM, Grad-CAM and their peers (torch-cam's
    ``locate_candidate_layer``, pytorch-grad-cam's examples) look. ``feature_maps``: the
    feature-stack paths whose output is such a map for the model's input
    (:func:`featviz.capture.hooks.feature_map_paths`; this module runs nothing). A model whose
    stack yields no feature map (a vision transformer's (N, T, D) tokens) is a
    :class:`LayerError`: featviz does not guess which tensor holds the class evidence.
    """
    stack = feature_stack(model)
    if blocks:
        index_of = {path: i for i, (path, _) in enumerate(stack)}
        return LayerRef(blocks[-1], index_of.get(blocks[-1]), _by_path(model, blocks[-1], model_name))
    mapped = [(i, path, module) for i, (path, module) in enumerate(stack) if path in feature_maps]
    if not mapped:
        raise LayerError(
            f"cannot tell which layer of {model_name} to draw class maps at: no layer of its "
            f"{_stack_name(stack)} outputs a feature map (N, C, H, W) larger than 1x1",
            hint=f"name one with --layer; `featviz layers --model {model_name}` lists them with their output shapes",
        )
    index, path, module = mapped[-1]
    return LayerRef(path, index, module)
