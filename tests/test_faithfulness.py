"""Deletion and insertion (featviz.maps.faithfulness) against a slow reference loop, numpy, torch-cam
and properties a faithful score must have. Tiny hand-built models, 16x16 and 32x32 inputs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from torch import nn
from torchcam import metrics
from torchvision.transforms import functional as TF

from featviz.errors import ImageError, UsageError
from featviz.maps.faithfulness import (
    AucRow,
    FaithfulnessScore,
    deletion_insertion,
    format_auc_table,
    mean_auc_table,
)


class TinyClassifier(nn.Module):
    """A seeded CNN with BatchNorm and Dropout, so that eval mode matters."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                                      nn.MaxPool2d(2), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.LazyLinear(classes))
        with torch.no_grad():
            self.features[1].running_mean.uniform_(-0.2, 0.2)
            self.features[1].running_var.uniform_(0.5, 1.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)) * 3


def tiny_classifier(size: int) -> TinyClassifier:
    model = TinyClassifier()
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size))  # materialise the lazy layer
    return model


class RegionLogit(nn.Module):
    """Class 0's logit is ``scale`` times the sum of the input over a known region; classes 1, 2
    have logit 0. The region is what a faithful map must rank first."""

    def __init__(self, region: torch.Tensor, scale: float) -> None:
        super().__init__()
        self.register_buffer("region", region.float())
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = (x * self.region).sum(dim=(1, 2, 3)) * self.scale
        zeros = torch.zeros_like(score)
        return torch.stack([score, zeros, zeros], dim=1)


