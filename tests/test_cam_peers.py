"""featviz's class activation maps against pytorch-grad-cam and torch-cam, on seeded random models.

Both peers compute the same object: the raw layer-resolution map (after the ReLU, before any
upsampling) is taken from each peer's own code path (pytorch-grad-cam's ``get_cam_image`` on
the activations and gradients its hooks recorded; torch-cam's extractor with
``normalized=False``), and compared after min-max scaling, to 1e-4. Where a peer departs from the
paper, the test shows the departure and where featviz meets the peer once it is undone.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torchcam.methods as torchcam_methods
import torchvision
from pytorch_grad_cam import (
    AblationCAM,
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from featviz.capture.layers import LayerRef
from featviz.maps.explain import ClassExplainer, find_cam_classifier
from featviz.maps.targets import Target

# torch-cam's "no value for fc_layer" log is a warning in some versions
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

PGC = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "xgradcam": XGradCAM, "layercam": LayerCAM,
       "hirescam": HiResCAM, "scorecam": ScoreCAM, "ablationcam": AblationCAM, "eigencam": EigenCAM}
TORCHCAM = {"cam": torchcam_methods.CAM, "gradcam": torchcam_methods.GradCAM, "gradcam++": torchcam_methods.GradCAMpp,
            "xgradcam": torchcam_methods.XGradCAM, "layercam": torchcam_methods.LayerCAM,
            "scorecam": torchcam_methods.ScoreCAM}
CLASSES = (3, 911)


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.get_model(name, weights=None).eval()


@pytest.fixture(scope="module")
def alexnet() -> torch.nn.Module:
    return _model("alexnet")


@pytest.fixture(scope="module")
def resnet18() -> torch.nn.Module:
    return _model("resnet18")


@pytest.fixture(scope="module")
def resnet50() -> torch.nn.Module:
    return _model("resnet50")


def _photos(side: int, count: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(count, 3, side, side, generator=generator)


def minmax(maps: np.ndarray) -> np.ndarray:
    maps = np.asarray(maps, dtype=np.float64)
    low = maps.min(axis=(-2, -1), keepdims=True)
    span = maps.max(axis=(-2, -1), keepdims=True) - low
    return (maps - low) / np.where(span > 0, span, 1)


def featviz_maps(model: torch.nn.Module, path: str, x: torch.Tensor, method: str, cls: int, **kwargs) -> np.ndarray:
    ref = LayerRef(path, None, model.get_submodule(path))
    classifier = find_cam_classifier(model, ref, x[:1]) if method == "cam" else None
    batch = ClassExplainer(model, ref, [method], [Target(index=cls)], classifier=classifier, **kwargs).explain(x)
    assert not batch.errors
    return np.stack([per[0].map.numpy() for per in batch.per_image])


def pgc_maps(model: torch.nn.Module, path: str, x: torch.Tensor, method: str, cls: int) -> np.ndarray:
    """pytorch-grad-cam's raw map: its hooks, its backward, its get_cam_image, its ReLU."""
    layer = model.get_submodule(path)
    explainer = PGC[method](model, [layer])
    targets = [ClassifierOutputTarget(cls)] * x.shape[0]
    try:
        outputs = explainer.activations_and_grads(x)
        if explainer.uses_gradients:
            model.zero_grad()
            sum(target(output) for target, output in zip(targets, outputs, strict=True)).backward()
        recorded = explainer.activations_and_grads
        activations = recorded.activations[0].numpy()
        grads = recorded.gradients[0].numpy() if explainer.uses_gradients else None
        return np.maximum(explainer.get_cam_image(x, layer, targets, activations, grads, False), 0)
    finally:
        explainer.activations_and_grads.release()
        model.zero_grad(set_to_none=True)


def torchcam_maps(model: torch.nn.Module, path: str, x: torch.Tensor, method: str, cls: int) -> np.ndarray:
    kwargs = {"fc_layer": "fc"} if method == "cam" else {}
    with TORCHCAM[method](model, path, input_shape=tuple(x.shape[1:]), **kwargs) as extractor:
        scores = model(x)
        maps = extractor([cls] * x.shape[0], scores if method != "cam" else None, normalized=False)[0]
    model.zero_grad(set_to_none=True)
    return np.maximum(maps.detach().numpy(), 0)  # CAM has no ReLU in torch-cam (nor in Zhou et al.); featviz applies it


def assert_same(ours: np.ndarray, theirs: np.ndarray) -> None:
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(minmax(ours), minmax(theirs), atol=1e-4, rtol=0)


