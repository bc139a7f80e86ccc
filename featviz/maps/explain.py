"""Class attention over a batch: the model passes behind the CAM family (see :mod:`featviz.maps.cam`).

:class:`ClassExplainer` runs, for one layer and one batch of photos:

* ONE forward pass with :class:`~featviz.capture.hooks.GradientCapture` (the layer's activations A and
  the logits), and, when a gradient method is asked for, ONE backward per target rank
  (``torch.autograd.grad`` of sum_n Y^{c_n}_n with respect to the layer's leaf, the graph
  retained between ranks): every gradient method and every photo of the batch share it, since in
  eval mode photo n's logit depends on photo n's activations only;
* Score-CAM: the photos masked by each channel, ``cam_batch`` at a time, full forwards;
* Ablation-CAM: from the layer upward where the model allows it: a batch-1 pass whose layer
  output is replaced by ``cam_batch`` ablated copies of A (the layers below run once per chunk,
  at batch 1). That holds wherever nothing after the layer combines, by batch, with tensors from
  before it except by broadcasting (true of torchvision's classifiers: a residual ``+`` broadcasts
  the batch-1 identity). Where it fails (a concatenation with an earlier tensor, a reshape by
  batch size) featviz falls back to full forwards of ``cam_batch`` copies of the photo.

The model is left as found: hooks removed, ``requires_grad`` flags and train/eval modes restored.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from featviz.capture.calls import check_single_call, count_calls
from featviz.capture.hooks import GradientCapture
from featviz.capture.layers import LayerRef, is_script
from featviz.capture.layouts import PLAIN, MapLayout
from featviz.errors import UsageError
from featviz.maps import cam as formulas
from featviz.maps.faithfulness import FaithfulnessScore
from featviz.maps.targets import (
    LOGITS_HINT,
    Target,
    class_indices,
    class_probabilities,
    label,
    parse_targets,
)

DEFAULT_CAM_BATCH = 32


@dataclass
class CamMap:
    """One photo's map for one method and target.

    ``map``: float32 (h, w) >= 0 at the layer's resolution, after the ReLU, unscaled.
    ``weights``: float32 (C,) for channel-weighting methods, else None. ``target``: the class
    index (None for Eigen-CAM, which explains no class); ``logit`` and ``probability`` (softmax)
    of that class for the unmasked photo.
    """

    method: str
    target: int | None
    rank: int | None
    map: torch.Tensor
    weights: torch.Tensor | None
    logit: float | None
    probability: float | None
    label: str | None = None  # the class's name (the weights' categories, else "class K")
    # --cam-score: deletion/insertion of this map (featviz.maps.faithfulness.FaithfulnessScore), whose
    # ``target`` is the class scored (for Eigen-CAM, which has none, the predicted top class).
    scores: FaithfulnessScore | None = None

    @property
    def name(self) -> str:
        """``gradcam-281``; ``eigencam`` for the class-free method."""
        return self.method if self.target is None else f"{self.method}-{self.target}"


@dataclass
class CamBatch:
    """A batch's maps: ``per_image[n]`` lists photo n's :class:`CamMap`, methods in the order
    asked, targets in order within each method. ``errors[n]``: why photo n has none (non-finite
    activations, logits or gradients). ``activations``: the layer's output, float32 (N, C, H, W)
    as captured (a copy); ``logits``: float32 (N, classes): the pipeline reuses both instead of a
    second capture pass."""

    per_image: list[list[CamMap]]
    errors: dict[int, str] = field(default_factory=dict)
    activations: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    layout: MapLayout | None = None  # how the layer's output became (N, C, H, W) (featviz.capture.layouts)


class ClassExplainer:
    """The CAM methods ``methods`` for ``targets`` at ``layer`` of ``model``.

    ``classifier``: the final linear layer, needed by ``cam`` (see :func:`find_cam_classifier`).
    ``cam_batch``: masked or ablated inputs per forward pass (Score-CAM, Ablation-CAM).
    """

    def __init__(self, model: nn.Module, layer: LayerRef, methods: Sequence[str], targets: Sequence[Target],
                 *, cam_batch: int = DEFAULT_CAM_BATCH, classifier: nn.Linear | None = None,
                 categories: Sequence[str] | None = None) -> None:
        unknown = [m for m in methods if m not in formulas.METHODS]
        if unknown:
            raise UsageError(f"unknown CAM method {unknown[0]!r}", hint="use " + ", ".join(formulas.METHODS))
        if "cam" in methods and classifier is None:
            raise UsageError("--cam cam needs the model's final linear layer", hint="use gradcam instead")
        if cam_batch < 1:
            raise UsageError(f"--cam-batch must be at least 1, got {cam_batch}")
        self.model = model
        self.layer = layer
        self.methods = list(dict.fromkeys(methods))
        self.targets = list(targets)
        self.cam_batch = cam_batch
        self.classifier = classifier
        self.categories = categories
        self.ablation_from_layer: bool | None = None  # decided on the first Ablation-CAM pass

    @property
    def needs_gradients(self) -> bool:
        return any(m in formulas.GRADIENT_METHODS for m in self.methods)

    def explain(self, batch: torch.Tensor) -> CamBatch:
        """batch: float32 (N, 3, H, W), normalised, on the model's device."""
        with GradientCapture(self.model, self.layer, with_grad=self.needs_gradients) as recorder:
            logits = recorder.run(batch)
            if logits.dim() != 2 or logits.shape[0] != batch.shape[0]:
                raise UsageError(f"class attention needs a model that returns class logits (N, classes); "
                                 f"it returned {tuple(logits.shape)}", hint=LOGITS_HINT)
            activations = recorder.activations
            if activations is None:  # run() raises when the layer was never reached
                raise RuntimeError(f"layer {self.layer.path} recorded no activations")
            classes = class_indices(self.targets, logits.detach())
            layout = recorder.layout or PLAIN
            grads = self._gradients(logits, classes, recorder.leaf, layout) if self.needs_gradients else []
        logits = logits.detach().float()
        errors = _non_finite(activations, logits, grads)
        columns = {m: self._method(m, batch, activations, logits, classes, grads) for m in self.methods}
        probabilities = class_probabilities(logits)
        per_image: list[list[CamMap]] = []
        for n in range(batch.shape[0]):
            maps: list[CamMap] = []
            seen: set[tuple[str, int | None]] = set()  # top1 may be the class also named: one map each
            for method in self.methods:
                for t, (cam_map, weights) in enumerate(columns[method]):
                    cls = None if method in formulas.CLASS_FREE else int(classes[n, t])
                    if (method, cls) in seen:
                        continue
                    seen.add((method, cls))
                    maps.append(CamMap(
                        method, cls, None if cls is None else _rank(self.targets[t]), cam_map[n],
                        None if weights is None else weights[n],
                        None if cls is None else float(logits[n, cls]),
                        None if cls is None else float(probabilities[n, cls]),
                        None if cls is None else label(cls, self.categories)))
            per_image.append(maps)
        for n in errors:
            per_image[n] = []
        return CamBatch(per_image, errors, activations, logits, layout)

    def _gradients(self, logits: torch.Tensor, classes: torch.Tensor, leaf: torch.Tensor | None,
                   layout: MapLayout = PLAIN) -> list[torch.Tensor]:
        """dY^c/dA for each target column: float32 (N, C, H, W) each, one backward per column
        (taken in the layer's own layout, then made a map by ``layout``: a token layer's prefix
        tokens drop out, as in pytorch-grad-cam's ``reshape_transform``)."""
        if leaf is None or not logits.requires_grad:
            raise UsageError(f"the class scores do not depend on layer {self.layer.path}",
                             hint="choose a layer the forward pass uses on the way to the logits")
        grads = []
        for t in range(classes.shape[1]):
            score = logits.gather(1, classes[:, t:t + 1]).sum()
            (grad,) = torch.autograd.grad(score, leaf, retain_graph=t < classes.shape[1] - 1, allow_unused=True)
            if grad is None:
                raise UsageError(f"the class scores do not depend on layer {self.layer.path}",
                                 hint="choose a layer the forward pass uses on the way to the logits")
            grads.append(layout.to_map(grad.detach()).float())
        return grads

    def _method(self, method: str, batch: torch.Tensor, activations: torch.Tensor, logits: torch.Tensor,
                classes: torch.Tensor, grads: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """One (map (N, h, w), weights (N, C) or None) per target column (one for eigencam)."""
        a = activations.float()
        if method == "eigencam":
            return [(formulas.eigencam_map(a), None)]
        columns = range(classes.shape[1])
        if method == "layercam":
            return [(formulas.layercam_map(a, grads[t]), None) for t in columns]
        if method == "hirescam":
            return [(formulas.hirescam_map(a, grads[t]), None) for t in columns]
        if method == "cam":
            if self.classifier is None:  # _check allows "cam" only with a linear classifier
                raise RuntimeError("cam needs the model's classifier")
            weight = self.classifier.weight.detach()
            all_weights = [formulas.cam_weights(weight, classes[:, t]) for t in columns]
        elif method == "gradcam":
            all_weights = [formulas.gradcam_weights(grads[t]) for t in columns]
        elif method == "gradcam++":
            all_weights = [formulas.gradcampp_weights(a, grads[t]) for t in columns]
        elif method == "xgradcam":
            all_weights = [formulas.xgradcam_weights(a, grads[t]) for t in columns]
        elif method == "scorecam":
            all_weights = list(self._scorecam(batch, a, classes).unbind(dim=2))
        else:  # ablationcam
            ablated = self._ablated_logits(batch, a, classes)
            all_weights = [formulas.ablationcam_weights(logits.gather(1, classes[:, t:t + 1])[:, 0], ablated[:, :, t])
                           for t in columns]
        return [(formulas.weighted_map(a, w), w) for w in all_weights]

    def _scorecam(self, batch: torch.Tensor, activations: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Score-CAM (Wang et al., CVPR Workshops 2020), as the authors' code: w^c_k = softmax(f(X * H_k))_c,
        the class probability of the photo masked by channel k's upsampled, [0, 1]-scaled map.
        -> float32 (N, C, T). Constant channels (an all-zero mask) get weight 0, as the authors skip them."""
        n, c = activations.shape[:2]
        out = torch.zeros(n, c, classes.shape[1], device=activations.device)
        for i in range(n):
            for start in range(0, c, self.cam_batch):
                stop = min(c, start + self.cam_batch)
                masks = formulas.scorecam_masks(activations[i:i + 1, start:stop], (batch.shape[2], batch.shape[3]))[0]
                with torch.no_grad():
                    probabilities = class_probabilities(self._forward(batch[i][None] * masks[:, None]))
                weights = probabilities[:, classes[i]]  # (k, T)
                blank = masks.flatten(1).amax(dim=1) == 0
                out[i, start:stop] = torch.where(blank[:, None], torch.zeros_like(weights), weights)
        return out

    def _forward(self, inputs: torch.Tensor) -> torch.Tensor:
        with GradientCapture(self.model, self.layer, with_grad=False) as recorder:
            return recorder.run(inputs)

    def _ablated_logits(self, batch: torch.Tensor, activations: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """The target logits with each channel of the layer set to zero: float32 (N, C, T)."""
        n, c = activations.shape[:2]
        out = torch.zeros(n, c, classes.shape[1], device=activations.device)
        for i in range(n):
            for start in range(0, c, self.cam_batch):
                channels = torch.arange(start, min(c, start + self.cam_batch), device=activations.device)
                logits = self._ablation_pass(batch[i][None], activations[i], channels)
                out[i, start:start + len(channels)] = logits.float()[:, classes[i]]
        return out

    def _ablation_pass(self, photo: torch.Tensor, activations: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
        """Logits (k, classes) of the photo with channel ``channels[j]`` zeroed in copy j."""
        copies = activations[None].repeat(len(channels), 1, 1, 1)
        copies[torch.arange(len(channels)), channels] = 0

        def replace(output: torch.Tensor) -> torch.Tensor:
            return copies.to(output.dtype)

        if self.ablation_from_layer is not False:
            try:
                with GradientCapture(self.model, self.layer, with_grad=False, replace=replace) as recorder:
                    logits = recorder.run(photo)
                if logits.dim() == 2 and logits.shape[0] == len(channels):
                    self.ablation_from_layer = True
                    return logits
            except RuntimeError:
                if self.ablation_from_layer:  # it worked before: this is a real failure
                    raise
            self.ablation_from_layer = False
        with GradientCapture(self.model, self.layer, with_grad=False, replace=replace) as recorder:
            return recorder.run(photo.expand(len(channels), -1, -1, -1))


def _rank(target: Target) -> int | None:
    return target.rank


def _non_finite(activations: torch.Tensor, logits: torch.Tensor, grads: list[torch.Tensor]) -> dict[int, str]:
    """Photo index -> message, for photos whose activations, logits or gradients are NaN or infinite."""
    errors: dict[int, str] = {}
    checks = [("activations", activations), ("logits", logits), *(("gradients", g) for g in grads)]
    for name, tensor in checks:
        bad = ~torch.isfinite(tensor.float().flatten(1)).all(dim=1)
        for n in bad.nonzero().flatten().tolist():
            errors.setdefault(n, f"the layer's {name} are not finite (NaN or infinite) for this photo: no class map")
    return errors


def find_cam_classifier(model: nn.Module, layer: LayerRef, example: torch.Tensor) -> nn.Linear:
    """The linear layer that CAM's weights come from: the model's last ``nn.Linear``, accepted
    only if the logits equal ``Linear(mean_ij A(i,j))`` for the layer's output A on ``example``
    (float32 (1, 3, H, W)), i.e. the model ends in global average pooling + that one layer."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    hint = "CAM needs global average pooling + one linear layer right after this layer; use gradcam instead"
    if not linears:
        raise UsageError("--cam cam: the model has no linear layer", hint=hint)
    fc = linears[-1]
    with GradientCapture(model, layer, with_grad=False) as recorder:
        logits = recorder.run(example)
    a = recorder.activations
    if a is None or a.dim() != 4 or a.shape[1] != fc.in_features or logits.shape[-1] != fc.out_features:
        raise UsageError(f"--cam cam: the model does not end in global pooling + one linear layer after {layer.path}",
                         hint=hint)
    with torch.no_grad():
        expected = fc(a.float().mean(dim=(2, 3)))
    scale = max(1.0, float(expected.abs().max()))
    if not math.isfinite(scale) or not torch.allclose(logits.float(), expected, atol=1e-4 * scale, rtol=1e-4):
        raise UsageError(f"--cam cam: the model does not end in global pooling + one linear layer after {layer.path}",
                         hint=hint)
    return fc


def build_explainers(model: nn.Module, layers: Sequence[LayerRef], methods: Sequence[str],
                     target_specs: Sequence[str], categories: Sequence[str] | None, example: torch.Tensor,
                     cam_batch: int = DEFAULT_CAM_BATCH, calls: Mapping[str, int] | None = None,
                     model_name: str = "the model") -> dict[str, ClassExplainer]:
    """One :class:`ClassExplainer` per layer, after every check that needs no photo: the
    targets (names, ranges), ``cam``'s pooling + linear ending, ``eigencam``'s channels, and
    the calls of each layer's module (:func:`featviz.capture.calls.check_single_call`: a module
    that runs more than once needs a picked call, ``layer1.0.relu@2``, whose output alone is
    differentiated or replaced). ``calls``: calls per module path in one pass of ``example``
    when the caller counted them already (else counted here, one pass). ``example``: float32
    (1, 3, H, W), a stand-in photo (the caller's seeded noise). Raises :class:`UsageError` or
    :class:`~featviz.errors.LayerError`."""
    methods = [m.strip().lower() for m in methods]
    if is_script(model):
        raise UsageError("--cam needs gradients and hooks, which a TorchScript model does not offer",
                         hint="load the model as a torchvision name or a package.module:factory")
    unknown = [m for m in methods if m not in formulas.METHODS]
    if unknown:
        close = difflib.get_close_matches(unknown[0], formulas.METHODS, n=3)
        raise UsageError(f"unknown CAM method {unknown[0]!r}",
                         hint=("did you mean " + ", ".join(close) + "? " if close else "")
                         + "use " + ", ".join(formulas.METHODS))
    parse_targets(target_specs, categories)  # names and syntax, before the model runs
    explainers: dict[str, ClassExplainer] = {}
    counted = count_calls(model, example) if calls is None else calls
    for ref in layers:
        check_single_call(counted, ref, model_name)  # a module that runs twice: its call picked, never mixed
        with GradientCapture(model, ref, with_grad=False) as recorder:
            logits = recorder.run(example)
        activations = recorder.activations
        if logits.dim() != 2:
            raise UsageError("--cam needs a model that returns class logits (N, classes); it returned "
                             f"{tuple(logits.shape)}",
                             hint=LOGITS_HINT)
        if activations is None or activations.dim() != 4:
            raise UsageError(f"--cam: layer {ref.path} does not output a feature map (N, C, H, W), "
                             "vision-transformer tokens or a channels-last map",
                             hint="choose a convolutional layer or a transformer block")
        if "eigencam" in methods and activations.shape[1] < 2:
            raise UsageError(f"--cam eigencam: layer {ref.path} has one channel, and a principal component of one "
                             "channel is the channel itself",
                             hint="choose a layer with several channels, or another method")
        targets = parse_targets(target_specs, categories, num_classes=int(logits.shape[1]))
        classifier = find_cam_classifier(model, ref, example) if "cam" in methods else None
        explainers[ref.path] = ClassExplainer(model, ref, methods, targets, cam_batch=cam_batch, classifier=classifier,
                                                categories=categories)
    return explainers