class Counting(nn.Module):
    """Wraps a model, counts the rows it is given and keeps their bytes."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.rows = 0
        self.calls = 0
        self.seen: set[bytes] = set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += x.shape[0]
        self.calls += 1
        self.seen.update(row.numpy().tobytes() for row in x)
        return self.inner(x)


def probability(model: nn.Module, image: torch.Tensor, target: int) -> float:
    with torch.no_grad():
        return torch.softmax(model(image[None]), dim=1)[0, target].item()


def reference_curves(model: nn.Module, image: torch.Tensor, saliency: torch.Tensor, target: int, steps: int,
                     removed: torch.Tensor, blurred: torch.Tensor,
                     seen: list[np.ndarray] | None = None) -> tuple[list[float], list[float], list[float]]:
    """RISE's procedure, written plainly: sort the pixels by (-saliency, index), then for every
    step copy pixels one by one and run one forward for one image (``seen`` collects the
    perturbed images)."""
    _, height, width = image.shape
    pixels = height * width
    flat = saliency.flatten().tolist()
    order = sorted(range(pixels), key=lambda i: (-flat[i], i))
    original, baseline, start = image.numpy(), removed.numpy(), blurred.numpy()
    fractions, deletion, insertion = [], [], []
    for k in range(steps + 1):
        n = k * pixels // steps
        deleted, inserted = original.copy(), start.copy()
        for i in order[:n]:
            h, w = divmod(i, width)
            deleted[:, h, w] = baseline[:, h, w]
            inserted[:, h, w] = original[:, h, w]
        if seen is not None:
            seen += [deleted, inserted]
        fractions.append(n / pixels)
        deletion.append(probability(model, torch.from_numpy(deleted), target))
        insertion.append(probability(model, torch.from_numpy(inserted), target))
    return fractions, deletion, insertion


def scores_only(results: list[FaithfulnessScore | ImageError]) -> list[FaithfulnessScore]:
    assert all(isinstance(r, FaithfulnessScore) for r in results), results
    return [r for r in results if isinstance(r, FaithfulnessScore)]


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """3 images, 32x32, and maps with many ties (values 0..3) so that the tie order matters."""
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(3, 3, 32, 32, generator=generator)
    saliency = torch.randint(0, 4, (3, 32, 32), generator=generator).float()
    return inputs, saliency, [0, 2, 3]


# --------------------------------------------------------------------------- the curves


@pytest.mark.parametrize("baseline", ["zero", "black", "blur"])
def test_curves_equal_the_slow_reference_loop(batch: tuple[torch.Tensor, torch.Tensor, list[int]],
                                              baseline: str) -> None:
    inputs, saliency, targets = batch
    if baseline != "zero":  # the other baselines change only what a removed pixel becomes
        inputs, saliency, targets = inputs[:1], saliency[:1], targets[:1]
    model = Counting(tiny_classifier(32))
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    results = scores_only(deletion_insertion(model, inputs, saliency, targets, steps=16, batch_size=5,
                                             baseline=baseline, mean=mean, std=std))
    for row, score in enumerate(results):
        image = inputs[row]
        blurred = TF.gaussian_blur(image, [11, 11], [5.0, 5.0])
        removed = {"zero": torch.zeros_like(image),
                   "black": ((0 - torch.tensor(mean)) / torch.tensor(std))[:, None, None].expand_as(image).clone(),
                   "blur": blurred}[baseline]
        seen: list[np.ndarray] = []
        fractions, deletion, insertion = reference_curves(model.inner, image, saliency[row], targets[row], 16,
                                                          removed, blurred, seen)
        assert score.fractions == pytest.approx(fractions, abs=0)
        # The perturbed images are the reference's, bit for bit ...
        assert all(image.tobytes() in model.seen for image in seen)
        # ... and the probabilities agree up to float32 rounding: a batched convolution rounds
        # differently from a one-image one (measured: at most 1.2e-7).
        np.testing.assert_allclose(score.deletion, deletion, rtol=0, atol=1e-6)
        np.testing.assert_allclose(score.insertion, insertion, rtol=0, atol=1e-6)
        assert score.target == targets[row]
        assert (score.steps, score.baseline, score.blur_sigma, score.blur_kernel) == (16, baseline, 5.0, 11)


def test_auc_is_numpys_trapezoid(batch: tuple[torch.Tensor, torch.Tensor, list[int]]) -> None:
    inputs, saliency, targets = batch
    results = deletion_insertion(tiny_classifier(32), inputs, saliency, torch.tensor(targets), steps=7)
    for score in scores_only(results):
        assert len(score.fractions) == len(score.deletion) == len(score.insertion) == 8
        assert score.deletion_auc == pytest.approx(np.trapezoid(score.deletion, score.fractions), abs=1e-12)
        assert score.insertion_auc == pytest.approx(np.trapezoid(score.insertion, score.fractions), abs=1e-12)
        # 1024 pixels in 7 steps: uneven steps, x is the share actually changed.
        assert score.fractions[1] == 146 / 1024 and score.fractions[0] == 0 and score.fractions[-1] == 1


def test_endpoints_are_the_original_the_baseline_and_the_blurred_copy(
        batch: tuple[torch.Tensor, torch.Tensor, list[int]]) -> None:
    inputs, saliency, targets = batch
    model = tiny_classifier(32)
    for score, image, target in zip(scores_only(deletion_insertion(model, inputs, saliency, targets)), inputs,
                                    targets, strict=True):
        original = probability(model, image, target)
        assert score.deletion[0] == pytest.approx(original, abs=1e-6)
        assert score.insertion[-1] == pytest.approx(original, abs=1e-6)
        assert score.deletion[-1] == pytest.approx(probability(model, torch.zeros_like(image), target), abs=1e-6)
        blurred = TF.gaussian_blur(image, [11, 11], [5.0, 5.0])
        assert score.insertion[0] == pytest.approx(probability(model, blurred, target), abs=1e-6)


def test_the_blur_is_a_normalised_gaussian_with_reflect_padding() -> None:
    """Insertion's start, checked against the formula: exp(-d²/2σ²) over an 11x11 window,
    divided by its sum, with the image reflected at the border (numpy, float64)."""
    image = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(4))
    model = RegionLogit(torch.zeros(1, 16, 16), 1.0)
    # With saliency ranking pixel 0 first and one step per pixel, insertion point 1 is the
    # blurred copy with pixel 0 restored; the model below reads one pixel of the result.
    radius, sigma = 5, 5.0
    d = np.arange(-radius, radius + 1)
    kernel = np.exp(-(d[:, None] ** 2 + d[None, :] ** 2) / (2 * sigma ** 2))
    kernel /= kernel.sum()
    padded = np.pad(image.double().numpy(), ((0, 0), (radius, radius), (radius, radius)), mode="reflect")
    expected = np.zeros((3, 16, 16))
    for i in range(2 * radius + 1):
        for j in range(2 * radius + 1):
            expected += kernel[i, j] * padded[:, i:i + 16, j:j + 16]
    for h, w in [(0, 0), (7, 3), (15, 15)]:
        region = torch.zeros(1, 16, 16)
        region[0, h, w] = 1
        model = RegionLogit(region, 1.0)
        score = scores_only(deletion_insertion(model, image[None], torch.zeros(1, 16, 16), [0], steps=1))[0]
        # Two classes at logit 0 and one at the pixel's channel sum s: p = e^s / (e^s + 2).
        s = expected[:, h, w].sum()
        assert score.insertion[0] == pytest.approx(np.exp(s) / (np.exp(s) + 2), abs=1e-6)


def test_small_inputs_shrink_the_blur_kernel() -> None:
    score = scores_only(deletion_insertion(tiny_classifier(4), torch.rand(1, 3, 4, 4), torch.rand(1, 4, 4), [1],
                                           steps=4))[0]
    assert score.blur_kernel == 7  # reflect padding allows at most 3 pixels on a 4-pixel side


# --------------------------------------------------------------------------- properties


def region_case() -> tuple[RegionLogit, torch.Tensor, torch.Tensor]:
    """A bright 8x8 square on a dark 32x32 image, and a model that reads that square."""
    region = torch.zeros(1, 32, 32)
    region[0, 4:12, 18:26] = 1
    image = 0.1 + 0.05 * torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    image[:, :, 4:12, 18:26] += 1.0
    return RegionLogit(region, 0.02), image, region[0]


def test_a_map_that_ranks_the_evidence_first_scores_best() -> None:
    model, image, region = region_case()
    noise = torch.rand(32, 32, generator=torch.Generator().manual_seed(3))
    maps = torch.stack([region + 0.01 * noise, -region + 0.01 * noise, noise])
    good, reversed_, random_ = scores_only(deletion_insertion(model, image.expand(3, -1, -1, -1), maps, [0, 0, 0]))
    assert good.deletion_auc < random_.deletion_auc < reversed_.deletion_auc
    assert good.insertion_auc > random_.insertion_auc > reversed_.insertion_auc
    # The good map deletes the whole region in the first 64 of 1024 pixels, i.e. the first step:
    # from then on the logit is 0 and the probability that of three equal logits.
    assert good.deletion[1:] == pytest.approx([1 / 3] * 16, abs=1e-6)
    assert reversed_.deletion[:-1] == pytest.approx([reversed_.deletion[0]] * 16, abs=1e-6)


def test_eval_mode_during_the_pass_and_flags_restored() -> None:
    model = tiny_classifier(16)
    model.train()
    model.head[1].eval()  # a mixed state must come back exactly
    before = {name: module.training for name, module in model.named_modules()}
    grads = {name: p.requires_grad for name, p in model.named_parameters()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    inputs, saliency = torch.randn(2, 3, 16, 16), torch.rand(2, 16, 16)
    first = scores_only(deletion_insertion(model, inputs, saliency, [0, 1], steps=4))
    second = scores_only(deletion_insertion(model, inputs, saliency, [0, 1], steps=4))
    assert first == second  # Dropout off and BatchNorm on running statistics: deterministic
    assert {name: module.training for name, module in model.named_modules()} == before
    assert {name: p.requires_grad for name, p in model.named_parameters()} == grads
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())  # running stats untouched


class Raising(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")


def test_flags_restored_when_the_forward_raises() -> None:
    model = Raising()
    model.train()
    with pytest.raises(RuntimeError, match="boom"):
        deletion_insertion(model, torch.rand(1, 3, 8, 8), torch.rand(1, 8, 8), [0], steps=2)
    assert model.training and model.bn.training


def test_nan_saliency_is_an_error_for_that_row_only() -> None:
    model = tiny_classifier(16)
    inputs, saliency = torch.randn(3, 3, 16, 16), torch.rand(3, 16, 16)
    saliency[1, 3, 4] = float("nan")
    results = deletion_insertion(model, inputs, saliency, [0, 1, 2], steps=4, names=["a.jpg", "b.jpg", "c.jpg"])
    assert isinstance(results[0], FaithfulnessScore) and isinstance(results[2], FaithfulnessScore)
    assert isinstance(results[1], ImageError)
    assert results[1].message.startswith("b.jpg: ") and "NaN" in results[1].message
    assert results[1].hint


def test_nan_model_output_is_an_error_for_that_row_only() -> None:
    model, image, _ = region_case()
    inputs = image.repeat(2, 1, 1, 1)
    inputs[1, 0, 5, 20] = float("inf")  # inside the region: the logit is inf, the softmax NaN
    results = deletion_insertion(model, inputs, torch.rand(2, 32, 32), [0, 0], steps=4)
    assert isinstance(results[0], FaithfulnessScore)
    assert isinstance(results[1], ImageError) and results[1].message.startswith("image 1: ")
    json.dumps(results[0].as_json(), allow_nan=False)


@pytest.mark.parametrize(("change", "message"), [
    ({"saliency": torch.rand(2, 16, 15)}, "saliency maps have shape"),
    ({"targets": [0]}, "1 targets for 2 inputs"),
    ({"steps": 0}, "steps must be between"),
    ({"steps": 257}, "steps must be between"),
    ({"baseline": "grey"}, "unknown deletion baseline"),
    ({"baseline": "black"}, "needs the normalisation's mean and std"),
    ({"blur_kernel": 10}, "odd"),
    ({"blur_sigma": 0.0}, "sigma"),
    ({"batch_size": 0}, "batch size"),
    ({"targets": [0, 4]}, "target class 4 is out of range"),
])
def test_arguments_that_cannot_work_are_usage_errors(change: dict, message: str) -> None:
    arguments = {"saliency": torch.rand(2, 16, 16), "targets": [0, 1]} | change
    saliency, targets = arguments.pop("saliency"), arguments.pop("targets")
    with pytest.raises(UsageError, match=message):
        deletion_insertion(tiny_classifier(16), torch.rand(2, 3, 16, 16), saliency, targets, **arguments)


def test_an_output_that_is_not_logits_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match=r"\(N, classes\) logits"):
        deletion_insertion(nn.Conv2d(3, 2, 1), torch.rand(1, 3, 8, 8), torch.rand(1, 8, 8), [0], steps=2)


# --------------------------------------------------------------------------- batching


def test_batch_size_does_not_change_the_numbers(batch: tuple[torch.Tensor, torch.Tensor, list[int]]) -> None:
    inputs, saliency, targets = batch
    inputs, saliency = inputs[:, :, :16, :16], saliency[:, :16, :16]
    model = tiny_classifier(16)
    runs = [scores_only(deletion_insertion(model, inputs, saliency, targets, steps=8, batch_size=size))
            for size in (1, 7, None)]
    for other in runs[1:]:
        for a, b in zip(runs[0], other, strict=True):
            np.testing.assert_allclose(a.deletion + a.insertion, b.deletion + b.insertion, rtol=0, atol=1e-6)


def test_shared_perturbed_inputs_are_run_once() -> None:
    """2 images x (2 maps x 2 targets): per image 3 shared endpoints (original, baseline,
    blurred copy) and 2 x (S - 1) interior points per distinct map; targets share everything."""
    generator = torch.Generator().manual_seed(5)
    images, maps = torch.randn(2, 3, 16, 16, generator=generator), torch.rand(2, 2, 16, 16, generator=generator)
    rows = [(i, m, t) for i in range(2) for m in range(2) for t in (0, 3)]
    inputs = torch.stack([images[i] for i, _, _ in rows])
    saliency = torch.stack([maps[i, m] for i, m, _ in rows])
    model = Counting(tiny_classifier(16))
    steps = 6
    shared = scores_only(deletion_insertion(model, inputs, saliency, [t for _, _, t in rows], steps=steps,
                                            batch_size=10))
    assert model.rows == 2 * 3 + 4 * 2 * (steps - 1)
    assert model.calls == -(-model.rows // 10)
    for (i, m, t), score in zip(rows, shared, strict=True):
        alone = scores_only(deletion_insertion(model.inner, images[i:i + 1], maps[i, m][None], [t], steps=steps))[0]
        np.testing.assert_allclose(score.deletion + score.insertion, alone.deletion + alone.insertion,
                                   rtol=0, atol=1e-6)


def test_blur_baseline_shares_deletions_end_with_insertions_start() -> None:
    model = Counting(tiny_classifier(16))
    score = scores_only(deletion_insertion(model, torch.randn(1, 3, 16, 16), torch.rand(1, 16, 16), [2], steps=4,
                                           baseline="blur"))[0]
    assert model.rows == 2 + 2 * 3
    assert score.deletion[-1] == score.insertion[0]


# --------------------------------------------------------------------------- the peer


class GivenMap:
    """Just enough of torch-cam's CAM-extractor interface to hand its metric a fixed map."""

    def __init__(self, model: nn.Module, saliency: torch.Tensor) -> None:
        self.model = model
        self.saliency = saliency

    def __call__(self, class_idx: object = None, scores: object = None, **kwargs: object) -> list[torch.Tensor]:
        return [self.saliency]

    def fuse_cams(self, cams: list[torch.Tensor]) -> torch.Tensor:
        return cams[0]

    @contextmanager
    def _hooks_off(self) -> Iterator[None]:
        yield


