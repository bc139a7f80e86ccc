"""Optimise images that excite (or suppress) channels: many channels in one batch.

Image ``i`` of the batch belongs to channel ``channels[i // K]`` (K = ``diversity``), so one
forward and backward pass per step serves every channel; since each image's objective depends
only on its own activations, the gradients do not mix (the diversity term mixes only the K
images of one channel). Per step: RGB from :class:`~featviz.optimize.param.FFTImage` (or
:class:`~featviz.optimize.maco.MACOImage` with ``param="maco"``), Lucid's
standard transforms (:mod:`featviz.optimize.transforms`), the model's OWN normalisation
(``mean``/``std`` of its preprocessing), the forward pass to the layer
(:class:`~featviz.capture.drive.DrivenLayer`, redirected ReLU for the first 16 steps as in
Lucid; when the layer is a plain convolution, only each image's own channel of it is computed:
:mod:`featviz.capture.onechannel`), Adam on the spectrum.

Objectives per image (maximised; ``negative`` flips the sign):

* ``channel``: the channel's spatial mean, mean_{y,x} A[i, c, y, x];
* ``neuron``: the centre unit A[i, c, H // 2, W // 2];
* ``class``: the logit z[i, c] of the model's output (c: the class);
* diversity (Lucid): minus ``diversity_weight`` times the mean, over the other images j of the
  channel, of <G_i, G_j>, G the L2-normalised Gram matrix of the layer's activations.

Every random draw (the initial spectrum, the transforms) comes from one ``torch.Generator``
seeded with ``seed`` on the CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch.nn import functional

from featviz.capture.calls import check_single_call, count_calls
from featviz.capture.drive import DrivenLayer
from featviz.capture.hooks import capture
from featviz.errors import LayerError, UsageError
from featviz.optimize import transforms
from featviz.optimize.maco import make_image, spectrum_of

if TYPE_CHECKING:
    from featviz.capture.layers import LayerRef

OBJECTIVES = ("channel", "neuron", "class")
#: Lucid overrides the ReLU gradient "for at most 16 steps" (lucid/misc/redirected_relu_grad.py):
#: enough to start a dead channel; afterwards the ordinary gradient, at no extra cost.
REDIRECT_STEPS = 16
PARAMS = ("fft", "pixel", "maco")


@dataclass(frozen=True)
class OptimizeSettings:
    """What to optimise and how; checked by :func:`check_settings` before anything runs."""

    objective: str = "channel"
    steps: int = 512
    lr: float = 0.05
    size: int = 224
    seed: int = 0
    negative: bool = False
    diversity: int = 1
    diversity_weight: float = 100.0
    param: str = "fft"
    spectrum: str | None = None  # --param maco: a `featviz spectrum` file; None: the built-in one
    transforms: bool = True
    # with transforms: only Lucid's jitter(4) (True) or Lucid's standard set (False); None: by the
    # size, jitter only below 128 px (transforms.jitter_only_by_default)
    jitter_only: bool | None = None
    redirect: bool = True
    checkpoints: int = 8  # objective recorded this many times (and at the end)

    def uses_jitter_only(self) -> bool:
        """Whether the transforms are jitter only (``jitter_only``, or by default the size's set)."""
        return transforms.jitter_only_by_default(self.size) if self.jitter_only is None else self.jitter_only

    def as_json(self) -> dict[str, Any]:
        """The settings, with the transform set that ran (``jitter_only`` resolved)."""
        return {**self.__dict__, "jitter_only": self.uses_jitter_only()}


@dataclass
class Optimized:
    """The result: ``images`` float32 (N*K, 3, size, size) in [0, 1] (what the network saw before
    normalisation), ``units`` the channel (or class) of each image, ``activation`` float64
    (N*K,) the objective's raw value on the final untransformed image (no sign flip, no
    diversity term), ``history`` [(step, mean objective over the batch)]."""

    images: torch.Tensor
    units: list[int]
    activation: list[float]
    history: list[tuple[int, float]] = field(default_factory=list)
    per_image_history: list[list[float]] = field(default_factory=list)


def check_settings(settings: OptimizeSettings) -> None:
    """Usage errors that need no model: one sentence and a hint each."""
    if settings.objective not in OBJECTIVES:
        raise UsageError(f"unknown objective {settings.objective!r}", hint="use channel, neuron or class")
    if settings.param not in PARAMS:
        raise UsageError(f"unknown parameterisation {settings.param!r}", hint="use fft, pixel or maco")
    if settings.spectrum is not None:
        if settings.param != "maco":
            raise UsageError(f"--spectrum is for --param maco, not --param {settings.param}",
                             hint="add --param maco, or leave --spectrum out")
        spectrum_of(settings.spectrum)  # a missing or malformed file is refused here, before any step
    if settings.steps < 1:
        raise UsageError(f"--steps {settings.steps}: at least one step is needed", hint="the default is 512")
    if settings.size < 8:
        raise UsageError(f"--size {settings.size}: images must be at least 8 pixels wide",
                         hint="leave --size out to use the model's input size")
    if settings.diversity < 1:
        raise UsageError(f"--diversity {settings.diversity}: at least one image per channel",
                         hint="use --diversity 1 (no diversity) or more")
    if not settings.lr > 0:
        raise UsageError(f"--lr {settings.lr}: the learning rate must be positive",
                         hint="the default is 0.05 (1.0 with --param maco)")


def check_units(model: torch.nn.Module, layer: LayerRef | None, units: Sequence[int], settings: OptimizeSettings,
                device: torch.device) -> int:
    """Check the channels (or classes) against the layer's (or output's) shape with one
    forward pass of a grey image, before any optimisation; returns how many there are."""
    check_settings(settings)
    if not units:
        raise UsageError("no channel was given", hint="pass --channels 0-15, for example")
    blank = torch.zeros(1, 3, settings.size, settings.size, device=device)
    with torch.no_grad():
        if settings.objective == "class":
            output = _model_output(model, blank)
            if output.dim() != 2:
                raise UsageError(f"the class objective needs a classifier, and this model's output has shape "
                                 f"{list(output.shape)}, not (N, classes)",
                                 hint="use --objective channel with --layer")
            count, what = int(output.shape[1]), "classes"
        else:
            if layer is None:
                raise UsageError(f"--objective {settings.objective} needs a layer", hint="pass --layer")
            check_single_call(count_calls(model, blank), layer)  # a module that runs twice: its call picked
            acts = capture(model, [layer], blank)[layer.path]
            if acts.dim() != 4:
                raise LayerError(f"layer {layer.path} has no channel maps: its output has shape {list(acts.shape)}",
                                 hint="--objective class optimises a logit; for a channel pick a layer whose "
                                      "output is (N, C, H, W)")
            count, what = int(acts.shape[1]), "channels"
    bad = [u for u in units if not 0 <= u < count]
    if bad:
        where = "the model" if settings.objective == "class" else f"layer {layer.path if layer else ''}"
        raise UsageError(f"{'class' if what == 'classes' else 'channel'} {bad[0]} is out of range: {where} has "
                         f"{what} 0..{count - 1}", hint=f"give --channels within 0-{count - 1}")
    return count


def _model_output(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    training = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        output = model(batch)
    finally:
        for module, flag in training:
            module.train(flag)
    if not isinstance(output, torch.Tensor):
        raise UsageError("the class objective needs a model whose output is one tensor of logits",
                         hint="use --objective channel with --layer")
    return output


def _diversity(acts: torch.Tensor, k: int) -> torch.Tensor:
    """Per image, the mean cosine similarity of its normalised Gram matrix with the other images
    of its channel's group of ``k`` (Lucid's diversity): float (B,)."""
    flat = acts.flatten(2)  # (B, C, HW)
    grams = functional.normalize(torch.bmm(flat, flat.transpose(1, 2)).flatten(1), dim=1)  # (B, C*C)
    groups = grams.view(-1, k, grams.shape[1])
    sims = torch.bmm(groups, groups.transpose(1, 2))  # (G, k, k)
    off = sims.sum(2) - torch.diagonal(sims, dim1=1, dim2=2)
    return (off / (k - 1)).reshape(-1)


def _present(tensor: torch.Tensor | None, what: str) -> torch.Tensor:
    """``tensor``, which the objective's capture always provides (an internal invariant)."""
    if tensor is None:
        raise RuntimeError(f"the capture did not provide the {what} the objective needs")
    return tensor


def _values(acts: torch.Tensor | None, output: torch.Tensor | None, units: torch.Tensor,
            objective: str, picked: bool = False) -> torch.Tensor:
    """The objective's raw value per image: float (B,). ``picked``: ``acts`` is already each
    image's own channel, (B, H, W) (:class:`~featviz.capture.drive.DrivenLayer`'s ``pick``)."""
    rows = torch.arange(units.shape[0], device=units.device)
    if objective == "class":
        return _present(output, "model output")[rows, units]
    present = _present(acts, "layer activations")
    chosen = present if picked else present[rows, units]  # (B, H, W)
    if objective == "neuron":
        return chosen[:, chosen.shape[1] // 2, chosen.shape[2] // 2]
    return chosen.flatten(1).mean(dim=1)


def optimize(model: torch.nn.Module, layer: LayerRef | None, units: Sequence[int], settings: OptimizeSettings,
             mean: Sequence[float], std: Sequence[float], device: torch.device | str = "cpu",
             on_step: Callable[[int, float], None] | None = None, mix: torch.Tensor | None = None) -> Optimized:
    """Optimise ``len(units) * settings.diversity`` images in one batch; see the module doc.

    ``mean``/``std``: the model's input normalisation (3 values each). ``on_step(step, mean
    objective)`` is called after every step (the CLI's progress bar). The model is left as found.
    ``mix``: float (len(units), C), with the channel objective: image i maximises
    sum_c mix[i, c] * mean_{y,x} A[i, c] instead (see :func:`interpolate`).
    """
    check_settings(settings)
    device = torch.device(device)
    k = settings.diversity
    unit_list = [int(u) for u in units for _ in range(k)]
    batch = len(unit_list)
    generator = torch.Generator().manual_seed(settings.seed)
    image = make_image(settings.param, batch, settings.size, generator, settings.spectrum).to(device)
    optimiser = adam(list(image.parameters()), settings.lr)
    unit_t = torch.tensor(unit_list, device=device)
    mean_t = torch.tensor(list(mean), dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std_t = torch.tensor(list(std), dtype=torch.float32, device=device).view(1, -1, 1, 1)
    shift, gain_t = -mean_t / std_t, 1 / std_t  # (x - mean) / std as one addcmul per step
    sign = -1.0 if settings.negative else 1.0
    mix_t = None if mix is None else mix.float().repeat_interleave(k, dim=0).to(device)
    every = max(1, settings.steps // max(1, settings.checkpoints))
    history: list[tuple[int, float]] = []
    per_image: list[list[float]] = []
    need_output = settings.objective == "class"
    transform = _jitter_parts if settings.uses_jitter_only() else transforms.standard_parts
    # each image reads one channel of the layer (not with diversity's Gram matrices or a mix)
    pick = unit_t if settings.objective != "class" and k == 1 and mix_t is None else None
    with DrivenLayer(model, None if need_output and k == 1 else layer, need_output=need_output,
                     redirect=settings.redirect, pick=pick) as driven:
        for step in range(1, settings.steps + 1):
            rgb = image()
            seen, fill = transform(rgb, generator) if settings.transforms else (rgb, None)
            acts = driven.run(normalise(seen, fill, shift, gain_t),
                              redirect=settings.redirect and step <= REDIRECT_STEPS)
            values = (_mixed(acts, mix_t) if mix_t is not None
                      else _values(acts, driven.output, unit_t, settings.objective, driven.picked))
            gain = sign * values
            if k > 1 and acts is not None:
                gain = gain - settings.diversity_weight * _diversity(acts, k)
            optimiser.zero_grad(set_to_none=True)
            torch.autograd.backward(-gain.sum())
            optimiser.step()
            score = float(values.detach().mean())
            if on_step is not None:
                on_step(step, score)
            if step % every == 0 or step == settings.steps:
                history.append((step, score))
                per_image.append([float(v) for v in values.detach().cpu()])
        with torch.no_grad():
            final = image().detach()
            last = driven.run((final - mean_t) / std_t)
            reached = (_mixed(last, mix_t) if mix_t is not None
                       else _values(last, driven.output, unit_t, settings.objective, driven.picked))
    return Optimized(final.cpu(), unit_list, [float(v) for v in reached.double().cpu()], history, per_image)


def adam(parameters: list[torch.nn.Parameter], lr: float) -> torch.optim.Adam:
    """Adam, as one fused kernel where this torch has it for the parameters' device (CPU from
    torch 2.4; the same update to float rounding): at 64 images of 224 px the unfused step's
    nine passes over the spectrum and its two moments cost 0.05 of the floor
    (benchmarks/optimize.py). Older torch refuses ``fused=True`` at construction: plain Adam."""
    try:
        return torch.optim.Adam(parameters, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(parameters, lr=lr)


def normalise(seen: torch.Tensor, fill: torch.Tensor | None, shift: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """The model's normalisation of a transformed batch, (seen + fill - mean) / std, as one
    ``addcmul`` over the batch: ``seen`` float (N, 3, H, W), ``fill`` the transforms' grey share
    (1, 1, H, W) or None (:func:`~featviz.optimize.transforms.standard_parts`), ``shift`` =
    -mean / std and ``gain`` = 1 / std, each (1, 3, 1, 1)."""
    return torch.addcmul(shift if fill is None else torch.addcmul(shift, fill, gain), seen, gain)


def _jitter_parts(images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, None]:
    """:func:`~featviz.optimize.transforms.jitter_only` in the form of ``standard_parts`` (no fill)."""
    return transforms.jitter_only(images, generator), None


def _mixed(acts: torch.Tensor | None, mix: torch.Tensor) -> torch.Tensor:
    """sum_c mix[i, c] * mean_{y,x} A[i, c]: float (B,)."""
    return (_present(acts, "layer activations").flatten(2).mean(dim=2) * mix).sum(dim=1)


def interpolate(model: torch.nn.Module, layer: LayerRef, first: int, second: int, frames: int,
                settings: OptimizeSettings, mean: Sequence[float], std: Sequence[float],
                device: torch.device | str = "cpu",
                on_step: Callable[[int, float], None] | None = None) -> Optimized:
    """A row of ``frames`` images from channel ``first`` to ``second`` (Lucid's
    ``channel_interpolate`` without its alignment term): image i maximises
    (1 - t_i) * mean A[first] + t_i * mean A[second], t_i = i / (frames - 1)."""
    if frames < 2:
        raise UsageError(f"--frames {frames}: an interpolation needs at least 2 images", hint="use 5, for example")
    count = check_units(model, layer, [first, second], settings, torch.device(device))
    t = torch.linspace(0, 1, frames)
    mix = torch.zeros(frames, count)
    mix[:, first] += 1 - t
    mix[:, second] += t
    return optimize(model, layer, [first] * frames, settings, mean, std, device, on_step, mix=mix)


def activation_of(model: torch.nn.Module, layer: LayerRef, images: torch.Tensor, mean: Sequence[float],
                  std: Sequence[float]) -> torch.Tensor:
    """Every channel's spatial mean on ``images`` (RGB float (N, 3, H, W) in [0, 1], normalised
    here by the model's ``mean``/``std``): float32 (N, C). The plain, hook-removed capture."""
    mean_t = torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1).to(images.device)
    std_t = torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1).to(images.device)
    acts = capture(model, [layer], (images - mean_t) / std_t)[layer.path]
    return acts.flatten(2).mean(dim=2)