def assert_informative(maps: list[np.ndarray]) -> None:
    """At least one map is not constant, so an agreement means something."""
    assert any(float(m.max() - m.min()) > 0 for stack in maps for m in stack)


# The layers: AlexNet's last ReLU (features.11; features.10 in front of the in-place ReLU is the
# subject of its own test), ResNet-18's layer4, ResNet-50's middle layer3.
GRADIENT_CASES = [("alexnet", "features.11", 127), ("resnet18", "layer4", 96), ("resnet50", "layer3", 64)]


GRADIENT_METHODS = ["gradcam", "xgradcam", "layercam", "hirescam"]


@pytest.fixture(scope="module")
def gradient_maps(alexnet, resnet18, resnet50) -> dict[tuple[str, str], dict[tuple[str, int], np.ndarray]]:
    """featviz's maps for every gradient method and class, one batch pass per layer."""
    models = {"alexnet": alexnet, "resnet18": resnet18, "resnet50": resnet50}
    found = {}
    for model_name, path, side in GRADIENT_CASES:
        model, x = models[model_name], _photos(side)
        ref = LayerRef(path, None, model.get_submodule(path))
        batch = ClassExplainer(model, ref, GRADIENT_METHODS, [Target(index=c) for c in CLASSES]).explain(x)
        assert not batch.errors
        found[model_name, path] = {(cam.method, cam.target): np.stack([per[i].map.numpy() for per in batch.per_image])
                                   for i, cam in enumerate(batch.per_image[0])}
    return found


def pgc_gradient_maps(model: torch.nn.Module, path: str, x: torch.Tensor, cls: int) -> dict[str, np.ndarray]:
    """Every gradient method's raw map from ONE pytorch-grad-cam forward/backward: its hooks
    record A and g, each method's own get_cam_image turns them into a map."""
    layer = model.get_submodule(path)
    recorder = GradCAM(model, [layer])
    targets = [ClassifierOutputTarget(cls)] * x.shape[0]
    try:
        outputs = recorder.activations_and_grads(x)
        model.zero_grad()
        sum(target(output) for target, output in zip(targets, outputs, strict=True)).backward()
        activations = recorder.activations_and_grads.activations[0].numpy()
        grads = recorder.activations_and_grads.gradients[0].numpy()
    finally:
        recorder.activations_and_grads.release()
        model.zero_grad(set_to_none=True)
    maps = {}
    for method in GRADIENT_METHODS:
        peer = PGC[method](model, [layer])
        peer.activations_and_grads.release()  # only its formula is used
        maps[method] = np.maximum(peer.get_cam_image(x, layer, targets, activations, grads, False), 0)
    return maps


@pytest.mark.parametrize(("model_name", "path", "side"), GRADIENT_CASES)
def test_gradient_methods_equal_pytorch_grad_cam(request, gradient_maps, model_name, path, side) -> None:
    model, x = request.getfixturevalue(model_name), _photos(side)
    ours = gradient_maps[model_name, path]
    assert_informative(list(ours.values()))
    for cls in CLASSES:
        theirs = pgc_gradient_maps(model, path, x, cls)
        for method in GRADIENT_METHODS:
            assert_same(ours[method, cls], theirs[method])


@pytest.mark.parametrize(("model_name", "path", "side"), GRADIENT_CASES)
def test_gradient_methods_equal_torchcam(request, gradient_maps, model_name, path, side) -> None:
    model, x = request.getfixturevalue(model_name), _photos(side)
    ours = gradient_maps[model_name, path]
    for method in ("gradcam", "xgradcam", "layercam"):
        for cls in CLASSES:
            assert_same(ours[method, cls], torchcam_maps(model, path, x, method, cls))


def test_cam_equals_torchcam_and_is_gradcam_times_area(resnet18) -> None:
    """CAM at ResNet's layer4 (then global pooling and fc): torch-cam's maps, and, since
    dY/dA_k(i,j) = W_ck / (HW) there, Grad-CAM's map times HW (an independent identity)."""
    x = _photos(96)
    for cls in CLASSES:
        ours = featviz_maps(resnet18, "layer4", x, "cam", cls)
        assert_same(ours, torchcam_maps(resnet18, "layer4", x, "cam", cls))
        area = ours.shape[1] * ours.shape[2]
        gradcam = featviz_maps(resnet18, "layer4", x, "gradcam", cls)
        np.testing.assert_allclose(ours, gradcam * area, rtol=1e-4, atol=1e-6 * float(np.abs(ours).max()))