def test_areas_equal_torch_cams_deletion_insertion_metric(
        batch: tuple[torch.Tensor, torch.Tensor, list[int]]) -> None:
    """torch-cam 0.5's DeletionInsertionMetric perturbs from one baseline for both curves, so it
    is run twice: zeros (RISE's deletion) and the blurred copy (RISE's insertion). With 1024
    pixels and 16 steps its points are featviz's."""
    inputs, saliency, targets = batch
    model = tiny_classifier(32)
    ours = scores_only(deletion_insertion(model, inputs, saliency, targets, steps=16))
    def blur(x: torch.Tensor) -> torch.Tensor:
        return TF.gaussian_blur(x, [11, 11], [5.0, 5.0])

    for row, score in enumerate(ours):
        one = inputs[row:row + 1]
        zero = metrics.DeletionInsertionMetric(GivenMap(model, saliency[row:row + 1]),
                                               lambda logits: torch.softmax(logits, dim=-1), steps=16)
        zero.update(one, class_idx=[targets[row]])
        blurred = metrics.DeletionInsertionMetric(GivenMap(model, saliency[row:row + 1]),
                                                  lambda logits: torch.softmax(logits, dim=-1), steps=16,
                                                  baseline=blur)
        blurred.update(one, class_idx=[targets[row]])
        assert score.deletion_auc == pytest.approx(zero.summary()["deletion_auc"], abs=1e-6)
        assert score.insertion_auc == pytest.approx(blurred.summary()["insertion_auc"], abs=1e-6)


