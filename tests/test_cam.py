"""Class attention (--cam): targets, the engine's contracts, the CLI, the API and bad input.

The peers' numbers are in test_cam_peers.py; here tiny seeded models keep everything fast, and
the maps are checked against independent formulas written out in the tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import featviz
from featviz.capture.hooks import GradientCapture
from featviz.capture.layers import LayerRef
from featviz.cli.main import main
from featviz.errors import UsageError
from featviz.maps.cam import cam_at_input
from featviz.maps.explain import ClassExplainer
from featviz.maps.targets import Target, class_indices, parse_targets
from tinymodels import Broken, tiny_features, tiny_residual

CATEGORIES = ["tabby", "tiger cat", "Egyptian cat", "tiger", "lion"]


# --- targets ----------------------------------------------------------------------------------

def test_targets_by_index_name_and_rank() -> None:
    assert parse_targets(["2", "TIGER", "top2"], CATEGORIES, 5) == [Target(index=2), Target(index=3),
                                                                     Target(rank=1), Target(rank=2)]
    assert parse_targets(["egyptian CAT,2"], CATEGORIES) == [Target(index=2)]  # duplicates go
    assert parse_targets([], None) == [Target(rank=1)]  # default: top


@pytest.mark.parametrize(("spec", "categories", "message", "hint"), [
    ("cat", CATEGORIES, "ambiguous", "full class name"),  # tiger cat, Egyptian cat
    ("tigr", CATEGORIES, "not a class", "did you mean tiger (3)"),
    ("tabby", None, "no class names", "indices"),
    ("5", CATEGORIES, "out of range", None),
    ("top6", CATEGORIES, "only 5 classes", None),
    ("top0", CATEGORIES, "N >= 1", None),
])
def test_bad_targets_are_usage_errors(spec, categories, message, hint) -> None:
    with pytest.raises(UsageError) as caught:
        parse_targets([spec], categories, num_classes=5)
    assert message in caught.value.message
    if hint:
        assert hint in caught.value.hint


def test_class_indices_follow_the_logits() -> None:
    logits = torch.tensor([[0.0, 3.0, 1.0], [5.0, -1.0, 2.0]])
    chosen = class_indices([Target(rank=1), Target(index=1), Target(rank=2)], logits)
    assert chosen.tolist() == [[1, 1, 2], [0, 1, 2]]


# --- the engine -------------------------------------------------------------------------------

def _example(count: int = 2, side: int = 32) -> torch.Tensor:
    return torch.randn(count, 3, side, side, generator=torch.Generator().manual_seed(3))


def test_gradcam_matches_a_finite_difference_free_formula() -> None:
    """TinyFeatures ends in ReLU -> global average pooling -> Linear(12, 5): dY_c/dA_k(i,j) at
    features.4 is W_ck / (HW), so Grad-CAM's weights are W_c / (HW) and its map is
    ReLU(sum_k W_ck A_k) / (HW), written out here from the module's own weights."""
    model = tiny_features()
    x = _example()
    ref = LayerRef("features.4", 4, model.features[4])
    cams = ClassExplainer(model, ref, ["gradcam"], [Target(index=1)]).explain(x).per_image
    with torch.no_grad():
        acts = model.features(x)
    area = acts.shape[2] * acts.shape[3]
    weight = model.classifier.weight[1]
    expected = torch.relu(torch.einsum("nchw,c->nhw", acts, weight)) / area
    for n in range(2):
        torch.testing.assert_close(cams[n][0].weights, weight.detach() / area)
        torch.testing.assert_close(cams[n][0].map, expected[n])


def test_a_batch_equals_its_photos_one_by_one() -> None:
    """One forward and one backward per target rank serve the whole batch."""
    model = tiny_residual()
    ref = LayerRef("block", None, model.block)
    explainer = ClassExplainer(model, ref, ["gradcam", "gradcam++", "layercam", "ablationcam", "scorecam"],
                               [Target(rank=1), Target(index=2)], cam_batch=4)
    x = _example(3)
    together = explainer.explain(x).per_image
    for n in range(3):
        alone = explainer.explain(x[n:n + 1]).per_image[0]
        assert [c.name for c in alone] == [c.name for c in together[n]]
        for a, b in zip(alone, together[n], strict=True):
            torch.testing.assert_close(a.map, b.map, rtol=1e-4, atol=1e-6)


