"""The numbers in the pictures: channel PNGs against the seed's ``UpsamplingBilinear2d`` and
``bytescale``, attention statistics against their formulas (computed here, in float64, from
activations computed here), the grid layout, and where the heat maps land on the photo."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
import torchvision
from click.testing import CliRunner
from PIL import Image

import featviz
import tinymodels
from featviz.cli.main import main
from featviz.maps.attention import channel_attention, channel_weights, minmax, spatial_attention, weighted_channel_map
from featviz.output.render import grid_image
from seedscript import photo_tensor, seed_loop

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]

# The synthetic photo of the ``patch_photo`` fixture: 400x300, dark (20), a bright (235) square
# of 40x40 pixels whose top-left corner is at x=250, y=120.
PHOTO_W, PHOTO_H = 400, 300
SQUARE = (250, 120, 290, 160)  # left, top, right, bottom (exclusive)
DIM = 0.35  # how much of the photo shows outside the crop box (render.heat_overlay's default)


def invoke(args: list[object]):
    return CliRunner().invoke(main, [str(a) for a in args])


def independent_model(spec: str) -> torch.nn.Module:
    """What ``--model spec --weights none`` (seed 0) builds, built here without featviz."""
    if spec == "alexnet":
        torch.manual_seed(0)
        return torchvision.models.alexnet(weights=None).eval()
    return tinymodels.tiny_features().eval()


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def bytescale32(maps: np.ndarray) -> np.ndarray:
    """scipy's old ``bytescale`` per map, in float32 like the maps: (v - min) / (max - min) * 255,
    rounded half up; a constant map is 0."""
    low = maps.min(axis=(-2, -1), keepdims=True)
    span = maps.max(axis=(-2, -1), keepdims=True) - low
    with np.errstate(invalid="ignore", divide="ignore"):
        scaled = np.where(span > 0, (maps - low) / span, np.float32(0)).astype(np.float32)
    return np.floor(scaled * np.float32(255) + np.float32(0.5)).astype(np.uint8)


def bilinear_align_corners(maps: np.ndarray, size: int) -> np.ndarray:
    """Bilinear interpolation whose corner samples sit on the corner pixels, in float64:
    output pixel i samples input position i * (n - 1) / (size - 1)."""
    _, height, width = maps.shape

    def axis(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.arange(size) * (n - 1) / (size - 1)
        lo = np.minimum(np.floor(pos).astype(int), n - 1)
        hi = np.minimum(lo + 1, n - 1)
        return lo, hi, pos - lo

    y0, y1, wy = axis(height)
    x0, x1, wx = axis(width)
    m = maps.astype(np.float64)
    top = m[:, y0][:, :, x0] * (1 - wx) + m[:, y0][:, :, x1] * wx
    bottom = m[:, y1][:, :, x0] * (1 - wx) + m[:, y1][:, :, x1] * wx
    return top * (1 - wy)[:, None] + bottom * wy[:, None]


# --- channel PNGs -----------------------------------------------------------------------------

def test_the_seed_upsampler_is_bilinear_with_aligned_corners() -> None:
    """The reference below is the seed's module; check it is what its docs say, by formula."""
    maps = torch.randn(3, 7, 5, generator=torch.Generator().manual_seed(0))
    seed = torch.nn.UpsamplingBilinear2d(size=(32, 32))(maps[None])[0].numpy()
    np.testing.assert_allclose(seed, bilinear_align_corners(maps.numpy(), 32), rtol=0, atol=1e-5)
    assert np.array_equal(seed[:, 0, 0], maps[:, 0, 0].numpy())
    assert np.array_equal(seed[:, -1, -1], maps[:, -1, -1].numpy())


