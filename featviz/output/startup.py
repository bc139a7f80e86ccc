"""What a :class:`featviz.output.pipeline.Visualizer` does before the first photo.

Loading the model, resolving the layers (or choosing the class-map default), finding learned
gates, building the class-map and transformer explainers and checking every layer on a blank
input are one responsibility: everything that can fail on the user's options fails here, before
any photo is read. :mod:`featviz.output.pipeline` holds the rest (the capture pass, drawing a
batch, the one-call API); its ``Visualizer`` inherits this start-up.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from featviz.capture.calls import check_calls, count_calls
from featviz.capture.gates import CHANNEL_KINDS, SPATIAL_KINDS, find_gates, gate_for, probe_input
from featviz.capture.gates import every_gate as all_gates
from featviz.capture.hooks import feature_map_paths
from featviz.capture.layers import LayerRef, default_cam_layer, resolve_layers, split_specs
from featviz.capture.layouts import MapLayout, as_feature_maps
from featviz.capture.selfattention import attention_blocks
from featviz.errors import LayerError, UsageError
from featviz.maps.explain import build_explainers
from featviz.maps.vitexplain import build_transformer_explainers, is_transformer_method
from featviz.models.build import load_model
from featviz.output.options import RenderOptions
from featviz.output.tokenextras import needs_block, pca_layers, token_runner

if TYPE_CHECKING:
    from torch import nn

    from featviz.maps.tokenpcafit import RunBasis
    from featviz.models.build import LoadedModel


class VisualizerStartup:
    """The start-up half of :class:`featviz.output.pipeline.Visualizer` (see there for the
    arguments); the capture pass, :meth:`_capture`, is the subclass's."""

    def __init__(self, model: str = "alexnet", weights: str | None = "DEFAULT",
                 layers: Iterable[str | int] | None = None,
                 *, seed: int = 0, device: str = "cpu", resize: int | None = None, crop: int | None = None,
                 no_crop: bool = False, options: RenderOptions | None = None,
                 loaded: LoadedModel | None = None, weights_file: str | os.PathLike[str] | None = None,
                 trust_pickle: bool = False, model_kwargs: dict[str, Any] | None = None,
                 default_layers: Callable[[nn.Module, Mapping[str, int]], list[str]] | None = None) -> None:
        self.options = (options or RenderOptions()).validate()
        self.loaded = loaded or load_model(model, weights, seed=seed, device=device, weights_file=weights_file,
                                           trust_pickle=trust_pickle, model_kwargs=model_kwargs)
        self.preprocess = self.loaded.preprocess.with_overrides(resize, crop, no_crop)
        for name, value in (("--resize", self.preprocess.resize), ("--crop", self.preprocess.crop)):
            if value is not None and value < 1:
                raise UsageError(f"{name} must be a positive number of pixels, got {value}",
                                 hint=f"e.g. {name} 224, or leave it out for the weights' own")
        vit_methods = [m for m in self.options.cam if is_transformer_method(m)]
        # calls per module in one pass: a module that runs twice is drawn only at a picked call (layer@K)
        self.calls: dict[str, int] = self._count_calls()
        named = layers is not None or default_layers is None  # False: sweep's default stages
        if layers is None and default_layers is not None:  # sweep's stages, one per call of a repeated one
            layers = default_layers(self.loaded.module, self.calls)
        # --vit-stats, --artifacts: every block measured once on seeded noise (a CNN fails here)
        self.token_runner = token_runner(self.loaded.module, self._example(), self.options, self.loaded.name)
        self.pca_bases: dict[str, RunBasis] = {}  # --pca-tokens: layer path -> the run's basis (fit_token_pca)
        self.pca_layers: list[LayerRef] = []  # --pca-tokens: the layers coloured (pca_layers)
        # the layer featviz chose because none was named (class maps: the last feature map; transformer
        # maps: the last block), for the CLI to say
        self.default_layer: LayerRef | None = None
        self.default_layer_is_block = False
        block_default = bool(vit_methods) or self.options.heads or needs_block(self.options)
        if layers is None and (self.options.cam or block_default):
            module, name = self.loaded.module, self.loaded.name
            blocks = [b.name for b in attention_blocks(module, name)] if block_default else []
            maps = [] if blocks else feature_map_paths(module, self._blank())
            self.default_layer = default_cam_layer(module, maps, model_name=name, blocks=blocks)
            self.default_layer_is_block = bool(blocks)
            layers = [self.default_layer.path]
        layers = [0] if layers is None else list(layers)  # read more than once
        self.layers = resolve_layers(self.loaded.module, layers, model_name=self.loaded.name,
                                     feature_maps=self._feature_maps(layers), calls=self.calls)
        self.gates: dict[str, tuple[Any, Any]] = {}  # layer path -> (channel gate, spatial gate), learned only
        if self.options.channel == "learned" or self.options.spatial == "learned":
            self._use_gates(every_gate="all" in [p.lower() for p in split_specs(layers)])
        self._check_calls(bool(vit_methods))
        # --heads, rollout, relevance: blocks and capture checked first (a CNN layer is named as such)
        self.transformers: dict[str, Any] = (self._transformer_explainers(vit_methods)
                                             if self.options.heads or vit_methods else {})
        self._check_layers()
        if self.options.pca_tokens:
            self.pca_layers = pca_layers(self.layers, self.layouts, self.loaded.name, named=named)
        cam_methods = [m for m in self.options.cam if not is_transformer_method(m)]
        self.explainers: dict[str, Any] = self._class_explainers(cam_methods) if cam_methods else {}

    def _example(self) -> torch.Tensor:
        """Seeded noise at the network input's size, float32 (1, 3, H, W): checks before any photo."""
        height, width = self.preprocess.input_size(self.preprocess.crop or 224, self.preprocess.crop or 224)
        return torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(0)).to(self.device)

    def _class_explainers(self, methods: Sequence[str]) -> dict[str, Any]:
        """``--cam``: one :class:`featviz.maps.explain.ClassExplainer` per layer, every target and
        method checked on seeded noise before any photo is read."""
        return build_explainers(self.loaded.module, self.layers, methods, self.options.target,
                                self.loaded.categories, self._example(), cam_batch=self.options.cam_batch,
                                calls=self.calls or None, model_name=self.loaded.name)

    def _count_calls(self) -> dict[str, int]:
        """Calls per module path in one pass of the seeded stand-in input
        (:func:`featviz.capture.calls.count_calls`), once per visualizer; empty for a TorchScript
        model (no hooks) and for a model that cannot run at this size (:meth:`_check_layers`
        then says so)."""
        try:
            return dict(count_calls(self.loaded.module, self._example()))
        except (RuntimeError, AssertionError, ValueError):
            return {}

    def _check_calls(self, transformer_maps: bool) -> None:
        """A layer whose module runs more than once needs a picked call (``layer1.0.relu@2``),
        and a picked call must exist (:func:`featviz.capture.calls.check_calls`); learned gates and
        transformer maps find their modules by path and take no call."""
        picked = [ref for ref in self.layers if ref.call is not None]
        options = self.options
        if picked and (options.channel == "learned" or options.spatial == "learned" or options.heads
                       or transformer_maps or needs_block(options)):
            raise UsageError(f"layer {picked[0].path}: a picked call (@K) works with the activation views and the "
                             "CAM family, not with learned gates, --heads, rollout, relevance or the token "
                             "statistics (--vit-stats, --artifacts, --pca-tokens)",
                             hint=f"name the module without @K, or the block around it: `featviz layers --model "
                                  f"{self.loaded.name} --all` lists them")
        if self.calls:
            check_calls(self.calls, self.layers, self.loaded.name)

    def _transformer_explainers(self, methods: Sequence[str]) -> dict[str, Any]:
        """``--heads``, ``--cam rollout``/``relevance``: one
        :class:`featviz.maps.vitexplain.TransformerExplainer` per layer (each a transformer block),
        checked on seeded noise before any photo is read."""
        options = self.options
        return build_transformer_explainers(
            self.loaded.module, [ref.path for ref in self.layers], methods, options.target, self.loaded.categories,
            self._example(), heads=options.heads, fusion=options.rollout_fusion, discard=options.rollout_discard,
            start=options.rollout_start, model_name=self.loaded.name)

    def _maps(self, captured: dict[str, torch.Tensor], batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """The chosen layers' outputs as feature maps (N, C, H, W): token layers on their patch grid,
        channels-last layers permuted (:func:`featviz.capture.layouts.as_feature_maps`, the one place
        that decides); each layer's layout is kept for its summary."""
        captured, layouts = as_feature_maps(self.loaded.module, self.layers, captured,
                                            (int(batch.shape[-2]), int(batch.shape[-1])), self.loaded.name)
        self.layouts.update(layouts)
        return captured

    def _use_gates(self, every_gate: bool = False) -> None:
        """``--channel learned`` / ``--spatial learned``: find the model's gates (one probe pass,
        :mod:`featviz.capture.gates`); a layer with a learned channel gate becomes the module that applies
        it (``all``: every such module); the gates are captured in the same pass as the layers."""
        model, name = self.loaded.module, self.loaded.name
        side = self.preprocess.crop or 224
        gates = find_gates(model, probe_input(model, side, side))
        channel, spatial = self.options.channel == "learned", self.options.spatial == "learned"
        if every_gate:
            if channel and spatial:
                raise UsageError("--layer all takes every gate of one kind: use it with --channel learned or "
                                 "--spatial learned, not both", hint="name the layers, or run twice")
            kinds, option = (CHANNEL_KINDS, "--channel learned") if channel else (SPATIAL_KINDS, "--spatial learned")
            chosen = all_gates(gates, kinds, name, option)
            self.layers = [LayerRef(g.path, None, g.module) for g in chosen]
            self.gates = {g.path: (g, None) if channel else (None, g) for g in chosen}
            return
        refs = []
        for ref in self.layers:
            own = gate_for(gates, model, ref, CHANNEL_KINDS, name, "--channel learned") if channel else None
            where = gate_for(gates, model, ref, SPATIAL_KINDS, name, "--spatial learned") if spatial else None
            if own is not None:
                ref = LayerRef(own.path, ref.index if ref.path == own.path else None, own.module)
            self.gates[ref.path] = (own, where)
            refs.append(ref)
        self.layers = list({ref.path: ref for ref in refs}.values())

    @property
    def device(self) -> torch.device:
        return self.loaded.device

    def _blank(self) -> torch.Tensor:
        """float32 (1, 3, H, W) zeros at the size the model gets (the crop, else 224)."""
        height, width = self.preprocess.input_size(self.preprocess.crop or 224, self.preprocess.crop or 224)
        return torch.zeros(1, 3, height, width, device=self.device)

    def _feature_maps(self, layers: Iterable[str | int]) -> list[str] | None:
        """For ``all`` and negative indices: the feature-stack entries that yield a feature map
        (one pass on a blank input); None when no spec needs them."""
        parts = split_specs(layers)
        if not any(p.lower() == "all" or p.startswith("-") for p in parts):
            return None
        return feature_map_paths(self.loaded.module, self._blank())

    def _check_layers(self) -> None:
        """One forward pass on a blank input, so that a layer that yields no feature map is
        reported before any photo is read."""
        blank = self._blank()
        height, width = blank.shape[2:]
        try:
            captured = self._capture(blank)
        except (RuntimeError, AssertionError, ValueError) as exc:  # ViT asserts its input size
            raise LayerError(
                f"{self.loaded.name} cannot run on a {height}x{width} input "
                f"({str(exc).splitlines()[0][:160]})",
                hint="check --resize/--crop, or that the model takes 3-channel images",
            ) from exc
        self.layouts: dict[str, MapLayout] = {}
        captured = self._maps(captured, blank)
        self.layer_channels: dict[str, int] = {}
        for ref in self.layers:
            shape = tuple(captured[ref.path].shape)
            self.layer_channels[ref.path] = shape[1]
            if self.options.channels is not None and max(self.options.channels) >= shape[1]:
                raise LayerError(
                    f"channel {max(self.options.channels)} is out of range: layer {ref.path} has channels "
                    f"0..{shape[1] - 1}",
                    hint="check --channels",
                )

    def _capture(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """The capture pass of ``batch``: :meth:`featviz.output.pipeline.Visualizer._capture`."""
        raise NotImplementedError