@pytest.mark.parametrize(("model_name", "path", "side"), GRADIENT_CASES)
def test_gradcampp_equals_pytorch_grad_cam_when_its_epsilon_is_negligible(request, model_name, path, side) -> None:
    """pytorch-grad-cam adds eps = 1e-6 to the denominator 2g^2 + sum(A) g^3 of alpha. The
    gradients of a randomly initialised network are ~1e-3, so g^2 ~ 1e-6 and the eps changes
    the map; with the logits scaled by 1e5 it no longer does, and the maps are
    equal. featviz follows the paper (no eps)."""
    model, x = copy.deepcopy(request.getfixturevalue(model_name)), _photos(side)
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.mul_(1e5)
        last.bias.mul_(1e5)
    ours = [featviz_maps(model, path, x, "gradcam++", cls) for cls in CLASSES]
    assert_informative(ours)
    for cls, mine in zip(CLASSES, ours, strict=True):
        assert_same(mine, pgc_maps(model, path, x, "gradcam++", cls))


def test_gradcampp_differs_from_torchcam_whose_alpha_is_never_divided(resnet18) -> None:
    """torch-cam 0.5.0 computes alpha = g^2, then divides ``alpha[mask]`` in place, but boolean
    indexing returns a copy: the division is lost and its weights are sum_ij g^2 ReLU(g). Its map
    equals exactly that, computed from featviz's own activations and gradients, and differs from
    the paper's (featviz's)."""
    from featviz.capture.hooks import GradientCapture

    model, x, cls = resnet18, _photos(96), 3
    ref = LayerRef("layer4", None, model.layer4)
    with GradientCapture(model, ref) as recorder:
        logits = recorder.run(x)
        (g,) = torch.autograd.grad(logits[:, cls].sum(), recorder.leaf)
    a = recorder.activations
    weights = (g * g * torch.relu(g)).sum(dim=(2, 3))
    variant = torch.relu((weights[:, :, None, None] * a).sum(dim=1)).numpy()
    theirs = torchcam_maps(model, "layer4", x, "gradcam++", cls)
    assert_same(variant, theirs)
    ours = featviz_maps(model, "layer4", x, "gradcam++", cls)
    assert np.abs(minmax(ours) - minmax(theirs)).max() > 1e-3


def test_in_place_relu_after_the_layer(alexnet) -> None:
    """AlexNet's features.10 (a convolution) is followed by ReLU(inplace=True). featviz keeps a
    copy of the convolution's output (negative values included). pytorch-grad-cam's hook keeps
    the tensor itself, which the ReLU then overwrites: it pairs the post-ReLU activations with
    the convolution's gradients, i.e. ReLU(sum_k w_k ReLU(A_k)) with featviz's features.10
    weights w, and differs from featviz's map there."""
    x = _photos(127)
    theirs = pgc_maps(alexnet, "features.10", x, "gradcam", 3)
    ref = LayerRef("features.10", 10, alexnet.features[10])
    ours = ClassExplainer(alexnet, ref, ["gradcam"], [Target(index=3)]).explain(x).per_image
    with torch.no_grad():
        after_relu = torch.relu(alexnet.features[:11](x))
    weights = torch.stack([per[0].weights for per in ours])
    mixed = torch.relu(torch.einsum("nchw,nc->nhw", after_relu, weights)).numpy()
    assert_same(mixed, theirs)
    at_conv = np.stack([per[0].map.numpy() for per in ours])
    assert np.abs(minmax(at_conv) - minmax(theirs)).max() > 1e-2


def test_eigencam_equals_pytorch_grad_cam_up_to_the_sign(resnet18, resnet50) -> None:
    """pytorch-grad-cam projects on the first right-singular vector as numpy's SVD returns it
    (sign arbitrary). featviz fixes the sign so that the projection correlates positively with
    the channel-mean activation: its map is the peer's (ReLU'd) projection or that of its
    negation, whichever has that property."""
    flipped = 0
    for model, path, side in ((resnet18, "layer4", 96), (resnet50, "layer3", 64)):
        x = _photos(side)
        ours = featviz_maps(model, path, x, "eigencam", 0)
        explainer = EigenCAM(model, [model.get_submodule(path)])
        try:
            explainer.activations_and_grads(x)
            activations = explainer.activations_and_grads.activations[0].numpy()
        finally:
            explainer.activations_and_grads.release()
        from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

        projection = get_2d_projection(activations)
        mean = activations.mean(axis=1)
        for n in range(x.shape[0]):
            p, m = projection[n].ravel(), mean[n].ravel()
            sign = 1.0 if np.dot(p - p.mean(), m - m.mean()) >= 0 else -1.0
            flipped += sign < 0
            assert_same(ours[n][None], np.maximum(sign * projection[n], 0)[None])
            o = ours[n].ravel()
            assert np.corrcoef(o, m)[0, 1] > 0
    assert flipped < 4  # the peer is not always wrong either: the fix is a choice of sign, no more