@pytest.mark.parametrize(("model", "layers"), [("tinymodels:tiny_features", [0, 3]), ("alexnet", [0])])
def test_channel_pngs_equal_the_seed_upsampling_and_bytescale(tmp_path: Path, cat_photo: Path, model: str,
                                                             layers: list[int]) -> None:
    spec = ",".join(map(str, layers))
    result = invoke(["show", cat_photo, "--model", model, "--weights", "none", "--layer", spec,
                     "--out", tmp_path, "-q"])
    assert result.exit_code == 0, result.output
    net = independent_model(model)
    x = photo_tensor(cat_photo)
    near_ties = 0
    for k in layers:
        acts = seed_loop(net, x, k)  # (1, C, H, W), computed without featviz
        upsampled = torch.nn.UpsamplingBilinear2d(size=(256, 256))(acts)[0].numpy()
        expected = bytescale32(upsampled)
        folder = tmp_path / "chelsea" / f"features.{k}"
        pngs = sorted((folder / "channels").glob("*.png"))
        assert [p.name for p in pngs] == [f"{c:04d}.png" for c in range(acts.shape[1])]
        for c, png in enumerate(pngs):
            with Image.open(png) as image:
                assert image.mode == "L" and image.size == (256, 256)
            pixels = read_png(png)
            assert np.array_equal(pixels, expected[c]), f"{png}: {np.abs(pixels.astype(int) - expected[c]).max()}"
            assert pixels.min() == 0 and pixels.max() == 255

        # The same formula on the exact (float64) values differs only where the float32 value
        # lies within float32 rounding of a half-way point: then either rounding is right.
        exact = upsampled.astype(np.float64)
        low, high = exact.min(axis=(1, 2), keepdims=True), exact.max(axis=(1, 2), keepdims=True)
        scaled = (exact - low) / (high - low) * 255
        rounded = np.floor(scaled + 0.5)
        differ = rounded != expected
        assert np.abs(rounded - expected).max() <= 1
        distance_to_half = np.abs(scaled - np.floor(scaled) - 0.5)
        assert (distance_to_half[differ] < 1e-4).all()
        near_ties += int(differ.sum())
    assert near_ties < 1e-4 * len(layers) * 256 * 256 * 256  # a handful of pixels, if any


def test_channel_image_and_tiles_from_the_api(cat_photo: Path) -> None:
    result = featviz.visualize(cat_photo, model="tinymodels:tiny_features", layers=[3], weights="none",
                               size=40)[0]
    acts = seed_loop(independent_model("tiny"), photo_tensor(cat_photo), 3)
    expected = bytescale32(torch.nn.UpsamplingBilinear2d(size=(40, 40))(acts)[0].numpy())
    for c in range(result.num_channels):
        image = result.channel_image(c)
        assert image.mode == "L" and image.size == (40, 40)
        if expected[c].max() == 0:  # a channel the ReLU zeroed everywhere
            assert np.asarray(image).max() == 0
        else:
            assert np.array_equal(np.asarray(image), expected[c])



@pytest.mark.parametrize("extra", [{}, {"labels": True}, {"cmap": "viridis"}, {"top_k": 3}, {"channels": "4,1"}])
def test_grid_pixels_are_the_grid_picture(cat_photo: Path, extra: dict) -> None:
    """The exporter writes ``grid_pixels()``; ``grid()`` is what notebooks show: the same pixels."""
    result = featviz.visualize(cat_photo, model="tinymodels:tiny_features", layers=[3], weights="none",
                               size=24, **extra)[0]
    pixels = result.grid_pixels()
    assert np.array_equal(pixels, np.asarray(result.grid()))
    rows = math.ceil(len(result.grid_channels) / math.ceil(math.sqrt(len(result.grid_channels))))
    assert pixels.shape[0] == rows * 26 + 2

CONSTANT_CHANNEL_MODEL = """
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            conv = nn.Conv2d(3, 3, 3, padding=1)
            with torch.no_grad():
                conv.weight[1].zero_()
                conv.bias[1] = 0.7  # channel 1 is 0.7 everywhere
            self.features = nn.Sequential(conv)

        def forward(self, x):
            return self.features(x)

    def build():
        torch.manual_seed(0)
        return Net()
"""