def test_ablation_falls_back_to_full_forwards_where_the_batch_cannot_broadcast(user_module) -> None:
    """A model that concatenates the layer's output with an earlier tensor cannot take K
    ablated copies after a batch-1 prefix: featviz runs K full copies instead, same weights."""
    name = user_module("""
        import torch
        from torch import nn

        class Concat(nn.Module):
            def __init__(self):
                super().__init__()
                self.stem = nn.Conv2d(3, 4, 3, padding=1)
                self.layer = nn.Conv2d(4, 4, 3, padding=1)
                self.fc = nn.Linear(8, 3)

            def forward(self, x):
                s = torch.relu(self.stem(x))
                y = torch.cat([s, torch.relu(self.layer(s))], dim=1)
                return self.fc(y.mean(dim=(2, 3)))

        def build():
            torch.manual_seed(0)
            return Concat()
    """)
    import importlib

    model = importlib.import_module(name).build().eval()
    ref = LayerRef("layer", None, model.layer)
    explainer = ClassExplainer(model, ref, ["ablationcam"], [Target(index=0)], cam_batch=4)
    x = _example(1)
    result = explainer.explain(x).per_image[0][0]
    assert explainer.ablation_from_layer is False
    logit = model(x)[0, 0].item()
    for channel in range(4):
        handle = model.layer.register_forward_hook(lambda m, i, o, c=channel: o.index_fill(1, torch.tensor([c]), 0.0))
        try:
            with torch.no_grad():
                ablated = model(x)[0, 0].item()
        finally:
            handle.remove()
        assert result.weights[channel].item() == pytest.approx((logit - ablated) / logit, rel=1e-4, abs=1e-6)


def test_a_class_named_twice_gets_one_map() -> None:
    """``--target top,K`` where K is the top class: one map, with the rank of its first mention."""
    model = tiny_features()
    x = _example(1)
    top = int(model(x).argmax())
    ref = LayerRef("features.4", 4, model.features[4])
    cams = ClassExplainer(model, ref, ["gradcam"], [Target(rank=1), Target(index=top)]).explain(x).per_image[0]
    assert [(c.target, c.rank) for c in cams] == [(top, 1)]


