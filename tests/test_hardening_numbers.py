"""Issue 13, numbers: NaN and infinite activations, CBAM on one channel, channels whose range
is tiny, and PNG bytes that do not depend on threads or the heap.

Each test failed on main before the fix it guards.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from featviz.cli.main import main
from featviz.maps import attention
from featviz.maps.attention import cbam_refine, minmax, weights_from_statistic
from featviz.output.export import MANIFEST, SUMMARY
from featviz.output.render import channel_tiles, to_uint8
from seedscript import photo_tensor

pytestmark = pytest.mark.filterwarnings("error")

NONFINITE_MODEL = """
    import torch
    from torch import nn

    class Plant(nn.Module):
        '''Puts a NaN in channel 0, +inf in channel 1 and -inf in channel 2 (one pixel each).'''

        def forward(self, x):
            x = x.clone()
            x[:, 0, 0, 0] = float("nan")
            x[:, 1, 1, 1] = float("inf")
            x[:, 2, 2, 2] = float("-inf")
            return x

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 4, 3, stride=8, padding=1), Plant())

        def forward(self, x):
            return self.features(x).mean(dim=(2, 3))

    def build():
        torch.manual_seed(0)
        return Net()
"""


def refuse_constant(value: str) -> None:
    raise ValueError(f"bare {value} is not JSON")


# --------------------------------------------------------------------------------------------
# 8. NaN and infinite activations
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channel", ["se", "cbam"])
def test_nonfinite_activations(channel: str, tmp_path: Path, cat_photo: Path, user_module) -> None:
    name = user_module(NONFINITE_MODEL)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["export", str(cat_photo), "--model", f"{name}:build", "--weights", "none",
                                       "--layer", "1", "--channel", channel, "--out", str(out), "--size", "16",
                                       "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    [warning] = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert "3 NaN or infinite activations" in warning
    [folder] = [p.parent for p in out.rglob(SUMMARY)]
    summary = json.loads((folder / SUMMARY).read_text(), parse_constant=refuse_constant)
    [record] = [json.loads(line, parse_constant=refuse_constant) for line in (out / MANIFEST).read_text().splitlines()]
    assert summary["nonfinite"] == 3 and record["nonfinite"] == 3

    # independently: the statistics over the finite values only (numpy, float64)
    import importlib

    net = importlib.import_module(name).build().eval()
    with torch.no_grad():
        acts = net.features(photo_tensor(cat_photo))[0].double().numpy()
    finite = np.isfinite(acts)
    assert (~finite).sum() == 3
    masked = np.ma.masked_array(acts, ~finite)
    mean, peak = masked.mean(axis=(1, 2)).filled(), masked.max(axis=(1, 2)).filled()
    statistic = mean if channel == "se" else mean + peak
    w = (statistic - statistic.min()) / (statistic.max() - statistic.min())
    assert summary["channel_weights"] == pytest.approx(w.tolist(), abs=1e-5)
    assert summary["channel_mean"] == pytest.approx(mean.tolist(), rel=1e-5)
    for c in range(4):  # every tile is drawn from its finite values: it spans 0..255
        with Image.open(folder / "channels" / f"{c:04d}.png") as tile:
            assert tile.getextrema() == (0, 255)


@pytest.mark.parametrize("labels", [False, True])
def test_nonfinite_activations_are_magenta_in_a_colour_grid(labels: bool, cat_photo: Path, user_module) -> None:
    import featviz
    from featviz.output.render import NONFINITE_COLOUR, grid_pixels

    name = user_module(NONFINITE_MODEL)
    [result] = featviz.visualize(cat_photo, model=f"{name}:build", layers=[1], weights="none", size=20,
                                 cmap="viridis", labels=labels)
    pixels = np.asarray(result.grid()) if labels else result.grid_pixels()
    magenta = (pixels == NONFINITE_COLOUR).all(axis=-1)
    # independently: tile c holds the 20x20 pixels whose nearest source pixel of the 28x28 map
    # (index floor(i * 28 / 20)) is (c, c), for channels 0, 1, 2; laid out as the grid is
    assert result.activations.shape[1:] == (28, 28)
    source = np.floor(np.arange(20) * 28 / 20).astype(int)
    expected = np.zeros((4, 20, 20), dtype=np.uint8)
    for c in range(3):
        expected[c] = np.outer(source == c, source == c) * 255
    assert [int(expected[c].sum() // 255) for c in range(4)] == [1, 1, 1, 0]
    assert np.array_equal(magenta, grid_pixels(expected, pad_value=0) > 0)
    assert magenta.sum() > 0
    grey = featviz.visualize(cat_photo, model=f"{name}:build", layers=[1], weights="none", size=8)[0]
    assert grey.grid_pixels().ndim == 2  # a grey grid is left grey: the values are drawn at the channel mean


def test_replace_nonfinite_keeps_the_channel_mean_and_leaves_the_input_alone() -> None:
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    x[0, 1, 2, 2] = float("nan")
    x[1, 2] = float("inf")  # a channel without one finite value
    original = x.clone()
    replaced, counts = attention.replace_nonfinite(x)
    assert counts.tolist() == [1, 16]
    assert torch.isfinite(replaced).all()
    assert torch.equal(x.isnan(), original.isnan()) and torch.equal(x.nan_to_num(), original.nan_to_num())
    finite_mean = torch.cat([original[0, 1].flatten()[:10], original[0, 1].flatten()[11:]]).mean()
    assert replaced[0, 1, 2, 2] == finite_mean
    assert (replaced[1, 2] == 0).all()


# --------------------------------------------------------------------------------------------
# 9. CBAM's order on a one-channel layer
# --------------------------------------------------------------------------------------------


def test_cbam_refine_on_one_channel_gives_weight_one() -> None:
    acts = torch.randn(2, 1, 5, 5, generator=torch.Generator().manual_seed(0))
    weights, refined = cbam_refine(acts)
    assert weights.tolist() == [[1.0], [1.0]]
    assert torch.equal(refined, acts)
    statistic = acts.mean(dim=(2, 3)) + acts.amax(dim=(2, 3))
    assert torch.equal(weights, weights_from_statistic(statistic))


def test_cbam_on_a_one_channel_layer_end_to_end(patch_photo: Path, user_module) -> None:
    import featviz

    name = user_module("""
        import torch
        from torch import nn

        def build():
            torch.manual_seed(0)
            return nn.Sequential(nn.Conv2d(3, 1, 3, padding=1), nn.ReLU())
    """)
    [result] = featviz.visualize(patch_photo, model=f"{name}:build", layers=[0], weights="none", size=8,
                                 attention="cbam")
    assert result.channel_weights.tolist() == [1.0]
    assert result.channel_map.max() == 1.0


# --------------------------------------------------------------------------------------------
# 10. a channel whose range is tiny still spans 0..255
# --------------------------------------------------------------------------------------------


def test_tiny_range_spans_the_full_grey_scale() -> None:
    ramp = torch.linspace(0.0, 1.0, 16, dtype=torch.float64).reshape(1, 4, 4)
    tiny = (ramp * 1e-14).float()
    pixels = to_uint8(tiny.clone())
    assert pixels.min() == 0 and pixels.max() == 255
    scaled = (tiny.double() - tiny.double().min()) / (tiny.double().max() - tiny.double().min())
    assert (pixels.double() - torch.floor(scaled * 255 + 0.5)).abs().max() <= 1
    bounded = to_uint8(tiny.clone(), bounds=(tiny.amin(), tiny.amax()))
    assert bounded.min() == 0 and bounded.max() == 255
    assert minmax(tiny, dims=(1, 2)).max() == 1.0
    tiles = channel_tiles(tiny, 8)
    assert tiles.min() == 0 and tiles.max() == 255


def test_normal_ranges_are_unchanged() -> None:
    """The guard only acts on a zero span: other channels give the old numbers bit for bit."""
    maps = torch.randn(6, 9, 9, generator=torch.Generator().manual_seed(2)) * torch.logspace(-3, 3, 6)[:, None, None]
    low = maps.amin(dim=(1, 2), keepdim=True)
    span = maps.amax(dim=(1, 2), keepdim=True) - low
    old = ((maps - low) / span.clamp_min(1e-12)).mul(255.0).add(0.5).floor().clamp(0, 255).to(torch.uint8)
    assert torch.equal(to_uint8(maps.clone()), old)
    constant = torch.full((1, 4, 4), 3.0)
    assert to_uint8(constant.clone()).max() == 0 and minmax(constant, dims=(1, 2)).max() == 0


# --------------------------------------------------------------------------------------------
# 15, 16. the manual says what the code does (moved from the README into docs/)
# --------------------------------------------------------------------------------------------

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_readme_fcanet_frequencies_below_seven_pixels() -> None:
    from featviz.maps.attention import scale_frequencies

    assert scale_frequencies([(6, 6), (1, 0), (3, 5)], 5, 5) == [(4, 4), (1, 0), (3, 4)]  # step 1, clipped
    assert scale_frequencies([(6, 6), (1, 0)], 14, 21) == [(12, 18), (2, 0)]  # u * (H // 7), as FcaNet
    text = (DOCS / "attention.md").read_text(encoding="utf-8")
    assert "(min(u, H−1), min(v, W−1))" in text and "maps every frequency to 0" in text


def test_clip_percentile_words_match_the_rounded_rank() -> None:
    from featviz.output.render import percentile_bounds

    values = torch.arange(1, 11, dtype=torch.float32)
    low, high = percentile_bounds(values, 94)  # rank round(9.4) = 9; the nearest-rank method's ceil gives 10
    assert (float(low), float(high)) == (2.0, 9.0)
    doc = percentile_bounds.__doc__ or ""
    assert "round(P/100 * M)" in doc and "(nearest rank)" not in doc
    assert "round(P/100·M)" in (DOCS / "show.md").read_text(encoding="utf-8")


def test_readme_promises_pixels_and_names_the_seed_difference() -> None:
    export = " ".join((DOCS / "batch-export.md").read_text(encoding="utf-8").split())
    assert "byte for byte, as an uninterrupted one" not in export
    assert "with the same pixels in every PNG" in export
    show = " ".join((DOCS / "show.md").read_text(encoding="utf-8").split())
    assert "one grey level on about 2 pixels in a million" in show