def test_a_constant_channel_is_black(tmp_path: Path, cat_photo: Path, user_module) -> None:
    name = user_module(CONSTANT_CHANNEL_MODEL)
    result = invoke(["show", cat_photo, "--model", f"{name}:build", "--layer", "0", "--size", "32",
                     "--save-raw", "--out", tmp_path, "-q"])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "chelsea" / "features.0"
    acts = np.load(folder / "activations.npy")
    np.testing.assert_allclose(acts[1], 0.7, rtol=0, atol=1e-6)
    assert not read_png(folder / "channels" / "0001.png").any()
    for c in (0, 2):
        tile = read_png(folder / "channels" / f"{c:04d}.png")
        assert tile.min() == 0 and tile.max() == 255
    grid = read_png(folder / "grid.png")  # 2 columns of 32-pixel tiles, padding 2
    assert not grid[2:34, 36:68].any()  # channel 1's tile
    assert np.array_equal(grid[2:34, 2:34], read_png(folder / "channels" / "0000.png"))


# --- attention numbers ------------------------------------------------------------------------

def test_attention_on_a_hand_made_tensor() -> None:
    acts = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]],
                          [[0.0, 0.0], [0.0, 8.0]],
                          [[-1.0, -1.0], [-1.0, -1.0]]]])
    def close(actual: torch.Tensor, expected: list) -> None:
        torch.testing.assert_close(actual, torch.tensor(expected), rtol=1e-6, atol=1e-6)

    close(spatial_attention(acts, "mean"), [[[0.0, 1 / 3], [2 / 3, 11 / 3]]])
    close(spatial_attention(acts, "max"), [[[1.0, 2.0], [3.0, 8.0]]])
    close(spatial_attention(acts, "meanmax"), [[[0.5, 7 / 6], [11 / 6, 35 / 6]]])
    close(channel_attention(acts, "se"), [[2.5, 2.0, -1.0]])
    close(channel_attention(acts, "cbam"), [[6.5, 10.0, -2.0]])
    close(channel_weights(acts, "se"), [[1.0, 3 / 3.5, 0.0]])
    close(channel_weights(acts, "cbam"), [[8.5 / 12, 1.0, 0.0]])
    close(weighted_channel_map(acts, torch.tensor([[1.0, 0.5, 2.0]])), [[[-1.0, 0.0], [1.0, 6.0]]])
    assert minmax(torch.full((1, 3), 4.0), dims=(1,)).tolist() == [[0.0, 0.0, 0.0]]
    # equal statistics (here: one channel, and a batch row of equal channels): every channel counts
    close(channel_weights(acts[:, :1], "se"), [[1.0]])
    equal = torch.stack([acts[0], torch.ones(3, 2, 2)])
    close(channel_weights(equal, "se"), [[1.0, 3 / 3.5, 0.0], [1.0, 1.0, 1.0]])
    assert acts[0, 0, 0, 0] == 1.0  # nothing in place


ONE_CHANNEL_MODEL = """
    import torch
    from torch import nn

    def build():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 1, 3, padding=1))
"""


def test_a_one_channel_layer_has_a_channel_map(tmp_path: Path, patch_photo: Path, user_module) -> None:
    """One channel: w = 1, so the channel-weighted map is that channel, not black."""
    name = user_module(ONE_CHANNEL_MODEL)
    [result] = featviz.visualize(patch_photo, model=f"{name}:build", layers=[0], weights="none", size=8)
    assert result.channel_weights.tolist() == [1.0]
    torch.testing.assert_close(result.channel_map, minmax(result.activations[0][None], dims=(1, 2))[0])
    assert result.channel_map.max() == 1.0