# --------------------------------------------------------------------------- tables and JSON


def make_score(deletion_auc: float, insertion_auc: float) -> FaithfulnessScore:
    return FaithfulnessScore(target=0, fractions=(0.0, 1.0), deletion=(0.5, 0.5), insertion=(0.5, 0.5),
                             deletion_auc=deletion_auc, insertion_auc=insertion_auc, steps=1, baseline="zero",
                             blur_sigma=5.0, blur_kernel=11)


def test_mean_auc_table_averages_per_method_in_order_of_appearance() -> None:
    records = [("gradcam", make_score(0.2, 0.6)), ("scorecam", make_score(0.1, 0.5)),
               ("gradcam", make_score(0.4, 0.8)), ("gradcam", make_score(0.3, 0.7))]
    rows = mean_auc_table(records)
    assert [row.method for row in rows] == ["gradcam", "scorecam"]
    assert rows[0].count == 3 and rows[1].count == 1
    assert rows[0].deletion_auc == pytest.approx(np.mean([0.2, 0.4, 0.3]))
    assert rows[0].insertion_auc == pytest.approx(np.mean([0.6, 0.8, 0.7]))
    assert rows[1] == AucRow("scorecam", 1, 0.1, 0.5)
    assert rows[0].as_json() == {"method": "gradcam", "count": 3, "deletion_auc": 0.3, "insertion_auc": 0.7}


