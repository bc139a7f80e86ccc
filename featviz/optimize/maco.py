"""MACO: phase-only optimisation under a fixed natural-image magnitude spectrum (Fel et al.,
"Unlocking Feature Visualization for Deeper Networks with MAgnitude Constrained Optimization",
NeurIPS 2023).

Per image, with M the fixed magnitude (float32 (3, H, H//2+1), decorrelated colour space,
:mod:`featviz.optimize.spectrum`) and phi the optimised phase (same shape)::

    phi'  = standardise(phi)                         # mean 0, std 1 over the image's phases
    phi'' = phi' made odd in the self-conjugate columns (see below)
    X     = M * exp(i phi''), except each plane's mean (DC) coefficient: M_0 * cos(phi'_0)
    x     = irfft2(X, norm="ortho")                  # float (3, H, H): |rfft2(x)| == M but at DC
    image = sigmoid(recorrelate(standardise(x)))     # RGB in [0, 1]; then the model's normalisation

as the official code does (standardised phase, inverse FFT, standardised image, Lucid's colour
recorrelation, sigmoid scaled to the value range; featviz's range is [0, 1] because the model's own
normalisation follows, which maps [0, 1] to about [-2.1, 2.6] for ImageNet's statistics, the
official code's (-2.5, 2.5)).

**What is kept.** ``x`` has magnitude spectrum exactly M (to float rounding) at every frequency
but the three DC coefficients (each plane's mean: free, as in the official code, where irfft2 keeps
the real part M_0 cos(phi'_0); a fixed mean colour costs the colour channels of the trained example
much of their activation, see docs/optimize.md). The official code
lets ``irfft2`` drop the imaginary part in the columns kx = 0 and kx = H/2, where a real image's
spectrum must satisfy X(-ky) = conj(X(ky)), which shrinks those magnitudes; featviz makes the
phase odd there, phi''(ky) = (phi'(ky) - phi'(-ky)) / 2 (0 at the four self-conjugate bins) and
the magnitude even, so nothing is dropped. ``standardise(x)`` divides every coefficient by the
image's standard deviation and moves only the three DC coefficients: its spectrum is M / sigma
except at DC. The colour mix is linear per pixel (undo it with :func:`~featviz.optimize.param.
decorrelate`); only the sigmoid changes the spectrum, as in the paper.

Not built: the official code's "transparency" map (|d objective / d image| summed over the
steps), which would need the engine to hand out the image's gradient.
"""

from __future__ import annotations

import torch

from featviz.optimize.param import COLOR, FFTImage, recorrelate
from featviz.optimize.spectrum import Spectrum, default_spectrum, load_spectrum, magnitude_for

EPS = 1e-4  # the official code's guard in its standardisation (Horama)
#: The learning rate `featviz optimize --param maco` uses when --lr is not given: the official code's
#: (NAdam, 1.0); featviz keeps Adam. 0.05 (fft's) reached the best photo for 27 of 32 channels of the
#: trained example at 64 steps, 1.0 for 30 (docs/optimize.md).
MACO_LR = 1.0


def standardise(values: torch.Tensor) -> torch.Tensor:
    """Per image (first axis): minus the mean, divided by the (unbiased) std + EPS."""
    dims = tuple(range(1, values.dim()))
    centred = values - values.mean(dim=dims, keepdim=True)
    return centred / (values.std(dim=dims, keepdim=True) + EPS)


def odd_phase(phase: torch.Tensor) -> torch.Tensor:
    """``phase`` float (..., H, H//2+1) with the self-conjugate columns (kx = 0, and kx = H/2 for
    an even H) made odd, p(ky) <- (p(ky) - p(-ky)) / 2; the other columns unchanged."""
    height = phase.shape[-2]
    mirror = (-torch.arange(height, device=phase.device)) % height
    odd = (phase - phase[..., mirror, :]) / 2
    columns = torch.zeros(phase.shape[-1], dtype=torch.bool, device=phase.device)
    columns[0] = True
    if height % 2 == 0:
        columns[-1] = True
    return torch.where(columns, odd, phase)


class MACOImage(torch.nn.Module):
    """A batch of MACO images. ``magnitude``: float32 (3, size, size//2+1), fixed (a buffer);
    ``phase``: float32 (N, 3, size, size//2+1), the parameters, drawn N(0, 1) from ``generator``
    (the official initialisation). :meth:`forward` gives RGB float32 (N, 3, size, size) in [0, 1].
    """

    magnitude: torch.Tensor
    color: torch.Tensor  # float32 (3, 3): COLOR on the image's device

    def __init__(self, batch: int, size: int, generator: torch.Generator, magnitude: torch.Tensor) -> None:
        super().__init__()
        expected = (3, size, size // 2 + 1)
        if tuple(magnitude.shape) != expected:
            raise ValueError(f"magnitude has shape {list(magnitude.shape)}, not {list(expected)}")
        self.size = size
        self.register_buffer("magnitude", magnitude.float().clone())
        self.register_buffer("color", COLOR.clone())
        self.phase = torch.nn.Parameter(torch.randn((batch, *expected), generator=generator))

    def decorrelated(self) -> torch.Tensor:
        """x = irfft2(M exp(i phi'')): float32 (N, 3, size, size), in decorrelated colour, not
        yet standardised; its |rfft2(norm="ortho")| is ``magnitude``."""
        standard = standardise(self.phase)
        magnitude = self.magnitude.expand_as(standard)
        spectrum = torch.polar(magnitude, odd_phase(standard))
        dc = torch.complex(magnitude[..., :1, :1] * torch.cos(standard[..., :1, :1]),
                           torch.zeros_like(standard[..., :1, :1]))
        spectrum = torch.cat([torch.cat([dc, spectrum[..., :1, 1:]], dim=-1), spectrum[..., 1:, :]], dim=-2)
        image: torch.Tensor = torch.fft.irfft2(spectrum, s=(self.size, self.size), norm="ortho")
        return image

    def logits(self) -> torch.Tensor:
        """Pre-sigmoid RGB: float32 (N, 3, size, size)."""
        return recorrelate(standardise(self.decorrelated()), self.color)

    def forward(self) -> torch.Tensor:
        return recorrelate(standardise(self.decorrelated()), self.color, squash=True)


def spectrum_of(path: str | None) -> Spectrum:
    """The spectrum file at ``path``, or featviz's built-in one when None."""
    return default_spectrum() if path is None else load_spectrum(path)


def make_image(param: str, batch: int, size: int, generator: torch.Generator,
               spectrum: str | None = None) -> torch.nn.Module:
    """The image module of ``--param``: ``fft`` and ``pixel`` (:class:`FFTImage`), ``maco``
    (:class:`MACOImage` with the spectrum file ``spectrum``, or the built-in one)."""
    if param == "maco":
        return MACOImage(batch, size, generator, magnitude_for(spectrum_of(spectrum), size))
    return FFTImage(batch, size, generator, fft=param == "fft")