def _formulas(acts: np.ndarray, spatial: str, channel: str) -> dict[str, np.ndarray]:
    """Every attention number from (C, H, W) activations, in float64."""
    a = acts.astype(np.float64)
    mean_c, max_c = a.mean(axis=0), a.max(axis=0)
    spatial_map = {"mean": mean_c, "max": max_c, "meanmax": (mean_c + max_c) / 2}[spatial]
    squeeze = a.mean(axis=(1, 2))
    statistic = squeeze if channel == "se" else squeeze + a.max(axis=(1, 2))
    w = (statistic - statistic.min()) / (statistic.max() - statistic.min())
    channel_map = (w[:, None, None] * a).sum(axis=0)
    return {"spatial": spatial_map, "statistic": statistic, "w": w, "channel_map": channel_map,
            "mean": squeeze, "max": a.max(axis=(1, 2))}


def _descending(w: np.ndarray) -> list[int]:
    return [int(c) for c in np.argsort(-w, kind="stable")]


@pytest.mark.parametrize(("spatial", "channel"), [("mean", "se"), ("max", "cbam"), ("meanmax", "se"), ("mean", "cbam")])
def test_summary_and_raw_files_equal_the_formulas(tmp_path: Path, cat_photo: Path, spatial: str, channel: str) -> None:
    result = invoke(["show", cat_photo, "--model", "tinymodels:tiny_features", "--layer", "0",
                     "--spatial", spatial, "--channel", channel, "--save-raw", "--size", "16",
                     "--out", tmp_path, "-q"])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "chelsea" / "features.0"
    acts = seed_loop(independent_model("tiny"), photo_tensor(cat_photo), 0)[0].numpy()
    expected = _formulas(acts, spatial, channel)

    raw = np.load(folder / "activations.npy")
    assert raw.dtype == np.float32 and raw.shape == acts.shape == (8, 112, 112)
    np.testing.assert_allclose(raw, acts, rtol=0, atol=1e-6)
    with np.load(folder / "attention.npz") as attention:
        assert sorted(attention.files) == ["channel", "spatial"]
        assert attention["spatial"].shape == (112, 112) and attention["channel"].shape == (8,)
        np.testing.assert_allclose(attention["spatial"], expected["spatial"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(attention["channel"], expected["statistic"], rtol=1e-5, atol=1e-6)

    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    assert summary["spatial_attention"] == spatial and summary["channel_attention"] == channel
    assert summary["activation_shape"] == [8, 112, 112]
    assert summary["input_size"] == [224, 224]
    assert summary["image_size"] == [451, 300]
    layer = summary["layer"]
    assert (layer["path"], layer["index"], layer["type"]) == ("features.0", 0, "Conv2d")
    np.testing.assert_allclose(summary["channel_mean"], expected["mean"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(summary["channel_max"], expected["max"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(summary["channel_weights"], expected["w"], rtol=0, atol=1e-5)
    assert min(summary["channel_weights"]) == 0.0 and max(summary["channel_weights"]) == 1.0
    gaps = np.diff(np.sort(expected["w"]))
    assert gaps.min() > 1e-4  # so the ranking below is not decided by rounding
    assert summary["top_channels"] == _descending(expected["w"])
    assert summary["drawn_channels"] == list(range(8))
    assert set(summary["files"]) >= {"grid.png", "spatial_attention.png", "channel_attention.png",
                                     "activations.npy", "attention.npz",
                                     *(f"channels/{c:04d}.png" for c in range(8))}
    assert all((folder / name).is_file() for name in summary["files"])
    assert acts.min() < 0  # the conv output, before the in-place ReLU


@pytest.mark.parametrize(("spatial", "channel"), [("mean", "se"), ("meanmax", "cbam")])
def test_api_maps_equal_the_formulas(cat_photo: Path, spatial: str, channel: str) -> None:
    result = featviz.visualize(cat_photo, model="tinymodels:tiny_features", layers=[3], weights="none",
                               spatial=spatial, channel=channel)[0]
    acts = seed_loop(independent_model("tiny"), photo_tensor(cat_photo), 3)[0].numpy()
    expected = _formulas(acts, spatial, channel)
    np.testing.assert_allclose(result.spatial_raw.numpy(), expected["spatial"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.channel_raw.numpy(), expected["statistic"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.channel_weights.numpy(), expected["w"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(result.channel_map_raw.numpy(), expected["channel_map"], rtol=1e-5, atol=1e-5)

    def unit(m: np.ndarray) -> np.ndarray:
        return (m - m.min()) / (m.max() - m.min())

    np.testing.assert_allclose(result.spatial.numpy(), unit(expected["spatial"]), rtol=0, atol=1e-5)
    np.testing.assert_allclose(result.channel_map.numpy(), unit(expected["channel_map"]), rtol=0, atol=1e-5)
    assert result.ranking[:3] == _descending(expected["w"])[:3]


# --- grids ------------------------------------------------------------------------------------

def test_grid_layout_is_make_grid_with_ceil_sqrt_columns() -> None:
    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 256, size=(5, 6, 6), dtype=np.uint8)
    grid = grid_image(tiles)
    assert grid.mode == "L"
    columns, rows, size, pad = 3, 2, 6, 2  # ceil(sqrt(5)) = 3 columns
    assert grid.size == (columns * (size + pad) + pad, rows * (size + pad) + pad)
    expected = np.full((rows * (size + pad) + pad, columns * (size + pad) + pad), 255, dtype=np.uint8)
    for i, tile in enumerate(tiles):
        top, left = pad + (i // columns) * (size + pad), pad + (i % columns) * (size + pad)
        expected[top:top + size, left:left + size] = tile
    assert np.array_equal(np.asarray(grid), expected)


def test_colour_grid_is_the_matplotlib_colormap_of_the_tiles() -> None:
    ramp = np.arange(256, dtype=np.uint8).reshape(16, 16)
    tiles = np.stack([ramp, ramp[::-1]])
    grid = grid_image(tiles, cmap="viridis")
    assert grid.mode == "RGB" and grid.size == (2 * 18 + 2, 20)
    for i, tile in enumerate(tiles):
        colours = np.round(matplotlib.colormaps["viridis"](tile / 255.0)[..., :3] * 255).astype(np.uint8)
        assert np.array_equal(np.asarray(grid)[2:18, 2 + 18 * i:18 + 18 * i], colours)


def test_labels_are_drawn_in_each_tile_corner() -> None:
    tiles = np.full((4, 64, 64), 255, dtype=np.uint8)  # white tiles: the black label box shows
    plain = np.asarray(grid_image(tiles))
    labelled = np.asarray(grid_image(tiles, labels=["0", "1", "2", "3"]))
    assert not np.array_equal(plain, labelled)
    for i in range(4):
        top, left = 2 + (i // 2) * 66, 2 + (i % 2) * 66
        corner = labelled[top:top + 24, left:left + 24]
        assert (corner == 0).any()
        assert np.array_equal(labelled[top + 40:top + 64, left:left + 64], plain[top + 40:top + 64, left:left + 64])


# --- where the heat maps land -----------------------------------------------------------------

BRIGHTNESS_MODEL = """
    import torch
    from torch import nn

    class Brightness(nn.Module):
        \"\"\"Two channels that respond to brightness (positive 1x1 weights, averaging RGB), then a
        4x4 average pool so that layer 1 is a coarser map than the input.\"\"\"

        def __init__(self):
            super().__init__()
            conv = nn.Conv2d(3, 2, kernel_size=1)
            with torch.no_grad():
                conv.weight.zero_()
                conv.weight[0] += 1 / 3
                conv.weight[1] += 1 / 6
                conv.bias.copy_(torch.tensor([10.0, 0.0]))  # channel 0 has the larger mean: w = (1, 0)
            self.features = nn.Sequential(conv, nn.AvgPool2d(4))

        def forward(self, x):
            return self.features(x)

    def build():
        return Brightness()
"""


def _box_pixels(box: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Masks of the photo pixels wholly inside and wholly outside the crop box."""
    left, top, right, bottom = box
    ys, xs = np.mgrid[0:PHOTO_H, 0:PHOTO_W]
    inside = ((xs >= math.ceil(left)) & (xs + 1 <= math.floor(right))
              & (ys >= math.ceil(top)) & (ys + 1 <= math.floor(bottom)))
    outside = ((xs + 1 <= math.floor(left)) | (xs >= math.ceil(right))
               | (ys + 1 <= math.floor(top)) | (ys >= math.ceil(bottom)))
    return inside, outside


@pytest.mark.parametrize(("options", "box"), [
    # 400x300 -> 341x256, centre crop 224 at (58, 16): the photo rectangle 58 * 400/341 ... (see test_models)
    (["--resize", "256", "--crop", "224"], [58 * 400 / 341, 16 * 300 / 256, 282 * 400 / 341, 240 * 300 / 256]),
    (["--resize", "256", "--no-crop"], [0.0, 0.0, 400.0, 300.0]),
    # 400x300 -> 200x150, crop 120 at (40, 15), scale 1/2
    (["--resize", "150", "--crop", "120"], [40 * 2, 15 * 2, 160 * 2, 135 * 2]),
])
@pytest.mark.parametrize("layer", [0, 1])
def test_heat_lands_on_the_bright_square_in_photo_coordinates(tmp_path: Path, patch_photo: Path, user_module,
                                                              options: list[str], box: list[float], layer: int) -> None:
    name = user_module(BRIGHTNESS_MODEL)
    result = invoke(["show", patch_photo, "--model", f"{name}:build", "--layer", layer, *options,
                     "--heat-cmap", "gray", "--alpha", "0.5", "--save-raw", "--size", "8", "--out", tmp_path, "-q"])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "patch" / f"features.{layer}"
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    assert summary["crop_box"] == pytest.approx(box, abs=1e-3)
    photo = read_png(patch_photo).astype(np.float64)
    inside, outside = _box_pixels(box)
    for picture in ("spatial_attention.png", "channel_attention.png"):
        overlay = read_png(folder / picture)
        assert overlay.shape == (PHOTO_H, PHOTO_W, 3)  # the original photo's own size
        # outside the box: the photo, dimmed
        assert np.array_equal(overlay[outside], np.floor(photo[outside] * DIM + 0.5).astype(np.uint8))
        # inside: half photo, half grey heat; take the photo out to read the heat back
        heat = (overlay[..., 0].astype(np.float64) - 0.5 * photo[..., 0]) / 0.5
        assert np.all(heat[inside] >= -2) and np.all(heat[inside] <= 257)
        hot = inside & (heat > 127.5)
        ys, xs = np.nonzero(hot)
        left, top, right, bottom = SQUARE
        assert abs(xs.min() - left) <= 2 and abs(xs.max() + 1 - right) <= 2, (picture, xs.min(), xs.max())
        assert abs(ys.min() - top) <= 2 and abs(ys.max() + 1 - bottom) <= 2, (picture, ys.min(), ys.max())
        weight = np.where(inside, np.clip(heat, 0, None), 0)
        centre_x = (weight * np.arange(PHOTO_W)[None, :]).sum() / weight.sum()
        centre_y = (weight * np.arange(PHOTO_H)[:, None]).sum() / weight.sum()
        assert centre_x == pytest.approx((left + right - 1) / 2, abs=1.0)
        assert centre_y == pytest.approx((top + bottom - 1) / 2, abs=1.0)
        assert heat[inside & ~hot].max() < 127.5  # nothing else is hot


def test_a_square_the_crop_leaves_out_is_only_dimmed(tmp_path: Path, patch_photo: Path, user_module) -> None:
    """--resize 300 keeps 400x300; --crop 100 keeps x 150..250, y 100..200: the square (x from 250)
    is just outside, so the crop is uniformly dark, its heat flat (black), the square dimmed."""
    name = user_module(BRIGHTNESS_MODEL)
    result = invoke(["show", patch_photo, "--model", f"{name}:build", "--layer", "0", "--resize", "300",
                     "--crop", "100", "--heat-cmap", "gray", "--size", "8", "--out", tmp_path, "-q"])
    assert result.exit_code == 0, result.output
    overlay = read_png(tmp_path / "patch" / "features.0" / "spatial_attention.png")
    assert np.all(overlay[100:200, 150:250] == 10)  # 20 * 0.5 + black * 0.5
    assert np.all(overlay[:100] == 7) and np.all(overlay[:, :150] == 7)  # 20 * 0.35
    assert np.all(overlay[120:160, 250:290] == 82)  # 235 * 0.35 = 82.25


def test_api_spatial_map_and_box_point_at_the_square(patch_photo: Path, user_module) -> None:
    name = user_module(BRIGHTNESS_MODEL)
    result = featviz.visualize(patch_photo, model=f"{name}:build", layers=[0], weights="none",
                               resize=256, crop=224)[0]
    assert result.spatial.shape == (224, 224)
    assert result.spatial_overlay().size == result.channel_overlay().size == (PHOTO_W, PHOTO_H)
    box = result.box
    cell_w, cell_h = (box.right - box.left) / 224, (box.bottom - box.top) / 224
    hot = (result.spatial > 0.5).nonzero()
    xs = box.left + (hot[:, 1].double() + 0.5) * cell_w  # centres of the hot cells, in photo pixels
    ys = box.top + (hot[:, 0].double() + 0.5) * cell_h
    left, top, right, bottom = SQUARE
    assert left - 1 <= xs.min() and xs.max() <= right + 1
    assert top - 1 <= ys.min() and ys.max() <= bottom + 1
    assert xs.mean().item() == pytest.approx((left + right) / 2, abs=1.0)
    assert ys.mean().item() == pytest.approx((top + bottom) / 2, abs=1.0)


@pytest.mark.parametrize("alpha", [0.5, 0.3])
def test_overlay_blend_equals_the_formula(alpha: float) -> None:
    """Every pixel of an overlay against round(photo * (1 - alpha) + jet(heat) * alpha) inside the
    box and round(photo * dim) outside (in float32, as documented: 90 * 0.35 rounds to 32), with a
    box that leaves the photo on the left."""
    from featviz.models.build import CropBox
    from featviz.output.render import _blend, _blend_tables, colormap_lut, heat_overlay

    rng = np.random.default_rng(4)
    photo = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    heat = torch.rand(7, 9, generator=torch.Generator().manual_seed(4))
    box = CropBox(-10.0, 5.0, 40.0, 30.0)
    overlay = np.asarray(heat_overlay(Image.fromarray(photo), heat, box, cmap="jet", alpha=alpha))
    stretched = torch.nn.functional.interpolate(heat[None, None], size=(25, 50), mode="bilinear",
                                                align_corners=False)[0, 0, :, 10:]
    colour = colormap_lut("jet")[(stretched.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()].astype(np.float32)
    f32 = np.float32
    expected = np.floor(photo.astype(f32) * f32(DIM) + f32(0.5))
    expected[5:30, 0:40] = np.floor(photo[5:30, 0:40].astype(f32) * f32(1 - alpha) + colour * f32(alpha) + f32(0.5))
    assert np.abs(overlay.astype(np.float64) - expected).max() <= (0 if alpha == 0.5 else 1)
    # the integer shortcut for alpha 0.5 is the lookup table, for every pair of bytes
    a, c = np.meshgrid(np.arange(256, dtype=np.uint8), np.arange(256, dtype=np.uint8))
    inside = _blend_tables(0.5, DIM)[1]
    assert np.array_equal(_blend(a, c, 0.5, inside), inside[a, c])