def test_ablationcam_equals_pytorch_grad_cam_where_activations_are_non_negative(resnet18) -> None:
    """pytorch-grad-cam ablates a channel by setting it to 0 only when the layer's minimum is 0;
    at a ReLU output (ResNet's layer4) that is the paper's zeroing."""
    for model, path, side in ((resnet18, "layer4", 64),):
        x = _photos(side, 1)
        for cls in CLASSES[:1]:
            ours = featviz_maps(model, path, x, "ablationcam", cls, cam_batch=64)
            assert_same(ours, pgc_maps(model, path, x, "ablationcam", cls))


def test_ablationcam_zeroes_channels_where_pytorch_grad_cam_subtracts_1e7(resnet18) -> None:
    """Inside a residual block (layer4.1.conv2, negative values) pytorch-grad-cam sets the
    ablated channel to min - 1e7, not 0 as the paper. featviz's weights are the paper's
    (y - y_k) / y, checked channel by channel against a plain forward with that channel zeroed
    (run from the layer upward, the residual identity broadcast from batch 1)."""
    model, x, cls, path = resnet18, _photos(64, 1), 3, "layer4.1.conv2"
    ref = LayerRef(path, None, model.get_submodule(path))
    explainer = ClassExplainer(model, ref, ["ablationcam"], [Target(index=cls)], cam_batch=128)
    result = explainer.explain(x).per_image[0][0]
    assert explainer.ablation_from_layer is True
    logit = model(x)[0, cls].item()
    for channel in (0, 17, 200, 511):
        def zero(module, inputs, output, channel=channel):
            output = output.clone()
            output[:, channel] = 0
            return output

        handle = ref.module.register_forward_hook(zero)
        try:
            with torch.no_grad():
                ablated = model(x)[0, cls].item()
        finally:
            handle.remove()
        assert result.weights[channel].item() == pytest.approx((logit - ablated) / logit, rel=1e-3, abs=1e-5)
    theirs = pgc_maps(model, path, x, "ablationcam", cls)
    assert np.abs(minmax(result.map.numpy()[None]) - minmax(theirs)).max() > 1e-2


def test_scorecam_is_the_authors_formula_not_the_peers_softmax(alexnet) -> None:
    """featviz: w_k = softmax(f(X * H_k))_c, the probability of the masked photo (the Score-CAM
    authors' code), H_k upsampled with align_corners=False and scaled to [0, 1]. Both peers
    instead softmax the LOGIT differences over the channels (weights summing to 1), and
    pytorch-grad-cam upsamples with align_corners=True. (On a random network every class has a
    probability near 1/1000 and every weight is near equal, so the MAPS nearly coincide; the
    weights show the difference.)"""
    import torch.nn.functional as F

    x, cls, path = _photos(127, 1), 3, "features.11"
    ref = LayerRef(path, None, alexnet.get_submodule(path))
    result = ClassExplainer(alexnet, ref, ["scorecam"], [Target(index=cls)], cam_batch=100).explain(x).per_image[0][0]
    with torch.no_grad():
        activations = alexnet.features[:12](x)
        for channel in (0, 5, 100, 255):  # the authors' loop, one channel at a time
            up = F.interpolate(activations[:, channel:channel + 1], size=x.shape[2:], mode="bilinear",
                               align_corners=False)
            if up.max() == up.min():
                expected = 0.0
            else:
                mask = (up - up.min()) / (up.max() - up.min())
                expected = torch.softmax(alexnet(x * mask), dim=1)[0, cls].item()
            assert result.weights[channel].item() == pytest.approx(expected, rel=1e-4, abs=1e-7)
    assert float(result.weights.sum()) != pytest.approx(1.0, abs=1e-3)
    peer = ScoreCAM(alexnet, [ref.module])
    try:
        peer.batch_size = 128
        peer.activations_and_grads(x)
        recorded = peer.activations_and_grads.activations[0].numpy()
        theirs = peer.get_cam_weights(x, ref.module, [ClassifierOutputTarget(cls)], recorded, None)
    finally:
        peer.activations_and_grads.release()
    assert float(theirs.sum()) == pytest.approx(1.0, abs=1e-5)  # a softmax over the channels
    assert not np.allclose(theirs[0] / theirs[0].sum(), result.weights.numpy() / float(result.weights.sum()), atol=1e-6)
