"""Tests for ``featviz atlas`` (issue 12): top-N lists and statistics against a brute-force
computation, receptive fields against hand-computed ones, bad inputs, shards + merge against a
single run, resume after SIGKILL.

Brute force here is independent of featviz: torchvision's own transforms preprocess each photo,
the tiny model's ``features`` is sliced and run one photo at a time, and the ranking is a plain
``sorted`` by (score descending, key ascending).
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision
from click.testing import CliRunner, Result
from PIL import Image
from torchvision import transforms

import tinymodels
from featviz.atlas.accumulator import ChannelTable, merge, new_atlas
from featviz.cli.main import main
from featviz.maps.receptive import Field, ReceptiveFields, photo_box
from featviz.models.preprocess import IMAGENET_MEAN, IMAGENET_STD

pytestmark = pytest.mark.filterwarnings("error")

TINY = ["--model", "tinymodels:tiny_features", "--weights", "none"]
SMALL = ["--resize", "40", "--crop", "32"]


def atlas(*args: str | Path) -> Result:
    return CliRunner().invoke(main, ["atlas", *map(str, args)], catch_exceptions=False)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seven random photos of different sizes and aspect ratios, and an exact copy of one of
    them under a name that sorts BEFORE it (the tie must go to the smaller key)."""
    folder = tmp_path_factory.mktemp("atlas") / "in"
    folder.mkdir()
    rng = np.random.default_rng(12)
    sizes = [(60, 48), (48, 70), (50, 50), (90, 44), (41, 63), (77, 55), (52, 66)]
    for i, (w, h) in enumerate(sizes):
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        pixels[: h // 3] //= 1 + i  # different brightness: different scores
        Image.fromarray(pixels).save(folder / f"p{i}.png")
    (folder / "a_copy_of_p3.png").write_bytes((folder / "p3.png").read_bytes())
    return folder


def brute_force(folder: Path, layer: int, by: str, factory: Any = tinymodels.tiny_features) -> dict[str, Any]:
    """Per channel the sorted (score, key, y, x) of every photo, and the statistics."""
    model = factory().eval()
    prep = transforms.Compose([transforms.Resize(40), transforms.CenterCrop(32), transforms.ToTensor(),
                               transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    rows: list[tuple[str, torch.Tensor]] = []
    for path in sorted(folder.iterdir()):
        with Image.open(path) as image:
            x = prep(image.convert("RGB"))[None]
        with torch.no_grad():
            acts = model.features[: layer + 1](x)[0]
        rows.append((path.stem, acts))
    channels = rows[0][1].shape[0]
    lists, means, maxima, positive = [], [], [], []
    for c in range(channels):
        entries = []
        for key, acts in rows:
            plane = acts[c]
            flat = int(plane.flatten().argmax())
            score = float(plane.max()) if by == "max" else float(plane.double().mean())
            entries.append((score, key, flat // plane.shape[1], flat % plane.shape[1]))
        lists.append(sorted(entries, key=lambda e: (-e[0], e[1])))
        means.append(sum(float(acts[c].double().mean()) for _, acts in rows) / len(rows))
        maxima.append(max(float(acts[c].max()) for _, acts in rows))
        positive.append(sum(float(acts[c].max()) > 0 for _, acts in rows) / len(rows))
    return {"lists": lists, "mean": means, "max": maxima, "positive": positive, "count": len(rows)}


# --- the accumulator against brute force --------------------------------------------------

@pytest.mark.parametrize("by", ["max", "mean"])
def test_top_lists_and_statistics_match_brute_force(photos: Path, tmp_path: Path, by: str) -> None:
    out = tmp_path / "out"
    result = atlas(photos, "--out", out, *TINY, *SMALL, "--layer", "3", "--top", "3", "--by", by, "-q")
    assert result.exit_code == 0, result.output
    document = json.loads((out / "features.3" / "atlas.json").read_text())
    expected = brute_force(photos, 3, by)
    assert document["layer"] == "features.3" and document["shape"] == [12, 8, 8]
    assert document["images"] == 8 and document["by"] == by and len(document["channels"]) == 12
    for c, kept in enumerate(document["channels"]):
        want = expected["lists"][c][:3]
        assert [e["key"] for e in kept] == [w[1] for w in want], c
        assert [(e["y"], e["x"]) for e in kept] == [(w[2], w[3]) for w in want], c
        assert [e["score"] for e in kept] == pytest.approx([w[0] for w in want], rel=1e-5, abs=1e-6)
        for e in kept:
            assert e["input"] == str(photos / f"{e['key']}.png")
    stats = document["statistics"]
    assert stats["mean"] == pytest.approx(expected["mean"], rel=1e-5, abs=1e-6)
    assert stats["max"] == pytest.approx(expected["max"], rel=1e-5, abs=1e-6)
    assert stats["positive_fraction"] == pytest.approx(expected["positive"])
    assert stats["dead"] == [c for c, p in enumerate(expected["positive"]) if p == 0]


def test_ties_go_to_the_smaller_key(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert atlas(photos, "--out", out, *TINY, *SMALL, "--layer", "3", "--top", "8", "-q").exit_code == 0
    document = json.loads((out / "features.3" / "atlas.json").read_text())
    for kept in document["channels"]:
        keys = [e["key"] for e in kept]
        # the copy scores exactly like p3 and sorts before it: it comes right before p3
        assert keys.index("a_copy_of_p3") + 1 == keys.index("p3")
        assert kept[keys.index("p3")]["score"] == kept[keys.index("a_copy_of_p3")]["score"]


def test_boxes_are_the_hand_computed_fields_in_photo_pixels(photos: Path, tmp_path: Path) -> None:
    """TinyFeatures up to features.3: conv k5 s2 p2, max-pool k2 s2, conv k3 p1. Jump j, size r
    and padding p of the field, layer by layer (r += (k-1) j, p += pad j, j *= stride):
    conv: j=2 r=5 p=2; pool: r=5+1*2=7, p=2, j=4; conv: r=7+2*4=15, p=2+1*4=6.
    Unit y covers input rows 4y-6 .. 4y+8, clipped to the 32-pixel input. The input is the
    centre 32x32 of the photo resized to a short side of 40 (torchvision's rounding)."""
    out = tmp_path / "out"
    assert atlas(photos, "--out", out, *TINY, *SMALL, "--layer", "3", "--top", "8", "-q").exit_code == 0
    document = json.loads((out / "features.3" / "atlas.json").read_text())
    for kept in document["channels"]:
        for e in kept:
            with Image.open(e["input"]) as image:
                w, h = image.size
            new_w, new_h = (40, int(40 * h / w)) if w <= h else (int(40 * w / h), 40)
            sx, sy = w / new_w, h / new_h
            crop_left, crop_top = round((new_w - 32) / 2), round((new_h - 32) / 2)
            rows = (max(0, 4 * e["y"] - 6), min(32, 4 * e["y"] + 9))
            cols = (max(0, 4 * e["x"] - 6), min(32, 4 * e["x"] + 9))
            want = [(crop_left + cols[0]) * sx, (crop_top + rows[0]) * sy, (crop_left + cols[1]) * sx,
                    (crop_top + rows[1]) * sy]
            assert e["box"] == pytest.approx(want, abs=0.006), e


def test_a_dead_channel_is_found_and_marked(photos: Path, tmp_path: Path, tests_on_path: None) -> None:
    out = tmp_path / "out"
    result = atlas(photos, "--out", out, "--model", "tinymodels:tiny_dead_channel", "--weights", "none", *SMALL,
                   "--layer", "4", "-q")
    assert result.exit_code == 0, result.output
    document = json.loads((out / "features.4" / "atlas.json").read_text())
    expected = brute_force(photos, 4, "max", tinymodels.tiny_dead_channel)
    assert 5 in document["statistics"]["dead"]
    assert document["statistics"]["dead"] == [c for c, p in enumerate(expected["positive"]) if p == 0]
    assert document["statistics"]["positive_fraction"][5] == 0.0 and document["statistics"]["max"][5] == 0.0


def test_fewer_images_than_top_keeps_what_there_is(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = atlas(photos / "p0.png", photos / "p1.png", "--out", out, *TINY, *SMALL, "--layer", "0", "--top", "5",
                   "-q")
    assert result.exit_code == 0, result.output
    document = json.loads((out / "features.0" / "atlas.json").read_text())
    assert all(sorted(Path(e["key"]).name for e in kept) == ["p0", "p1"] for kept in document["channels"])
    with Image.open(out / "features.0" / "channels" / "0000.png") as strip:
        assert strip.width > 5 * 100  # five slots, three of them empty
    assert len(list((out / "features.0" / "channels").glob("*.png"))) == 8


def test_outputs_and_nothing_outside_out(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    before = sorted(p.name for p in photos.iterdir())
    result = atlas(photos, "--out", out, *TINY, *SMALL, "--layer", "0,3", "--top", "2", "-q")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in photos.iterdir()) == before
    for layer, channels in (("features.0", 8), ("features.3", 12)):
        folder = out / layer
        assert sorted(p.name for p in (folder / "channels").iterdir()) == [f"{c:04d}.png" for c in range(channels)]
        with Image.open(folder / "atlas.png") as picture:
            picture.load()
    assert (out / "index.html").is_file() and (out / "atlas-state.json").is_file()
    assert not [p for p in out.rglob("*") if ".featviz-tmp" in p.name]


def test_unreadable_images_are_error_lines_and_the_rest_make_the_atlas(photos: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("p0.png", "p1.png", "p2.png"):
        (folder / name).write_bytes((photos / name).read_bytes())
    (folder / "broken.png").write_bytes((photos / "p0.png").read_bytes()[:60])
    out = tmp_path / "out"
    result = atlas(folder, "--out", out, *TINY, *SMALL, "--layer", "0", "-q")
    assert result.exit_code == 1
    assert "broken.png" in result.stderr and "Traceback" not in result.output
    document = json.loads((out / "features.0" / "atlas.json").read_text())
    assert document["images"] == 3 and document["failed"] == 1
    assert {e["key"] for kept in document["channels"] for e in kept} == {"p0", "p1", "p2"}


def test_usage_errors_come_before_any_image(photos: Path, tmp_path: Path) -> None:
    result = atlas(photos, "--out", tmp_path / "o", *TINY, "--layer", "99")
    assert result.exit_code == 2 and "out of range" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()
    result = atlas("--out", tmp_path / "o", *TINY)
    assert result.exit_code == 2


# --- receptive fields against hand-computed ones -----------------------------------------

def _expected(unit: int, jump: int, pad: int, size: int, length: int) -> tuple[int, int]:
    """Rows unit*jump - pad .. unit*jump - pad + size - 1, clipped to the input [0, length)."""
    first = unit * jump - pad
    return max(0, first), min(length, first + size)


# (layer, jump, padding, size): r += (k - 1) * j, p += pad * j, j *= stride, module by module.
ALEXNET = [
    ("features.0", 4, 2, 11),  # conv k11 s4 p2
    ("features.2", 8, 2, 19),  # max-pool k3 s2: r = 11 + 2*4
    ("features.3", 8, 18, 51),  # conv k5 p2: r = 19 + 4*8, p = 2 + 2*8
    ("features.5", 16, 18, 67),  # max-pool k3 s2: r = 51 + 2*8
    ("features.6", 16, 34, 99),  # conv k3 p1: r = 67 + 2*16, p = 18 + 16
    ("features.10", 16, 66, 163),  # two more conv k3 p1: r = 99 + 2*32, p = 34 + 2*16
]
# torchvision ResNet-18: conv1 k7 s2 p3 (j=2 r=7 p=3); max-pool k3 s2 p1 (r=11 p=5 j=4);
# layer1: four 3x3 convs at j=4 (r=11+4*8=43, p=5+4*4=21); layer2: 3x3 stride 2 at j=4
# (r=51, p=25, j=8), then three 3x3 at j=8 (r=51+3*16=99, p=25+3*8=49); layer3: 3x3 stride 2
# at j=8 (r=115, p=57, j=16), three 3x3 at j=16 (r=115+3*32=211, p=57+3*16=105). The 1x1
# stride-2 shortcuts see a subset of that.
RESNET18 = [("layer1", 4, 21, 43), ("layer2", 8, 49, 99), ("layer3", 16, 105, 211)]


@pytest.mark.parametrize("name,table", [("alexnet", ALEXNET), ("resnet18", RESNET18)])
def test_receptive_fields_match_hand_computed(name: str, table: list[tuple[str, int, int, int]]) -> None:
    model = torchvision.models.get_model(name, weights=None)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    fields = ReceptiveFields(model)
    side = 160  # AlexNet's features.10 is 9x9 then, ResNet-18's layer3 10x10: the corners still clip
    for layer, jump, pad, size in table:
        units = math.ceil(side / jump)  # enough: only the positions the layer has are asked for
        sub = model.get_submodule(layer)
        with torch.no_grad():
            height = _layer_height(model, sub, side)
        positions = [(0, 0), (height // 2, height - 1), (height - 1, 1)]
        found = fields.fields(layer, (side, side), positions)
        for y, x in positions:
            rows, cols = _expected(y, jump, pad, size, side), _expected(x, jump, pad, size, side)
            assert found[(y, x)] == Field(rows[0], cols[0], rows[1], cols[1]), (layer, y, x, units)
    assert model.training and all(m.training for m in model.modules())  # the user's model is untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(not m._forward_hooks for m in model.modules())


def _layer_height(model: torch.nn.Module, layer: torch.nn.Module, side: int) -> int:
    seen: list[int] = []
    handle = layer.register_forward_hook(lambda m, i, o: seen.append(o.shape[2]))
    try:
        model.eval()(torch.zeros(1, 3, side, side))
    finally:
        handle.remove()
        model.train()
    return seen[0]


def test_fields_from_rows_and_columns_equal_the_direct_ones() -> None:
    model = torchvision.models.alexnet(weights=None)
    positions = [(y, x) for y in range(5) for x in range(5)]  # features.5 at 127 px: a 7x7 map
    fast = ReceptiveFields(model).fields("features.5", (127, 127), positions)
    direct = ReceptiveFields(model, separable=False).fields("features.5", (127, 127), positions)
    assert fast == direct
    assert fast[(0, 4)] == Field(*_expected(0, 16, 18, 67, 127)[:1], *_expected(4, 16, 18, 67, 127)[:1],
                                 *_expected(0, 16, 18, 67, 127)[1:], *_expected(4, 16, 18, 67, 127)[1:])


class _Masked(torch.nn.Module):
    """A 3x3 convolution, then a fixed mask (a buffer: it stays as it is in the surrogate) that
    zeroes the lower-left triangle: the fields depend on the position, not separably."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 3, padding=1)
        self.register_buffer("mask", torch.triu(torch.ones(12, 12)))
        self.out = torch.nn.Conv2d(2, 2, 5, padding=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.conv(x) * self.mask)


def test_position_dependent_models_fall_back_to_direct_fields() -> None:
    model = _Masked()
    positions = [(y, x) for y in range(12) for x in range(12)]
    fast = ReceptiveFields(model).fields("out", (12, 12), positions)
    assert fast == ReceptiveFields(model, separable=False).fields("out", (12, 12), positions)
    # (6, 6) sees conv units rows/cols 4..8, of which those with col >= row pass: rows 4..8,
    # cols 4..8, so input 3..9. (8, 4) sees rows 6..10 x cols 2..6: only (6, 6) passes: input
    # 5..7. (11, 0) sees rows 9..11 x cols 0..2: all masked, an empty field.
    assert fast[(6, 6)] == Field(3, 3, 10, 10) and fast[(8, 4)] == Field(5, 5, 8, 8)
    assert fast[(11, 0)] == Field(0, 0, 0, 0)


def test_a_field_too_deep_for_float32_is_computed_in_float64() -> None:
    """A hundred 3x3 convolutions (padding 1): the field of a unit is 1 + 2*100 = 201 pixels
    wide. The largest gradient on its outermost row is about (1/3)^100 = 2e-48, below float32's
    smallest number (float32 alone finds rows 8..196, measured): the float64 pass finds 2..202."""
    model = torch.nn.Sequential(*[torch.nn.Conv2d(1 if i else 3, 1, 3, padding=1) for i in range(100)])
    found = ReceptiveFields(model).fields("99", (205, 5), [(102, 2)])  # 5 columns wide: cheap
    assert found[(102, 2)] == Field(2, 0, 203, 5)


def test_photo_box_goes_through_the_crop() -> None:
    from featviz.models.preprocess import Preprocess

    crop = Preprocess(resize=256, crop=224).crop_box(512, 384)  # resized to 341x256, crop at (58, 16)
    box = photo_box(Field(0, 0, 224, 224), (224, 224), crop, (512, 384))
    assert box == pytest.approx([58 * 512 / 341, 16 * 1.5, (58 + 224) * 512 / 341, (16 + 224) * 1.5], abs=0.006)
    padded = Preprocess(resize=100, crop=224).crop_box(100, 100)  # the crop pads: the box is clipped
    assert photo_box(Field(0, 0, 224, 224), (224, 224), padded, (100, 100)) == [0.0, 0.0, 100.0, 100.0]


# --- state, merge, resume -----------------------------------------------------------------

def test_state_round_trips_and_merge_is_order_free() -> None:
    settings = {"top": 3, "by": "max"}
    torch.manual_seed(0)
    batches = [([f"k{4 * b + i}" for i in range(4)], torch.randn(4, 5, 3, 3)) for b in range(5)]
    whole = new_atlas(settings, {"l": 5})
    for keys, acts in batches:
        whole.update("l", keys, acts)
    parts = []
    for index in (2, 1):  # shards given out of order
        part = new_atlas(settings, {"l": 5}, shard=(index, 2))
        for keys, acts in batches[index - 1::2]:
            part.update("l", keys, acts)
        part.complete = True
        parts.append(type(part).from_json(json.loads(json.dumps(part.to_json()))))
    merged = merge(parts)
    assert merged.tables["l"].to_json() == whole.tables["l"].to_json()
    assert merged.tables["l"].statistics() == whole.tables["l"].statistics()


def test_exact_mean_is_the_correctly_rounded_mean() -> None:
    table = ChannelTable(1, 1)
    values = [1e16, 1.0, -1e16, 3.0]  # float64 summation in order would give 0.0 + 3.0
    for i, v in enumerate(values):
        table.update([f"k{i}"], torch.full((1, 1, 1, 1), v, dtype=torch.float64), "max")
    assert table.statistics()["mean"] == [1.0]  # (1 + 3) / 4 exactly


def test_shards_merged_equal_one_run(photos: Path, tmp_path: Path) -> None:
    common = [*TINY, *SMALL, "--layer", "0,3", "--top", "3", "-q"]
    assert atlas(photos, "--out", tmp_path / "single", *common).exit_code == 0
    shards = []
    for i in (1, 2, 3):
        shard = tmp_path / f"shard{i}"
        assert atlas(photos, "--out", shard, *common, "--shard", f"{i}/3").exit_code == 0
        assert not (shard / "features.0").exists()  # a shard writes its state only
        shards.append(shard)
    result = atlas("--merge", shards[2], shards[0], shards[1], "--out", tmp_path / "merged", "-q")
    assert result.exit_code == 0, result.output
    for layer in ("features.0", "features.3"):
        single = (tmp_path / "single" / layer / "atlas.json").read_bytes()
        assert (tmp_path / "merged" / layer / "atlas.json").read_bytes() == single
        merged, single = (tmp_path / name / layer / "atlas.png" for name in ("merged", "single"))
        assert merged.read_bytes() == single.read_bytes()
    assert (tmp_path / "merged" / "index.html").read_bytes() == (tmp_path / "single" / "index.html").read_bytes()


def test_merge_refuses_different_options_and_missing_shards(photos: Path, tmp_path: Path) -> None:
    common = [*TINY, *SMALL, "--layer", "0", "-q"]
    assert atlas(photos, "--out", tmp_path / "a", *common, "--shard", "1/2", "--top", "3").exit_code == 0
    assert atlas(photos, "--out", tmp_path / "b", *common, "--shard", "2/2", "--top", "4").exit_code == 0
    result = atlas("--merge", tmp_path / "a", tmp_path / "b", "--out", tmp_path / "m")
    assert result.exit_code == 2 and "differ in top: 3 vs 4" in result.output
    result = atlas("--merge", tmp_path / "a", "--out", tmp_path / "m")
    assert result.exit_code == 2 and "2/2 are missing" in result.output
    assert atlas(photos, "--out", tmp_path / "c", *common, "--shard", "2/2", "--top", "3", "--by",
                 "mean").exit_code == 0
    result = atlas("--merge", tmp_path / "a", tmp_path / "c", "--out", tmp_path / "m")
    assert result.exit_code == 2 and "differ in by: 'max' vs 'mean'" in result.output
    assert atlas(photos, "--out", tmp_path / "d", *common, "--shard", "2/2", "--top", "3", "--seed", "1").exit_code == 0
    result = atlas("--merge", tmp_path / "a", tmp_path / "d", "--out", tmp_path / "m")
    assert result.exit_code == 2 and "differ in seed: 0 vs 1" in result.output  # other weights
    result = atlas("--merge", tmp_path / "a", "--shard", "1/2", "--out", tmp_path / "m")
    assert result.exit_code == 2
    assert not (tmp_path / "m").exists()


def test_resume_after_sigkill_gives_the_same_atlas(tmp_path: Path, tests_on_path: None) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    samples = sorted(Path(__file__).resolve().parent.parent.joinpath("sample_images").glob("*.jpg"))
    for i in range(30):
        (folder / f"photo{i:02d}.jpg").write_bytes(samples[i % len(samples)].read_bytes())
    args = [*TINY, "--layer", "3", "--top", "4", "--batch-size", "1", "--workers", "1", "-q"]
    assert atlas(folder, "--out", tmp_path / "reference", *args).exit_code == 0
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "featviz", "atlas", str(folder), "--out", str(out), *args, "--checkpoint-every", "0"]
    log = tmp_path / "stderr.txt"
    with open(log, "wb") as stderr:
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=stderr, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "no checkpoint in 120 s"
            try:
                state = json.loads((out / "atlas-state.json").read_text())
                if state["done"] >= 2:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=60) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    state = json.loads((out / "atlas-state.json").read_text())
    assert 2 <= state["done"]
    result = atlas(folder, "--out", out, *args, "--resume")
    assert result.exit_code == 0, result.output
    reference = (tmp_path / "reference" / "features.3" / "atlas.json").read_bytes()
    assert (out / "features.3" / "atlas.json").read_bytes() == reference
    result = atlas(folder / "photo00.jpg", "--out", out, *args, "--resume")  # other inputs: refused
    assert result.exit_code == 2 and "cannot resume" in result.output and "inputs" in result.output


def test_a_torchscript_model_is_refused_before_any_image(photos: Path, tmp_path: Path) -> None:
    path = tmp_path / "scripted.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script/save are deprecated
        torch.jit.save(torch.jit.script(tinymodels.tiny_features().eval()), str(path))
    result = atlas(photos, "--out", tmp_path / "o", "--model", path, "--weights", "none", *SMALL, "--layer", "0")
    assert result.exit_code == 2 and "TorchScript" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


def test_merge_builds_the_model_with_the_shards_model_kwargs(tmp_path: Path) -> None:
    """--model-kwargs reach the shards AND the merge, which builds the model again from the state:
    the merged atlas equals a single run of the same command."""
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(11)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(photos / f"p{i}.png")
    common = ["--model", "timm:vit_tiny_patch16_224", "--weights", "none", "--resize", "32", "--crop", "32",
              "--model-kwargs", '{"depth": 2, "img_size": 32, "patch_size": 8, "num_classes": 5}',
              "--layer", "blocks.1", "--top", "2", "--quiet"]
    runner = CliRunner()
    for i in (1, 2):
        done = runner.invoke(main, ["atlas", str(photos), *common, "--shard", f"{i}/2",
                                    "--out", str(tmp_path / f"s{i}")])
        assert done.exit_code == 0, done.output
    state = json.loads((tmp_path / "s1" / "atlas-state.json").read_text())
    assert state["settings"]["model_kwargs"] == {"depth": 2, "img_size": 32, "patch_size": 8, "num_classes": 5}
    merged = runner.invoke(main, ["atlas", "--merge", str(tmp_path / "s1"), str(tmp_path / "s2"),
                                  "--out", str(tmp_path / "merged"), "--quiet"])
    assert merged.exit_code == 0, merged.output
    single = runner.invoke(main, ["atlas", str(photos), *common, "--out", str(tmp_path / "single")])
    assert single.exit_code == 0, single.output
    assert (tmp_path / "merged" / "blocks.1" / "atlas.json").read_bytes() == \
        (tmp_path / "single" / "blocks.1" / "atlas.json").read_bytes()
