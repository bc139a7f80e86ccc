"""The Python API: from photos and a model to activations, attention maps and pictures.

``Visualizer`` holds a loaded model and the chosen layers, runs batches of photos through the
model once (all layers captured in that pass) and returns one :class:`LayerResult` per photo
and layer. Its start-up (model, layers, gates, explainers, the blank check) is
:mod:`featviz.output.startup`. Nothing here writes files: :meth:`LayerResult.save` and :mod:`featviz.output.export` do.

>>> import featviz
>>> result = featviz.visualize("sample_images/chelsea.jpg", layers=[0], weights="none")[0]
>>> result.activations.shape, result.grid().size
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from featviz.capture.gates import learned_channel, learned_spatial
from featviz.capture.hooks import capture
from featviz.capture.layers import LayerRef, sweep_layers
from featviz.capture.layouts import as_feature_maps
from featviz.capture.stn import AffineGridRecorder
from featviz.errors import ImageError, UsageError
from featviz.inputs.images import load_image
from featviz.maps.attention import (
    FCANET_TOP16,
    cbam_refine,
    channel_attention,
    replace_nonfinite,
    scale_frequencies,
    spatial_attention,
    weighted_channel_map,
    weights_from_statistic,
)
from featviz.maps.camscore import score_cams
from featviz.maps.targets import LOGITS_HINT, class_probabilities
from featviz.maps.tokenpcafit import RunBasis
from featviz.models.build import load_model
from featviz.output.estimate import OutputEstimate, estimate_output
from featviz.output.layout import stem_keys
from featviz.output.notebook import Results
from featviz.output.options import RenderOptions, parse_channels
from featviz.output.render import sweep_picture
from featviz.output.result import LayerResult
from featviz.output.settings import settings_record
from featviz.output.startup import VisualizerStartup
from featviz.output.tokenextras import attach, fit_bases, readable_tokens

__all__ = ["LayerResult", "PreparedImage", "RenderOptions", "Visualizer", "parse_channels", "same_size_groups", "sweep",
           "sweep_visualizer", "visualize"]

TOP_PREDICTIONS = 5


@dataclass
class PreparedImage:
    """A decoded photo and the tensor the network gets from it."""

    key: str
    path: Path | None
    photo: Image.Image
    tensor: torch.Tensor  # float32 (3, H, W), normalised


class Visualizer(VisualizerStartup):
    """A model, its layers and the drawing options, ready to run over photos.

    Build once, call :meth:`run` many times: loading the model is the slow part.

    ``layers``: indices, dotted paths or ``all`` (:func:`featviz.capture.layers.resolve_layers`).
    None (not given): layer 0; with class maps (``options.cam``) the last feature map before
    global pooling instead (:func:`featviz.capture.layers.default_cam_layer`: ResNet's
    ``layer4``), which :attr:`default_layer` then holds so that a caller can say which it is.
    """

    def feature_maps(self, batch: torch.Tensor, layers: Sequence[LayerRef] | None = None) -> dict[str, torch.Tensor]:
        """One capture pass of ``batch`` (float32 (N, 3, H, W) on the model's device): each layer's
        output as a feature map float (N, C, H, W), token and channels-last layers rearranged
        (:mod:`featviz.capture.layouts`). ``layers``: a subset of this visualizer's (default all).
        What the atlas accumulates."""
        refs = list(self.layers if layers is None else layers)
        captured = capture(self.loaded.module, refs, batch)
        maps, _ = as_feature_maps(self.loaded.module, refs, captured, (int(batch.shape[-2]), int(batch.shape[-1])),
                                  self.loaded.name)
        return {ref.path: maps[ref.path] for ref in refs}

    def _capture(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        refs = self.layers
        gate_calls: dict[str, set[int]] = {}
        for gate in (g for pair in self.gates.values() for g in pair if g is not None):
            gate_calls.setdefault(gate.path, set()).add(gate.call)
        # the input of a channel gate's module ("before" the gate), and of a spatial gate's (its H x W)
        inputs_of = [g.path for pair in self.gates.values() for g in pair if g is not None]
        refs = [*refs, *(LayerRef(p, None, self.loaded.module.get_submodule(p)) for p in dict.fromkeys(inputs_of)
                         if p not in {r.path for r in refs})]
        if self.options.predict:
            return capture(self.loaded.module, refs, batch, inputs_of=inputs_of, keep_output=True,
                           gate_calls=gate_calls)
        if not self.options.stn:
            return capture(self.loaded.module, refs, batch, inputs_of=inputs_of, gate_calls=gate_calls)

        with AffineGridRecorder() as recorder:  # the whole pass: the STN may come after the layers
            captured = capture(self.loaded.module, refs, batch, inputs_of=inputs_of, stop_early=False,
                               keep_output=self.options.predict, gate_calls=gate_calls)
        if not recorder.thetas:
            raise UsageError(f"--stn: {self.loaded.name} never called torch.nn.functional.affine_grid",
                             hint="--stn draws the sampling grid of a spatial transformer; leave it out for this model")
        captured[":stn_theta"] = recorder.thetas[0]
        return captured

    def output_estimate(self) -> OutputEstimate:
        """Files (and roughly bytes) each photo's results will take, from the layers' channel counts."""
        return estimate_output([self.layer_channels[ref.path] for ref in self.layers], self.options,
                               se_layers=sum(1 for ref in self.layers
                                             if self.gates.get(ref.path, (None, None))[0] is not None),
                               heads_per_layer=[t.head_count for t in self.transformers.values()])

    def prepare(self, source: str | os.PathLike[str] | Image.Image, key: str | None = None) -> PreparedImage:
        """Decode (if a path) and preprocess one photo. Raises :class:`~featviz.errors.ImageError`."""
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
        if self.options.pca_tokens and not self.pca_bases:  # no basis yet: the one of these photos
            self.fit_token_pca(batch)
        results: list[list[LayerResult]] = []
        for group in same_size_groups(batch):
            results.extend(self._forward_group(group))
        return results

    def _forward_group(self, group: Sequence[PreparedImage]) -> list[list[LayerResult]]:
        stacked = torch.stack([p.tensor for p in group]).to(self.device)
        explained: dict[str, Any] = {}
        if self.explainers and not self.gates and not self.options.stn:
            # --cam: each layer's gradient pass captures what the plain pass would (same copy of
            # the output), so that pass is skipped; its logits serve --predict. Learned gates and
            # spatial transformers are recorded by the plain pass, which then runs as well.
            explained = {ref.path: self.explainers[ref.path].explain(stacked) for ref in self.layers}
            captured = {path: batch.activations for path, batch in explained.items()}  # maps already
            captured[":output"] = next(iter(explained.values())).logits
            self.layouts.update({path: batch.layout for path, batch in explained.items() if batch.layout})
        else:
            captured = self._maps(self._capture(stacked), stacked)
        per_image: list[list[LayerResult]] = [[] for _ in group]
        predictions = self._predictions(captured.get(":output"), len(group)) if self.options.predict else None
        image_values = None
        if self.options.normalize == "image":
            image_values = torch.cat([captured[ref.path].float().flatten(1) for ref in self.layers], dim=1)
        for ref in self.layers:
            raw = captured[ref.path].float()
            acts, nonfinite = replace_nonfinite(raw)
            mask = ~torch.isfinite(raw) if bool(nonfinite.any()) else None
            spatial, channel_raw, weights, channel_map, before, extra = self._attention(ref, acts, captured)
            raw_gates = extra.pop("raw_gates", {})
            theta = captured.get(":stn_theta")
            if theta is not None:
                extra["stn_theta"] = theta
            for i, prepared in enumerate(group):
                width, height = prepared.photo.size
                per_image[i].append(LayerResult(
                    key=prepared.key, image_path=prepared.path, layer=ref, photo=prepared.photo,
                    box=self.preprocess.crop_box(width, height),
                    input_size=(prepared.tensor.shape[1], prepared.tensor.shape[2]), activations=acts[i],
                    spatial_raw=spatial[i], channel_raw=channel_raw[i], channel_weights=weights[i],
                    channel_map_raw=channel_map[i], options=self.options, model_name=self.loaded.name,
                    weights=self.loaded.weights, before=None if before is None else before[i],
                    stn_theta=None if theta is None else theta[i],
                    image_values=None if image_values is None else image_values[i],
                    raw_gates={name: value[i] for name, value in raw_gates.items()},
                    extra=self.layouts[ref.path].record() | _per_image(extra, i)
                    | ({"predictions": predictions[i]} if predictions else {})
                    | ({"nonfinite": int(nonfinite[i])} if int(nonfinite[i]) else {}),
                    nonfinite_mask=None if mask is None or not int(nonfinite[i]) else mask[i],
                    settings=self.settings(ref),
                ))
        for position, ref in enumerate(self.layers):
            if ref.path in self.explainers:
                batch = explained.get(ref.path) or self.explainers[ref.path].explain(stacked)
                if self.options.cam_score:
                    self._score(batch, stacked, group)
                self._explain(ref.path, batch, group, [results[position] for results in per_image])
            if ref.path in self.transformers:
                self._transformer(ref.path, stacked, group, [results[position] for results in per_image])
        attach(per_image, self.layers, stacked, self.token_runner, self.pca_bases, self.options)  # --vit-stats ...
        return per_image

    def fit_token_pca(self, sources: Sequence[Any]) -> dict[str, RunBasis]:
        """``--pca-tokens``: one basis per coloured layer (``pca_layers``) over ``sources`` (paths, PIL
        images or prepared photos), used for every later photo; unreadable photos are left out."""
        self.pca_bases = fit_bases(self.pca_layers, list(sources), readable_tokens(
            lambda s: s if isinstance(s, PreparedImage) else self.prepare(s),
            lambda batch, ref: self.feature_maps(batch.to(self.device), [ref])[ref.path]))
        return self.pca_bases

    def _transformer(self, path: str, stacked: torch.Tensor, group: Sequence[PreparedImage],
                     results: list[LayerResult]) -> None:
        """Heads, rollout and relevance of the group at one block into its results (one capture
        pass, one backward per target rank for relevance); ``--cam-score`` scores the maps."""
        explained = self.transformers[path].explain(stacked)
        if self.options.cam_score:
            self._score(explained.cams, stacked, group)
        self._explain(path, explained.cams, group, results)
        if explained.heads is not None:
            for result, heads in zip(results, explained.heads, strict=True):
                result.heads, result.heads_layout = heads, explained.layout

    def settings(self, ref: LayerRef) -> dict[str, Any]:
        """What decides this layer's results (recorded in each summary; ``--skip-existing``
        redoes a folder whose record differs)."""
        record = settings_record(self.loaded.name, self.loaded.weights, ref.path, self.preprocess, self.options,
                                 [layer.path for layer in self.layers])
        if ref.path in self.pca_bases:  # --pca-tokens: colours drawn with another basis are redone
            record["pca_basis"] = self.pca_bases[ref.path].digest()
        return record

    def _score(self, explained: Any, stacked: torch.Tensor, group: Sequence[PreparedImage]) -> None:
        """``--cam-score``: deletion and insertion of every map of the batch (one call per layer,
        :func:`featviz.maps.camscore.score_cams`); a photo with a map that cannot be scored joins
        ``explained.errors`` and fails in :meth:`_explain`."""
        names = [str(p.path or p.key) for p in group]
        failed = score_cams(self.loaded.module, stacked, explained, steps=self.options.cam_score_steps,
                            batch_size=self.options.cam_batch, names=names)
        for index, message in failed.items():
            explained.errors.setdefault(index, message)

    def _explain(self, path: str, explained: Any, group: Sequence[PreparedImage],
                 results: list[LayerResult]) -> None:
        """Class activation maps of the group at one layer (a :class:`featviz.maps.explain.CamBatch`)
        into its results; a photo whose gradients are not finite is an
        :class:`~featviz.errors.ImageError` (the batch engine then runs the photos one by one, and
        only that one fails)."""
        for index, message in sorted(explained.errors.items()):
            name = group[index].path or group[index].key
            raise ImageError(f"{name}: layer {path}: {message}",
                             hint="the model overflows on this photo; check its preprocessing or weights")
        for result, cams in zip(results, explained.per_image, strict=True):
            result.cams = [*result.cams, *cams]

    def _attention(self, ref: LayerRef, acts: torch.Tensor, captured: dict[str, torch.Tensor]) -> tuple[Any, ...]:
        """(spatial (N,H,W), channel statistic (N,C), w (N,C), sum_c w_c A_c (N,H,W), SE input
        or None, extra summary fields) for one layer, by the chosen attention definitions."""
        options = self.options
        before = None
        extra: dict[str, Any] = {}
        own, where = self.gates.get(ref.path, (None, None))
        if options.channel == "learned":
            channel_raw, before, extra = learned_channel(own, captured)
            weights = channel_raw
        else:
            channel_raw = channel_attention(acts, options.channel_mode, options.dct_frequencies)
            weights = weights_from_statistic(channel_raw)
            if options.channel_mode == "dct":
                chosen = options.dct_frequencies or FCANET_TOP16
                extra = {"dct_frequencies": [list(f) for f in chosen],
                         "dct_frequencies_scaled": [list(f) for f in scale_frequencies(chosen, *acts.shape[2:])]}
        if options.spatial == "learned":
            spatial, found = learned_spatial(where, captured)
            extra = {**extra, **found, "raw_gates": {**extra.get("raw_gates", {}), **found.get("raw_gates", {})}}
        elif options.attention == "cbam":
            weights, refined = cbam_refine(acts)
            spatial = spatial_attention(refined, options.spatial_mode)
        else:
            spatial = spatial_attention(acts, options.spatial_mode)
        channel_map = weighted_channel_map(acts, weights)
        return spatial, channel_raw, weights, channel_map, before, extra

    def sweep(self, image: str | os.PathLike[str] | Image.Image) -> tuple[Image.Image, list[LayerResult]]:
        """One photo through every layer of this visualizer (one forward pass); the overlays of
        all layers side by side, captioned with layer path, type and activation shape."""
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
        if output is None or output.dim() != 2 or output.shape[0] != count:
            shape = None if output is None else tuple(output.shape)
            raise UsageError(f"--predict needs a model that returns class logits (N, classes); {self.loaded.name} "
                             f"returned {shape}",
                             hint=LOGITS_HINT)
        probabilities = class_probabilities(output)
        top = probabilities.topk(min(TOP_PREDICTIONS, probabilities.shape[1]), dim=1)
        names = self.loaded.categories
        return [[{"label": names[k] if names and k < len(names) else f"class {k}", "index": k,
                  "probability": p if math.isfinite(p) else None}  # NaN logits: null, not a bare NaN
                 for p, k in zip(values.tolist(), indices.tolist(), strict=True)]
                for values, indices in zip(top.values, top.indices, strict=True)]

    def run(self, sources: str | os.PathLike[str] | Image.Image | Sequence[Any]) -> Results:
        """Photos (paths or PIL images) -> results, photo-major then layer order (a list that
        Jupyter displays as pictures)."""
        items = ([sources] if isinstance(sources, (str, os.PathLike)) or not isinstance(sources, Sequence)
                 else list(sources))
        stems = [Path(item) if isinstance(item, (str, os.PathLike)) else Path(f"image{i}")
                 for i, item in enumerate(items)]
        prepared = [self.prepare(item, key) for item, key in zip(items, stem_keys(stems), strict=True)]
        return Results(result for per_photo in self.forward(prepared) for result in per_photo)


def sweep(image: str | os.PathLike[str] | Image.Image, model: str = "alexnet",
          layers: Iterable[str | int] | None = None,
          weights: str | None = "DEFAULT", **kwargs: Any) -> tuple[Image.Image, list[LayerResult]]:
    """How attention changes with depth: one picture with the spatial-attention overlay of each
    stage side by side, captured in ONE forward pass. ``layers`` default to
    :func:`featviz.capture.layers.sweep_layers`. Returns the picture and the per-stage results."""
    vis_kwargs, options = _split_kwargs(kwargs)
    return sweep_visualizer(model, weights, layers, options=options, **vis_kwargs).sweep(image)


def sweep_visualizer(model: str = "alexnet", weights: str | None = "DEFAULT",
                     layers: Iterable[str | int] | None = None, *, options: RenderOptions | None = None,
                     seed: int = 0, device: str = "cpu", weights_file: str | os.PathLike[str] | None = None,
                     trust_pickle: bool = False, model_kwargs: dict[str, Any] | None = None,
                     **preprocess: Any) -> Visualizer:
    """A :class:`Visualizer` over the stages of a depth sweep: ``layers``, or by default
    :func:`featviz.capture.layers.sweep_layers` of the loaded model. ``preprocess``: ``resize``,
    ``crop``, ``no_crop``."""
    loaded = load_model(model, weights, seed=seed, device=device, weights_file=weights_file, trust_pickle=trust_pickle,
                        model_kwargs=model_kwargs)
    chosen = list(layers) if layers else None  # default: sweep_layers, each call of a repeated stage its own
    return Visualizer(model, weights, chosen, options=options, loaded=loaded, default_layers=sweep_layers,
                      **preprocess)


_VISUALIZER_KEYS = {"seed", "device", "resize", "crop", "no_crop", "weights_file", "trust_pickle", "model_kwargs"}
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
    return {key: value[index].cpu().tolist() if isinstance(value, torch.Tensor) else value
            for key, value in extra.items()}


def same_size_groups(batch: Sequence[PreparedImage]) -> list[list[PreparedImage]]:
    """Consecutive runs of tensors with equal shapes (only ``--no-crop`` makes them differ)."""
    groups: list[list[PreparedImage]] = []
    for item in batch:
        if groups and groups[-1][0].tensor.shape == item.tensor.shape:
            groups[-1].append(item)
        else:
            groups.append([item])
    return groups


def visualize(images: str | os.PathLike[str] | Image.Image | Sequence[Any], model: str = "alexnet",
              layers: Iterable[str | int] | None = None, weights: str | None = "DEFAULT", *,
              out: str | os.PathLike[str] | None = None, **kwargs: Any) -> Results:
    """One call from photos to results; with ``out``, also write each result's files there
    (``out/<image stem>/<layer path>/``).

    ``layers``: as :class:`Visualizer` takes them; by default layer 0, or with ``cam`` the last
    feature map before global pooling (:func:`featviz.capture.layers.default_cam_layer`).
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