def test_the_model_is_left_as_found() -> None:
    model = tiny_features().train()
    model.features[0].weight.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    ref = LayerRef("features.3", 3, model.features[3])
    explainer = ClassExplainer(model, ref, ["gradcam", "scorecam", "ablationcam", "eigencam"], [Target(rank=1)])
    explainer.explain(_example())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(m.training for m in model.modules())
    assert all(not m._forward_hooks for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


def test_the_model_is_left_as_found_when_the_pass_raises() -> None:
    model = Broken().train()
    flags = [p.requires_grad for p in model.parameters()]
    with pytest.raises(RuntimeError):
        with GradientCapture(model, LayerRef("features.0", 0, model.features[0])) as recorder:
            recorder.run(_example(1))
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(m.training for m in model.modules())
    assert all(not m._forward_hooks for m in model.modules())


def test_an_in_place_op_after_the_layer_changes_neither_activations_nor_gradients() -> None:
    """features.0 is followed by ReLU(inplace=True): the captured activations keep their
    negative values, and the gradient at features.0 is zero exactly where they are negative."""
    model = tiny_features()
    x = _example(1)
    with GradientCapture(model, LayerRef("features.0", 0, model.features[0])) as recorder:
        logits = recorder.run(x)
        (grad,) = torch.autograd.grad(logits[0, 0], recorder.leaf)
    with torch.no_grad():
        conv = model.features[0](x)
    torch.testing.assert_close(recorder.activations, conv)
    assert (recorder.activations < 0).any()
    assert torch.all(grad[conv < 0] == 0)


def test_cam_at_input_is_the_overlays_upsampling_in_unit_range() -> None:
    maps = torch.tensor([[[0.0, 1.0], [2.0, 4.0]], [[3.0, 3.0], [3.0, 3.0]]])
    up = cam_at_input(maps, (4, 6))
    assert up.shape == (2, 4, 6)
    assert float(up[0].min()) == 0.0 and float(up[0].max()) == 1.0
    assert torch.all(up[1] == 0)
    # bilinear, align_corners=False: the corner pixels take the corner cells' values
    assert float(up[0, 0, 0]) == 0.0 and float(up[0, -1, -1]) == 1.0


# --- CLI and API ------------------------------------------------------------------------------

@pytest.fixture
def photos(tmp_path: Path) -> list[Path]:
    paths = []
    (tmp_path / "in").mkdir()
    for i, value in enumerate((30, 200)):
        pixels = np.full((40, 48, 3), value, dtype=np.uint8)
        pixels[10:20, 12:30] = 255 - value
        path = tmp_path / "in" / f"photo{i}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def _cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_export_writes_overlays_summary_manifest_and_raw_maps(tests_on_path, photos, tmp_path) -> None:
    out = tmp_path / "out"
    code, _, err = _cli("export", str(photos[0].parent), "--model", "tinymodels:tiny_features", "--layer", "4",
                        "--cam", "cam,GradCAM,eigencam,scorecam", "--target", "top2,3", "--resize", "40",
                        "--crop", "32", "--save-raw", "--out", str(out), "-q")
    assert code == 0, err
    folder = out / "photo0" / "features.4"
    summary = json.loads((folder / "summary.json").read_text())
    cams = summary["cams"]
    assert [c["method"] for c in cams] == ["cam"] * 3 + ["gradcam"] * 3 + ["eigencam"] + ["scorecam"] * 3
    top1, top2 = cams[0]["target"], cams[1]["target"]
    assert [c["rank"] for c in cams[:3]] == [1, 2, None] and cams[2]["target"] == 3
    assert cams[6]["target"] is None and cams[6]["weights"] is None
    model = tiny_features()
    assert cams[0]["weights"] == pytest.approx(model.classifier.weight[top1].tolist(), rel=1e-6)
    assert cams[0]["label"] == f"class {top1}"
    with np.load(folder / "cam.npz") as npz:
        raw = {key: npz[key] for key in npz.files}
    assert sorted(raw) == sorted([f"cam:{top1}", f"cam:{top2}", "cam:3", f"gradcam:{top1}",
                                        f"gradcam:{top2}", "gradcam:3", "eigencam:none", f"scorecam:{top1}",
                                        f"scorecam:{top2}", "scorecam:3"])
    acts = np.load(folder / "activations.npy")
    weights = np.asarray(cams[0]["weights"])
    np.testing.assert_allclose(raw[f"cam:{top1}"], np.maximum(np.einsum("chw,c->hw", acts, weights), 0),
                               rtol=1e-5, atol=1e-6)
    for record in cams:
        with Image.open(folder / record["file"]) as png:
            assert png.size == (48, 40) and record["file"] in summary["files"]
    lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert all(len(line["cams"]) == 10 and "weights" not in line["cams"][0] for line in lines)
    page = (out / "index.html").read_text()
    assert f"top1 class {top1} [{top1}]" in page and "cam/gradcam-3.png" in page


def test_cam_overlay_is_the_spatial_overlays_drawing(tests_on_path, photos, tmp_path) -> None:
    """Given the spatial attention's map, cam_overlay draws exactly what spatial_overlay draws:
    the same upsampling from the layer's H x W, crop box and blend."""
    result = featviz.visualize(photos[0], model="tinymodels:tiny_features", layers=[4], weights="none",
                               resize=40, crop=32, cam="gradcam", target=0)[0]
    cam = result.cams[0]
    cam.map = result.spatial_raw.clone()
    assert np.array_equal(np.asarray(result.cam_overlay(cam)), np.asarray(result.spatial_overlay()))


def test_api_takes_lists_and_strings(tests_on_path, photos) -> None:
    results = featviz.visualize(photos, model="tinymodels:tiny_residual", layers=["block"], weights="none",
                                resize=40, crop=32, cam=["gradcam", "layercam"], target=["top", "1"])
    assert [c.name.split("-")[0] for c in results[0].cams] == ["gradcam", "gradcam", "layercam", "layercam"]
    assert all(c.map.shape == (32, 32) for r in results for c in r.cams)


def test_sweep_draws_the_class_map(tests_on_path, photos, tmp_path) -> None:
    code, out, err = _cli("sweep", str(photos[0]), "--model", "tinymodels:tiny_features", "--layer", "1,4",
                          "--cam", "gradcam", "--resize", "40", "--crop", "32", "--out", str(tmp_path / "s"))
    assert code == 0, err
    assert (tmp_path / "s" / "photo0" / "sweep.png").exists()


def test_non_finite_gradients_fail_that_photo_only(user_module, photos, tmp_path) -> None:
    name = user_module("""
        import torch
        from torch import nn

        class Overflow(nn.Module):
            \"\"\"Logits become infinite for bright photos.\"\"\"
            def __init__(self):
                super().__init__()
                self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
                self.fc = nn.Linear(4, 2)

            def forward(self, x):
                a = self.features(x).mean(dim=(2, 3))
                scale = torch.where(x.mean(dim=(1, 2, 3)) > 0.5, torch.tensor(float("inf")), torch.tensor(1.0))
                return self.fc(a) * scale[:, None]

        def build():
            torch.manual_seed(0)
            return Overflow()
    """)
    out = tmp_path / "out"
    code, _, err = _cli("export", str(photos[0].parent), "--model", f"{name}:build", "--layer", "1", "--cam", "gradcam",
                        "--resize", "40", "--crop", "32", "--batch-size", "2", "--out", str(out), "-q")
    assert code == 1
    assert "photo1.png" in err and "not finite" in err and "photo0" not in err
    assert list((out / "photo0" / "features.1" / "cam").glob("gradcam-*.png"))
    assert not (out / "photo1").exists() or not list((out / "photo1").rglob("*.png"))


@pytest.mark.parametrize(("args", "message"), [
    (("--model", "tinymodels:tiny_features", "--layer", "3", "--cam", "cam"), "global pooling + one linear layer"),
    (("--model", "tinymodels:tiny_features", "--layer", "4", "--cam", "gradcam", "--target", "7"), "out of range"),
    (("--model", "tinymodels:tiny_features", "--layer", "4", "--cam", "gradcam", "--target", "tabby"),
     "no class names"),
    (("--model", "tinymodels:tiny_features", "--layer", "4", "--cam", "gradcamm"), "unknown CAM method"),
    (("--model", "alexnet", "--weights", "none", "--layer", "11", "--cam", "gradcam", "--target", "tabbby"),
     "not a class"),
    (("--model", "alexnet", "--weights", "none", "--layer", "11", "--cam", "cam"), "global pooling + one linear layer"),
])
def test_usage_errors_come_before_any_image(tests_on_path, tmp_path, args, message) -> None:
    missing = tmp_path / "never-read.png"  # does not exist: a usage error must come first
    code, _, err = _cli("show", str(missing), *args, "--out", str(tmp_path / "o"))
    assert code == 2, err
    assert message in err and "Hint:" in err
    assert "Traceback" not in err


def test_eigencam_on_one_channel_is_refused(user_module, tmp_path) -> None:
    name = user_module("""
        import torch
        from torch import nn

        def build():
            torch.manual_seed(0)
            return nn.Sequential(nn.Conv2d(3, 1, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1, 2))
    """)
    code, _, err = _cli("show", str(tmp_path / "x.png"), "--model", f"{name}:build", "--layer", "0",
                        "--cam", "eigencam", "--out", str(tmp_path / "o"))
    assert code == 2 and "one channel" in err


def test_torchscript_is_refused(tmp_path) -> None:
    scripted = torch.jit.script(tiny_features())
    path = tmp_path / "tiny.pt"
    torch.jit.save(scripted, str(path))
    code, _, err = _cli("show", str(tmp_path / "x.png"), "--model", str(path), "--layer", "4",
                        "--cam", "gradcam", "--out", str(tmp_path / "o"))
    assert code == 2 and "TorchScript" in err


def test_the_gradient_pass_serves_the_other_outputs(tests_on_path, photos) -> None:
    """With --cam the plain capture pass is skipped: the gradient pass's copy of each layer's
    output and its logits give the same activations, summaries and predictions."""
    plain = featviz.visualize(photos, model="tinymodels:tiny_features", layers=[1, 4], weights="none",
                              resize=40, crop=32, predict=True)
    with_cam = featviz.visualize(photos, model="tinymodels:tiny_features", layers=[1, 4], weights="none",
                                 resize=40, crop=32, predict=True, cam="gradcam")
    for a, b in zip(plain, with_cam, strict=True):
        assert torch.equal(a.activations, b.activations)
        summary, expected = b.summary(), a.summary()
        # the recorded options differ by --cam itself (what --skip-existing compares); all else is equal
        assert summary["options"]["drawing"]["cam"] == ["gradcam"] and expected["options"]["drawing"]["cam"] == []
        summary.pop("options"), expected.pop("options")
        assert summary.pop("cams") and summary == expected
