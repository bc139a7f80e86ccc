"""The Python API: from photos and a model to activations, attention maps and pictures.

``Visualizer`` holds a loaded model and the chosen layers, runs batches of photos through the
model once (all layers captured in that pass) and returns one :class:`LayerResult` per photo
and layer. Nothing here writes files: :meth:`LayerResult.save` and :mod:`featviz.export` do.

>>> import featviz
>>> result = featviz.visualize("sample_images/chelsea.jpg", layers=[0], weights="none")[0]
>>> result.activations.shape, result.grid().size
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featviz.errors import LayerError, UsageError
from featviz.result import LayerResult, RenderOptions, parse_channels

__all__ = ["LayerResult", "PreparedImage", "RenderOptions", "Visualizer", "parse_channels", "sweep",
           "sweep_visualizer", "visualize"]

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from featviz.layers import LayerRef
    from featviz.models import LoadedModel

TOP_PREDICTIONS = 5


@dataclass
class PreparedImage:
    """A decoded photo and the tensor the network gets from it."""

    key: str
    path: Path | None
    photo: Image.Image
    tensor: torch.Tensor  # float32 (3, H, W), normalised


class Visualizer:
    """A model, its layers and the drawing options, ready to run over photos.

    Build once, call :meth:`run` many times: loading the model is the slow part.
    """

    def __init__(self, model: str = "alexnet", weights: str | None = "DEFAULT", layers: Iterable[str | int] = (0,),
                 *, seed: int = 0, device: str = "cpu", resize: int | None = None, crop: int | None = None,
                 no_crop: bool = False, options: RenderOptions | None = None,
                 loaded: LoadedModel | None = None) -> None:
        from featviz.layers import resolve_layers
        from featviz.models import load_model

        self.options = (options or RenderOptions()).validate()
        self.loaded = loaded or load_model(model, weights, seed=seed, device=device)
        self.preprocess = self.loaded.preprocess.with_overrides(resize, crop, no_crop)
        for name, value in (("--resize", self.preprocess.resize), ("--crop", self.preprocess.crop)):
            if value is not None and value < 1:
                raise UsageError(f"{name} must be a positive number of pixels, got {value}")
        self.layers = resolve_layers(self.loaded.module, layers, model_name=self.loaded.name)
        self.se_blocks: dict[str, Any] = {}
        if self.options.channel == "learned":
            from featviz.layers import split_specs

            self._use_se_blocks(every_block="all" in [p.lower() for p in split_specs(layers)])
        self._check_layers()
        self.explainers: dict[str, Any] = self._class_explainers() if self.options.cam else {}

    def _class_explainers(self) -> dict[str, Any]:
        """``--cam``: one :class:`featviz.explain.ClassExplainer` per layer, every target and
        method checked on seeded noise before any photo is read."""
        import torch

        from featviz.explain import build_explainers

        height, width = self.preprocess.input_size(self.preprocess.crop or 224, self.preprocess.crop or 224)
        example = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(0)).to(self.device)
        return build_explainers(self.loaded.module, self.layers, self.options.cam, self.options.target,
                                self.loaded.categories, example, cam_batch=self.options.cam_batch)

    def _use_se_blocks(self, every_block: bool = False) -> None:
        """``--channel learned``: each layer becomes the SE block it names or contains (``all``:
        every SE block of the model); its gate and its input are captured in the same pass."""
        from featviz.layers import LayerRef
        from featviz.learned import find_se_blocks, se_block_for

        if every_block:
            blocks = find_se_blocks(self.loaded.module)
            if blocks:
                self.se_blocks = {b.path: b for b in blocks}
                self.layers = [LayerRef(b.path, None, b.module) for b in blocks]
                return
        refs = []
        for ref in self.layers:
            block = se_block_for(self.loaded.module, ref, self.loaded.name)
            self.se_blocks[block.path] = block
            refs.append(LayerRef(block.path, ref.index if ref.path == block.path else None, block.module))
        self.layers = list({ref.path: ref for ref in refs}.values())

    def _capture(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        from featviz.capture import capture
        from featviz.layers import LayerRef

        gates = [LayerRef(b.gate_path, None, b.gate) for b in self.se_blocks.values()]
        refs, inputs_of = [*self.layers, *gates], list(self.se_blocks)
        if self.options.predict:
            return capture(self.loaded.module, refs, batch, inputs_of=inputs_of, keep_output=True)
        if not self.options.stn:
            return capture(self.loaded.module, refs, batch, inputs_of=inputs_of)
        from featviz.stn import AffineGridRecorder

        with AffineGridRecorder() as recorder:  # the whole pass: the STN may come after the layers
            captured = capture(self.loaded.module, refs, batch, inputs_of=inputs_of, stop_early=False,
                               keep_output=self.options.predict)
        if not recorder.thetas:
            raise UsageError(f"--stn: {self.loaded.name} never called torch.nn.functional.affine_grid",
                             hint="--stn draws the sampling grid of a spatial transformer; leave it out for this model")
        captured[":stn_theta"] = recorder.thetas[0]
        return captured

    @property
    def device(self) -> torch.device:
        return self.loaded.device

    def _check_layers(self) -> None:
        """One forward pass on a blank input, so that a layer that yields no feature map is
        reported before any photo is read."""
        import torch

        height, width = self.preprocess.input_size(self.preprocess.crop or 224, self.preprocess.crop or 224)
        blank = torch.zeros(1, 3, height, width, device=self.device)
        try:
            captured = self._capture(blank)
        except RuntimeError as exc:
            raise LayerError(
                f"{self.loaded.name} cannot run on a {height}x{width} input "
                f"({str(exc).splitlines()[0][:160]})",
                hint="check --resize/--crop, or that the model takes 3-channel images",
            ) from exc
        for ref in self.layers:
            shape = tuple(captured[ref.path].shape)
            if len(shape) != 4:
                raise LayerError(
                    f"layer {ref.path} ({ref.type_name}) outputs shape {shape}, not a feature map (N, C, H, W)",
                    hint=f"choose a convolutional layer; run `featviz layers --model {self.loaded.name}`",
                )
            block = self.se_blocks.get(ref.path)
            if block is not None and captured[block.gate_path].numel() != shape[1]:
                raise LayerError(
                    f"{block.path} looks like a squeeze-and-excitation block, but its gate has "
                    f"{captured[block.gate_path].numel()} values for {shape[1]} channels",
                    hint="it is not a channel gate; use --channel se, cbam or dct at this layer",
                )
            if self.options.channels is not None and max(self.options.channels) >= shape[1]:
                raise LayerError(
                    f"channel {max(self.options.channels)} is out of range: layer {ref.path} has channels 0..{shape[1] - 1}",
                    hint="check --channels",
                )

    def prepare(self, source: str | os.PathLike[str] | Image.Image, key: str | None = None) -> PreparedImage:
        """Decode (if a path) and preprocess one photo. Raises :class:`~featviz.errors.ImageError`."""
        from PIL import Image

        from featviz.images import load_image

        if isinstance(source, Image.Image):
            photo, path = source.convert("RGB"), None
        else:
            path = Path(source)
            photo = load_image(path)
        tensor = self.preprocess(photo)
        return PreparedImage(key or (path.stem if path else "image"), path, photo, tensor)

    def forward(self, batch: Sequence[PreparedImage]) -> list[list[LayerResult]]:
        """Run prepared photos through the model in one pass per same-sized group.

        Returns, for each photo in order, one result per layer (in layer order).
        """
        results: list[list[LayerResult]] = []
        for group in _same_size_groups(batch):
            results.extend(self._forward_group(group))
        return results

    def _forward_group(self, group: Sequence[PreparedImage]) -> list[list[LayerResult]]:
        import torch

        stacked = torch.stack([p.tensor for p in group]).to(self.device)
        explained: dict[str, Any] = {}
        if self.explainers and self.options.channel != "learned" and not self.options.stn:
            # --cam: each layer's gradient pass captures what the plain pass would (same copy of
            # the output), so that pass is skipped; its logits serve --predict.
            explained = {ref.path: self.explainers[ref.path].explain(stacked) for ref in self.layers}
            captured = {path: batch.activations for path, batch in explained.items()}
            captured[":output"] = next(iter(explained.values())).logits
        else:
            captured = self._capture(stacked)
        per_image: list[list[LayerResult]] = [[] for _ in group]
        predictions = self._predictions(captured.get(":output"), len(group)) if self.options.predict else None
        image_values = None
        if self.options.normalize == "image":
            image_values = torch.cat([captured[ref.path].float().flatten(1) for ref in self.layers], dim=1)
        for ref in self.layers:
            acts = captured[ref.path].float()
            spatial, channel_raw, weights, channel_map, before, extra = self._attention(ref, acts, captured)
            theta = captured.get(":stn_theta")
            if theta is not None:
                extra["stn_theta"] = theta
            for i, prepared in enumerate(group):
                width, height = prepared.photo.size
                per_image[i].append(LayerResult(
                    key=prepared.key, image_path=prepared.path, layer=ref, photo=prepared.photo,
                    box=self.preprocess.crop_box(width, height),
                    input_size=tuple(prepared.tensor.shape[1:]), activations=acts[i],
                    spatial_raw=spatial[i], channel_raw=channel_raw[i], channel_weights=weights[i],
                    channel_map_raw=channel_map[i], options=self.options, model_name=self.loaded.name,
                    weights=self.loaded.weights, before=None if before is None else before[i],
                    stn_theta=None if theta is None else theta[i],
                    image_values=None if image_values is None else image_values[i],
                    extra=_per_image(extra, i) | ({"predictions": predictions[i]} if predictions else {}),
                ))
        for position, ref in enumerate(self.layers):
            if ref.path in self.explainers:
                batch = explained.get(ref.path) or self.explainers[ref.path].explain(stacked)
                self._explain(ref.path, batch, group, [results[position] for results in per_image])
        return per_image

    def _explain(self, path: str, explained: Any, group: Sequence[PreparedImage],
                 results: list[LayerResult]) -> None:
        """Class activation maps of the group at one layer (a :class:`featviz.explain.CamBatch`)
        into its results; a photo whose gradients are not finite is an
        :class:`~featviz.errors.ImageError` (the batch engine then runs the photos one by one, and
        only that one fails)."""
        from featviz.errors import ImageError

        for index, message in sorted(explained.errors.items()):
            name = group[index].path or group[index].key
            raise ImageError(f"{name}: layer {path}: {message}",
                             hint="the model overflows on this photo; check its preprocessing or weights")
        for result, cams in zip(results, explained.per_image):
            result.cams = cams

    def _attention(self, ref: LayerRef, acts: torch.Tensor, captured: dict[str, torch.Tensor]) -> tuple[Any, ...]:
        """(spatial (N,H,W), channel statistic (N,C), w (N,C), sum_c w_c A_c (N,H,W), SE input
        or None, extra summary fields) for one layer, by the chosen attention definitions."""
        from featviz.attention import (
            cbam_refine,
            channel_attention,
            spatial_attention,
            weighted_channel_map,
            weights_from_statistic,
        )

        options = self.options
        before = None
        extra: dict[str, Any] = {}
        if options.channel == "learned":
            block = self.se_blocks[ref.path]
            gate = captured[block.gate_path].float().reshape(acts.shape[0], -1)
            if gate.shape[1] != acts.shape[1]:
                raise LayerError(f"the gate of {block.path} has {gate.shape[1]} values for {acts.shape[1]} channels")
            channel_raw, weights = gate, gate
            before = captured[f"{block.path}:input"].float()
            extra = {"se_block": block.path, "gate_module": block.gate_path, "gate": gate}
        else:
            channel_raw = channel_attention(acts, options.channel_mode, options.dct_frequencies)
            weights = weights_from_statistic(channel_raw)
            if options.channel_mode == "dct":
                from featviz.attention import FCANET_TOP16, scale_frequencies

                chosen = options.dct_frequencies or FCANET_TOP16
                extra = {"dct_frequencies": [list(f) for f in chosen],
                         "dct_frequencies_scaled": [list(f) for f in scale_frequencies(chosen, *acts.shape[2:])]}
        if options.attention == "cbam":
            weights, refined = cbam_refine(acts)
            spatial = spatial_attention(refined, options.spatial_mode)
        else:
            spatial = spatial_attention(acts, options.spatial_mode)
        channel_map = weighted_channel_map(acts, weights)
        return spatial, channel_raw, weights, channel_map, before, extra

    def sweep(self, image: str | os.PathLike[str] | Image.Image) -> tuple[Image.Image, list[LayerResult]]:
        """One photo through every layer of this visualizer (one forward pass); the overlays of
        all layers side by side, captioned with layer path, type and activation shape."""
        from featviz.render import sweep_picture

        results = self.run(image)
        panels = [(r.sweep_panel(), f"{r.layer.path} ({r.layer.type_name})\n{'x'.join(map(str, r.activations.shape))}")
                  for r in results]
        what = f"spatial attention ({self.options.spatial_mode})"
        if results and results[0].cams:
            first = results[0].cams[0]
            what = f"{first.method}" + ("" if first.label is None else f" for {first.label}")
        title = f"{self.loaded.name}, weights {self.loaded.weights}: {what} by depth"
        return sweep_picture(panels, title=title), results

    def _predictions(self, output: torch.Tensor | None, count: int) -> list[list[dict[str, Any]]]:
        """Top-5 classes per photo from the model's output logits: label (from the weights'
        ``meta["categories"]``, else "class K"), index and softmax probability."""
        import torch

        if output is None or output.dim() != 2 or output.shape[0] != count:
            shape = None if output is None else tuple(output.shape)
            raise UsageError(f"--predict needs a model that returns class logits (N, classes); {self.loaded.name} returned {shape}")
        probabilities = torch.softmax(output.float(), dim=1)
        top = probabilities.topk(min(TOP_PREDICTIONS, probabilities.shape[1]), dim=1)
        names = self.loaded.categories
        return [[{"label": names[k] if names and k < len(names) else f"class {k}", "index": k, "probability": p}
                 for p, k in zip(values.tolist(), indices.tolist())]
                for values, indices in zip(top.values, top.indices)]

    def run(self, sources: str | os.PathLike[str] | Image.Image | Sequence[Any]) -> list[LayerResult]:
        """Photos (paths or PIL images) -> results, photo-major then layer order."""
        from featviz.layout import stem_keys

        items = [sources] if isinstance(sources, (str, os.PathLike)) or not isinstance(sources, Sequence) else list(sources)
        stems = [Path(item) if isinstance(item, (str, os.PathLike)) else Path(f"image{i}") for i, item in enumerate(items)]
        prepared = [self.prepare(item, key) for item, key in zip(items, stem_keys(stems))]
        return [result for per_photo in self.forward(prepared) for result in per_photo]


def sweep(image: str | os.PathLike[str] | Image.Image, model: str = "alexnet", layers: Iterable[str | int] | None = None,
          weights: str | None = "DEFAULT", **kwargs: Any) -> tuple[Image.Image, list[LayerResult]]:
    """How attention changes with depth: one picture with the spatial-attention overlay of each
    stage side by side, captured in ONE forward pass. ``layers`` default to
    :func:`featviz.layers.sweep_layers`. Returns the picture and the per-stage results."""
    vis_kwargs, options = _split_kwargs(kwargs)
    return sweep_visualizer(model, weights, layers, options=options, **vis_kwargs).sweep(image)


def sweep_visualizer(model: str = "alexnet", weights: str | None = "DEFAULT",
                     layers: Iterable[str | int] | None = None, *, options: RenderOptions | None = None,
                     seed: int = 0, device: str = "cpu", **preprocess: Any) -> Visualizer:
    """A :class:`Visualizer` over the stages of a depth sweep: ``layers``, or by default
    :func:`featviz.layers.sweep_layers` of the loaded model. ``preprocess``: ``resize``,
    ``crop``, ``no_crop``."""
    from featviz.layers import sweep_layers
    from featviz.models import load_model

    loaded = load_model(model, weights, seed=seed, device=device)
    chosen = list(layers) if layers else sweep_layers(loaded.module)
    return Visualizer(model, weights, chosen, options=options, loaded=loaded, **preprocess)


_VISUALIZER_KEYS = {"seed", "device", "resize", "crop", "no_crop"}
_TUPLE_OPTIONS = ("cam", "target")


def _split_kwargs(kwargs: dict[str, Any]) -> tuple[dict[str, Any], RenderOptions]:
    """Keyword arguments of the one-call API: those for :class:`Visualizer`, and the rest as
    :class:`RenderOptions` (``channels`` may be given as text, ``"0-15,32"``)."""
    vis_kwargs = {k: v for k, v in kwargs.items() if k in _VISUALIZER_KEYS}
    rest = {k: v for k, v in kwargs.items() if k not in _VISUALIZER_KEYS}
    if isinstance(rest.get("channels"), str):
        rest["channels"] = parse_channels(rest["channels"])
    for key in _TUPLE_OPTIONS:  # cam="gradcam,scorecam" or cam=["gradcam"]; target=281 or ["top3", "tabby"]
        value = rest.get(key)
        if value is not None and not isinstance(value, tuple):
            items = [value] if isinstance(value, (str, int)) else list(value)
            parts = tuple(p.strip() for item in items for p in str(item).split(",") if p.strip())
            rest[key] = tuple(p.lower() for p in parts) if key == "cam" else parts
    return vis_kwargs, RenderOptions(**rest)


def _per_image(extra: dict[str, Any], index: int) -> dict[str, Any]:
    """Summary fields for one photo of the batch: tensors are sliced and made JSON-ready."""
    import torch

    return {key: value[index].cpu().tolist() if isinstance(value, torch.Tensor) else value
            for key, value in extra.items()}


def _same_size_groups(batch: Sequence[PreparedImage]) -> list[list[PreparedImage]]:
    """Consecutive runs of tensors with equal shapes (only ``--no-crop`` makes them differ)."""
    groups: list[list[PreparedImage]] = []
    for item in batch:
        if groups and groups[-1][0].tensor.shape == item.tensor.shape:
            groups[-1].append(item)
        else:
            groups.append([item])
    return groups


def visualize(images: str | os.PathLike[str] | Image.Image | Sequence[Any], model: str = "alexnet",
              layers: Iterable[str | int] = (0,), weights: str | None = "DEFAULT", *,
              out: str | os.PathLike[str] | None = None, **kwargs: Any) -> list[LayerResult]:
    """One call from photos to results; with ``out``, also write each result's files there
    (``out/<image stem>/<layer path>/``).

    ``kwargs``: ``seed``, ``device``, ``resize``, ``crop``, ``no_crop`` for :class:`Visualizer`,
    anything else a :class:`RenderOptions` field (``size=128, cmap="viridis"``).
    """
    vis_kwargs, options = _split_kwargs(kwargs)
    visualizer = Visualizer(model, weights, layers, options=options, **vis_kwargs)
    results = visualizer.run(images)
    if out is not None:
        for result in results:
            result.save(Path(out) / result.key / result.layer.path)
    return results