def test_the_text_table_marks_the_best_method_in_each_column() -> None:
    text = format_auc_table([AucRow("gradcam", 3, 0.3, 0.7), AucRow("scorecam", 3, 0.1, 0.5)])
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["method", "n"] and "lower is better" in lines[0]
    assert lines[1].split() == ["gradcam", "3", "0.3000", "0.7000", "*"]
    assert lines[2].split() == ["scorecam", "3", "0.1000", "*", "0.5000"]
    assert format_auc_table([]) == "no faithfulness scores"


def test_json_carries_curves_areas_and_settings(batch: tuple[torch.Tensor, torch.Tensor, list[int]]) -> None:
    inputs, saliency, targets = batch
    score = scores_only(deletion_insertion(tiny_classifier(32), inputs[:1], saliency[:1], targets[:1], steps=4))[0]
    full = json.loads(json.dumps(score.as_json(), allow_nan=False))
    assert set(full) == {"target", "deletion_auc", "insertion_auc", "steps", "fractions", "deletion", "insertion",
                         "baseline", "blur"}
    assert full["fractions"] == [0, 0.25, 0.5, 0.75, 1] and len(full["deletion"]) == len(full["insertion"]) == 5
    assert full["blur"] == {"sigma": 5.0, "kernel": 11} and full["baseline"] == "zero" and full["steps"] == 4
    assert full["deletion_auc"] == pytest.approx(score.deletion_auc, rel=1e-6)
    assert score.brief_json() == {key: full[key] for key in ("deletion_auc", "insertion_auc", "steps", "baseline")}
