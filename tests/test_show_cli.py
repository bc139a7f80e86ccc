"""``featviz show`` and the Python API end to end: every user error is one line and an exit code,
the drawing options do what they say, the installed entry point runs, ``--help`` stays light."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from click.testing import CliRunner
from PIL import Image, ImageOps
from torchvision import transforms as T

import featviz
import tinymodels
from featviz.cli.main import main
from seedscript import seed_loop

ROOT = Path(__file__).resolve().parent.parent
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
TINY = ["--model", "tinymodels:tiny_features"]


def invoke(args: list[object]):
    return CliRunner().invoke(main, [str(a) for a in args])


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def independent_weights(photo: Path, k: int) -> np.ndarray:
    """SE channel weights of tiny_features' layer k for the photo, computed without featviz."""
    pipeline = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(MEAN, STD)])
    acts = seed_loop(tinymodels.tiny_features().eval(), pipeline(Image.open(photo).convert("RGB"))[None], k)
    squeeze = acts[0].double().mean(dim=(1, 2)).numpy()
    return (squeeze - squeeze.min()) / (squeeze.max() - squeeze.min())


def by_weight(w: np.ndarray) -> list[int]:
    assert np.diff(np.sort(w)).min() > 1e-4  # distinct weights: the order is not a rounding accident
    return [int(c) for c in np.argsort(-w, kind="stable")]


def tiles_of(grid: np.ndarray, size: int, count: int) -> list[np.ndarray]:
    """Cut a make_grid layout (ceil(sqrt(count)) columns, padding 2) back into its tiles."""
    columns = math.ceil(math.sqrt(count))
    return [grid[2 + (i // columns) * (size + 2):2 + (i // columns) * (size + 2) + size,
                 2 + (i % columns) * (size + 2):2 + (i % columns) * (size + 2) + size] for i in range(count)]


def grid_size(count: int, size: int) -> tuple[int, int]:
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    return columns * (size + 2) + 2, rows * (size + 2) + 2


# --- user errors: one line, a hint, an exit code ----------------------------------------------

def assert_clean_error(result, code: int, *words: str) -> None:
    """Exit ``code``; stderr holds exactly one error line (plus its hint), no traceback."""
    assert result.exit_code == code, (result.exit_code, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    errors = [line for line in lines if line.lower().startswith("error:")]
    assert len(errors) == 1, lines
    noise = [line for line in lines if not line.lower().startswith(("error:", "hint:", "downloading:"))]
    assert noise == [], lines
    for word in words:
        assert word in result.stderr, (word, result.stderr)


def _weights_file(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.pt"
    if kind == "misfit":
        torch.save(tinymodels.tiny_residual().state_dict(), path)
    else:
        path.write_bytes(b"\x80\x02 this is not a checkpoint" * 10)
    return path


@pytest.mark.parametrize(("args", "code", "words"), [
    (["--model", "alexnt", "--weights", "none"], 2, ["unknown model 'alexnt'", "alexnet"]),
    (["--weights", "none", "--layer", "13"], 2, ["layer 13 is out of range", "0..12"]),
    (["--weights", "none", "--layer", "-14"], 2, ["0..12"]),
    (["--weights", "none", "--layer", "featurs.3"], 2, ["no module named 'featurs.3'", "features.3"]),
    ([*TINY, "--layer", "clasifier"], 2, ["no module named 'clasifier'", "classifier"]),
    (["--weights", "IMAGENET1K_V9"], 2, ["no weights named 'IMAGENET1K_V9'", "IMAGENET1K_V1", "none"]),
    ([*TINY, "--weights", "misfit"], 2, ["do not fit", "missing", "features.0.weight", "unexpected", "conv1.weight"]),
    ([*TINY, "--weights", "garbage"], 2, ["cannot be read as a PyTorch weights file", "garbage.pt"]),
    ([*TINY, "--cmap", "viridos"], 2, ["unknown colormap 'viridos'", "viridis"]),
    ([*TINY, "--heat-cmap", "jett"], 2, ["unknown colormap 'jett'", "jet"]),
    ([*TINY, "--channels", "0-x"], 2, ["cannot read channel selection '0-x'", "0-15,32"]),
    ([*TINY, "--channels", "5-2"], 2, ["cannot read channel selection '5-2'"]),
    ([*TINY, "--channels", "0,8"], 2, ["channel 8 is out of range", "0..7"]),
    ([*TINY, "--top-k", "0"], 2, ["--top-k must be at least 1"]),
    ([*TINY, "--size", "0"], 2, ["--size 0 is out of range"]),
    (["--model", "tinymodels:not_a_module"], 2, ["returned str, not a torch.nn.Module"]),
    (["--model", "tinymodels:tiny_featurs"], 2, ["no attribute 'tiny_featurs'", "tiny_features"]),
    (["--model", "tinymodels:Broken", "--layer", "head"], 2, ["cannot run"]),
    ([*TINY, "--layer", "classifier"], 2, ["not a feature map"]),
    ([*TINY, "--device", "nonsense"], 2, ["unknown device 'nonsense'"]),
])
def test_usage_errors(tmp_path: Path, cat_photo: Path, args: list[str], code: int, words: list[str]) -> None:
    args = [str(_weights_file(tmp_path, a)) if a in ("misfit", "garbage") else a for a in args]
    result = invoke(["show", cat_photo, *args, "--out", tmp_path / "out"])
    assert_clean_error(result, code, *words)
    assert result.stdout == ""
    assert not (tmp_path / "out" / "chelsea").exists()  # refused before any image was processed


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_on_a_machine_without_cuda(tmp_path: Path, cat_photo: Path) -> None:
    result = invoke(["show", cat_photo, *TINY, "--device", "cuda", "--out", tmp_path])
    assert_clean_error(result, 2, "CUDA was asked for but is not available", "--device cpu")


def test_pretrained_weights_not_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("name lookups are disabled in the tests")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)  # no resolver timeout on offline machines
    photo = tmp_path / "x.jpg"
    Image.new("RGB", (64, 48), (90, 120, 30)).save(photo)
    result = invoke(["show", photo, "--weights", "DEFAULT", "--out", tmp_path / "out"])
    assert_clean_error(result, 2, "alexnet-owt-7be5be79.pth", os.environ["TORCH_HOME"], "TORCH_HOME",
                       "--weights none", "--weights PATH")
    assert result.stdout == ""  # torch.hub's "Downloading: ..." goes to stderr, not into --json output
    assert not (tmp_path / "out" / "x").exists()


def test_missing_and_corrupt_images_exit_1_naming_the_file_and_the_rest_is_done(tmp_path: Path,
                                                                                cat_photo: Path) -> None:
    missing = tmp_path / "missing.jpg"
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("hello", encoding="utf-8")
    truncated = tmp_path / "half.jpg"
    truncated.write_bytes(cat_photo.read_bytes()[:5000])
    for bad, words in ((missing, ["no such file"]), (not_an_image, ["not a readable image"]),
                       (truncated, ["truncated or corrupt"])):
        out = tmp_path / f"out-{bad.stem}"
        result = invoke(["show", bad, *TINY, "--out", out, "-q"])
        assert_clean_error(result, 1, str(bad), *words)
        assert result.stdout == ""

    out = tmp_path / "out-batch"
    result = invoke(["show", missing, cat_photo, *TINY, "--out", out, "-q"])
    assert_clean_error(result, 1, str(missing))
    listed = result.stdout.splitlines()
    assert listed and all(Path(line).is_file() for line in listed)
    assert (out / "chelsea" / "features.0" / "summary.json").is_file()


def test_click_usage_errors_exit_2(tmp_path: Path, cat_photo: Path) -> None:
    result = invoke(["show", cat_photo, *TINY, "--spatial", "median", "--out", tmp_path])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "median" in result.stderr
    result = invoke(["show", *TINY])
    assert result.exit_code == 2 and "Error: missing argument" in result.stderr


# --- drawing options --------------------------------------------------------------------------

def _show(tmp_path: Path, photo: Path, *options: object, layer: int = 0) -> tuple[object, Path]:
    out = tmp_path / "out"
    result = invoke(["show", photo, *TINY, "--layer", layer, *options, "--out", out, "-q"])
    assert result.exit_code == 0, result.output
    return result, out / "chelsea" / f"features.{layer}"


def _channel_files(folder: Path) -> list[int]:
    return sorted(int(p.stem) for p in (folder / "channels").glob("*.png"))


def test_channels_selection(tmp_path: Path, cat_photo: Path) -> None:
    _, folder = _show(tmp_path, cat_photo, "--channels", "0-3,5", "--size", "16")
    assert _channel_files(folder) == [0, 1, 2, 3, 5]
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    assert summary["drawn_channels"] == [0, 1, 2, 3, 5]
    grid = read_png(folder / "grid.png")
    assert (grid.shape[1], grid.shape[0]) == grid_size(5, 16) == (3 * 18 + 2, 2 * 18 + 2)
    for tile, c in zip(tiles_of(grid, 16, 5), [0, 1, 2, 3, 5], strict=True):
        assert np.array_equal(tile, read_png(folder / "channels" / f"{c:04d}.png"))


def test_top_k_draws_the_largest_weights(tmp_path: Path, cat_photo: Path) -> None:
    _, folder = _show(tmp_path, cat_photo, "--top-k", "3", "--size", "16", layer=3)
    top = by_weight(independent_weights(cat_photo, 3))[:3]
    assert _channel_files(folder) == sorted(top)
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    assert summary["top_channels"][:3] == top
    grid = read_png(folder / "grid.png")  # --sort-by index (the default): tiles in channel order
    assert (grid.shape[1], grid.shape[0]) == grid_size(3, 16)
    for tile, c in zip(tiles_of(grid, 16, 3), sorted(top), strict=True):
        assert np.array_equal(tile, read_png(folder / "channels" / f"{c:04d}.png"))


def test_sort_by_weight_and_max_channels(tmp_path: Path, cat_photo: Path) -> None:
    _, folder = _show(tmp_path, cat_photo, "--sort-by", "weight", "--max-channels", "4", "--size", "16", layer=3)
    order = by_weight(independent_weights(cat_photo, 3))
    assert _channel_files(folder) == list(range(12))  # every channel still gets its PNG
    grid = read_png(folder / "grid.png")
    assert (grid.shape[1], grid.shape[0]) == grid_size(4, 16) == (38, 38)
    for tile, c in zip(tiles_of(grid, 16, 4), order[:4], strict=True):
        assert np.array_equal(tile, read_png(folder / "channels" / f"{c:04d}.png"))


@pytest.mark.parametrize(("layer", "channels"), [(0, 8), (3, 12)])
def test_size_sets_tiles_and_grid_layout(tmp_path: Path, cat_photo: Path, layer: int, channels: int) -> None:
    _, folder = _show(tmp_path, cat_photo, "--size", "64", layer=layer)
    columns = math.ceil(math.sqrt(channels))
    with Image.open(folder / "grid.png") as grid:
        assert grid.mode == "L"
        assert grid.size == (columns * (64 + 2) + 2, math.ceil(channels / columns) * (64 + 2) + 2)
    with Image.open(folder / "channels" / "0000.png") as tile:
        assert tile.size == (64, 64) and tile.mode == "L"
    grid = read_png(folder / "grid.png")
    for c, tile in enumerate(tiles_of(grid, 64, channels)):
        assert np.array_equal(tile, read_png(folder / "channels" / f"{c:04d}.png"))
    assert (grid[:2] == 255).all() and (grid[:, :2] == 255).all()  # white padding


def test_cmap_and_labels(tmp_path: Path, cat_photo: Path) -> None:
    import matplotlib

    _, folder = _show(tmp_path / "v", cat_photo, "--cmap", "viridis", "--size", "16")
    with Image.open(folder / "grid.png") as grid:
        assert grid.mode == "RGB" and grid.size == grid_size(8, 16)
    grid = read_png(folder / "grid.png")
    for c, tile in enumerate(tiles_of(grid, 16, 8)):
        grey = read_png(folder / "channels" / f"{c:04d}.png")  # channel files stay grey
        expected = np.round(matplotlib.colormaps["viridis"](grey / 255.0)[..., :3] * 255).astype(np.uint8)
        assert np.array_equal(tile, expected)

    _, plain = _show(tmp_path / "p", cat_photo, "--size", "48")
    _, labelled = _show(tmp_path / "l", cat_photo, "--size", "48", "--labels")
    a, b = read_png(plain / "grid.png"), read_png(labelled / "grid.png")
    assert a.shape == b.shape and not np.array_equal(a, b)
    for c, (tile_a, tile_b) in enumerate(zip(tiles_of(a, 48, 8), tiles_of(b, 48, 8), strict=True)):
        assert not np.array_equal(tile_a[:16, :16], tile_b[:16, :16]), c  # the number's corner
        assert np.array_equal(tile_a[24:], tile_b[24:])  # the rest of the tile is untouched
    assert np.array_equal(read_png(plain / "channels" / "0003.png"), read_png(labelled / "channels" / "0003.png"))


def test_plain_output_lists_every_file_written_one_per_line(tmp_path: Path, cat_photo: Path) -> None:
    result, folder = _show(tmp_path, cat_photo, "--size", "8", "--save-raw")
    *listed, report = result.stdout.splitlines()
    assert report == str(tmp_path / "out" / "index.html")  # the report comes last
    written = sorted(str(p) for p in (tmp_path / "out" / "chelsea").rglob("*") if p.is_file())
    assert sorted(listed) == written
    assert len(listed) == len(set(listed))
    assert str(folder / "grid.png") in listed and str(folder / "summary.json") in listed
    for name in ("spatial_attention.png", "channel_attention.png", "activations.npy", "attention.npz"):
        assert str(folder / name) in listed


def test_json_output(tmp_path: Path, cat_photo: Path) -> None:
    out = tmp_path / "out"
    result = invoke(["show", cat_photo, *TINY, "--layer", "0,3", "--size", "8", "--json", "--out", out])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["ok"] == 1 and document["failed"] == 0
    records = document["results"]
    assert [r["layer"] for r in records] == ["features.0", "features.3"]
    for record, shape in zip(records, ([8, 112, 112], [12, 56, 56]), strict=True):
        assert record["status"] == "ok" and record["shape"] == shape
        assert record["output"] == f"chelsea/{record['layer']}"
        assert record["files"] and all(Path(f).is_file() for f in record["files"])
        names = {Path(f).name for f in record["files"]}
        assert {"grid.png", "spatial_attention.png", "channel_attention.png", "summary.json"} <= names


def test_json_stays_clean_when_torchvision_downloads(tmp_path: Path, cat_photo: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.hub announces a download on stdout; with --json stdout must stay one JSON document.
    The download itself is faked: it writes a (random) squeezenet1_1 state dict."""
    torch.manual_seed(3)
    state = torchvision.models.squeezenet1_1(weights=None).state_dict()
    fetched: list[str] = []

    def fake_download(url: str, dst: str, *args: object, **kwargs: object) -> None:
        fetched.append(url)
        torch.save(state, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    out = tmp_path / "out"
    result = invoke(["show", cat_photo, "--model", "squeezenet1_1", "--layer", "0", "--channels", "0",
                     "--size", "8", "--json", "--out", out])
    assert result.exit_code == 0, result.output
    assert fetched == [torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1.url]
    assert json.loads(result.stdout)["ok"] == 1
    assert "Downloading" in result.stderr
    summary = json.loads((out / "chelsea" / "features.0" / "summary.json").read_text(encoding="utf-8"))
    assert summary["weights"] == "SqueezeNet1_1_Weights.IMAGENET1K_V1"


# --- the Python API ---------------------------------------------------------------------------

def test_visualize_returns_results_and_writes_nothing(tmp_path: Path, cat_photo: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    pyplot_before = "matplotlib.pyplot" in sys.modules
    monkeypatch.chdir(tmp_path)
    results = featviz.visualize(cat_photo, model="tinymodels:tiny_features", layers=[0, 3], weights="none")
    assert list(tmp_path.iterdir()) == []
    assert [r.layer.path for r in results] == ["features.0", "features.3"]
    photo = Image.open(cat_photo)
    for result, shape in zip(results, [(8, 112, 112), (12, 56, 56)], strict=True):
        assert tuple(result.activations.shape) == shape and result.activations.dtype == torch.float32
        assert result.num_channels == shape[0]
        assert result.grid().size == grid_size(shape[0], 256)
        image = result.channel_image(2)
        assert image.mode == "L" and image.size == (256, 256)
        assert result.spatial_overlay().size == photo.size == (451, 300)
        assert result.channel_overlay().size == photo.size
        assert result.spatial.shape == shape[1:] and float(result.spatial.max()) == 1.0
        assert result.channel_weights.shape == (shape[0],)
        assert result.key == "chelsea" and result.image_path == cat_photo
    assert list(tmp_path.iterdir()) == []
    if not pyplot_before:
        assert "matplotlib.pyplot" not in sys.modules  # no figure, no window

    out = tmp_path / "api-out"
    again = featviz.visualize([cat_photo, photo.convert("RGB")], model="tinymodels:tiny_features", layers=["0"],
                              weights="none", out=out, size=32, channels="0-1")
    assert [r.key for r in again][0] == "chelsea"
    folder = out / "chelsea" / "features.0"
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    assert summary["drawn_channels"] == [0, 1]
    assert all((folder / name).is_file() for name in summary["files"])
    assert torch.equal(again[0].activations, again[1].activations)  # a path or a PIL image: same


def test_visualizer_reuses_one_model(cat_photo: Path, patch_photo: Path) -> None:
    visualizer = featviz.Visualizer("tinymodels:tiny_features", "none", layers=["all"])
    results = visualizer.run([cat_photo, patch_photo])
    assert [r.key for r in results] == ["chelsea"] * 5 + ["patch"] * 5
    assert results[5].spatial_overlay().size == (400, 300)


# --- odd but valid photos, end to end ---------------------------------------------------------

def assert_dimmed(overlay: np.ndarray, photo: np.ndarray) -> None:
    """``overlay`` is ``photo`` * 0.35, rounded half up; where v * 0.35 is a tie (v = 10, 30, ...)
    float32 rounding may decide either way."""
    exact = photo.astype(np.float64) * 0.35
    expected = np.floor(exact + 0.5)
    tie = np.abs(exact - np.floor(exact) - 0.5) < 1e-6
    assert np.array_equal(overlay[~tie], expected[~tie])
    assert np.abs(overlay[tie] - expected[tie]).max(initial=0) <= 1


def test_exif_rotated_photo(tmp_path: Path) -> None:
    """Stored 48 wide and 32 high with orientation 6 (turn 90 degrees clockwise to view): the
    photo is 32 wide and 48 high, and the overlay is drawn on it as viewed."""
    stored = np.zeros((32, 48, 3), dtype=np.uint8)
    stored[..., 0] = np.linspace(0, 250, 48, dtype=np.uint8)[None, :]
    stored[..., 2] = np.linspace(0, 250, 32, dtype=np.uint8)[:, None]
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=95)
    result = invoke(["show", path, *TINY, "--size", "8", "--out", tmp_path / "out", "-q"])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "out" / "rotated" / "features.0"
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    assert summary["image_size"] == [32, 48]
    with Image.open(path) as opened:
        viewed = np.asarray(ImageOps.exif_transpose(opened).convert("RGB")).astype(np.float64)
    assert viewed.shape == (48, 32, 3)
    overlay = read_png(folder / "spatial_attention.png")
    assert overlay.shape == (48, 32, 3)
    # 32x48 -> 256x384 (scale 8), crop 224 at (16, 80): photo rows 0..9 lie above the box, dimmed
    assert summary["crop_box"] == [16 / 8, 80 / 8, 240 / 8, 304 / 8]
    assert_dimmed(overlay[:10], viewed[:10])
    assert_dimmed(overlay[38:], viewed[38:])
    assert np.abs(overlay[10:38, 2:30] - np.floor(viewed[10:38, 2:30] * 0.35 + 0.5)).max() > 10


def test_sixteen_bit_photo(tmp_path: Path) -> None:
    """A 16-bit grey ramp is scaled to 8 bits (v / 257), not clipped to white."""
    values = np.linspace(0, 65535, 80 * 60).reshape(60, 80).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as stored:
        assert stored.mode.startswith("I")
    result = invoke(["show", path, *TINY, "--size", "8", "--out", tmp_path / "out", "-q"])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "out" / "deep" / "features.0"
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    assert summary["image_size"] == [80, 60]
    # 80x60 -> 341x256, crop 224 at (58, 16): photo columns 0..12 lie left of the box
    grey = np.rint(values / 257.0)
    overlay = read_png(folder / "spatial_attention.png")
    dimmed = np.floor(grey[:, :13] * 0.35 + 0.5)
    assert np.abs(overlay[:, :13].astype(np.float64) - dimmed[..., None]).max() <= 1
    assert overlay[:, :13].max() > 30  # a ramp up to 255 * 0.35, not black


# --- the installed command, in real processes -------------------------------------------------

def _featviz_executable() -> str:
    beside = Path(sys.executable).parent / "featviz"
    found = str(beside) if beside.is_file() else shutil.which("featviz")
    assert found, "the featviz entry point is not installed"
    return found


def _run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, **kwargs)


def test_import_and_help_do_not_load_torch() -> None:
    code = """
import json, sys
heavy = ("torch", "torchvision", "matplotlib.pyplot", "matplotlib")
import featviz
after_import = [m for m in heavy if m in sys.modules]
import featviz.cli.main
for args in [["--help"]] + [[name, "--help"] for name in sorted(featviz.cli.main.main.commands)]:
    try:
        featviz.cli.main.main(args, prog_name="featviz", standalone_mode=False)
    except SystemExit:
        pass
print(json.dumps({"import": after_import, "help": [m for m in heavy if m in sys.modules]}))
"""
    done = _run([sys.executable, "-c", code])
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"import": [], "help": []}
    assert "Usage: featviz show" in done.stdout and "--layer" in done.stdout


def test_every_public_name_resolves() -> None:
    """``featviz.__all__`` is what the lazy ``__getattr__`` promises: each name loads, and each is
    the object of the module the reference docs point at."""
    import featviz

    for name in featviz.__all__:
        value = getattr(featviz, name)
        assert value is not None, name
    assert featviz.optimize_layer.__module__ == "featviz.optimize.api"
    assert featviz.Visualizer.__module__ == "featviz.output.pipeline"


def test_installed_entry_point_runs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = _run([_featviz_executable(), "show", "sample_images/chelsea.jpg", "--weights", "none", "--layer", "0",
                 "--out", str(out)], cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    listed = done.stdout.splitlines()
    assert all(Path(line).is_file() for line in listed)
    folder = out / "chelsea" / "features.0"
    assert {str(folder / name) for name in ("grid.png", "spatial_attention.png", "channel_attention.png",
                                            "summary.json")} <= set(listed)
    assert {str(folder / "channels" / f"{c:04d}.png") for c in range(64)} <= set(listed)

    version = _run([_featviz_executable(), "--version"])
    assert version.returncode == 0 and featviz.__version__ in version.stdout


def test_python_m_featviz_runs(tmp_path: Path, cat_photo: Path, tests_on_path: None) -> None:
    done = _run([sys.executable, "-m", "featviz", "show", str(cat_photo), "--model", "tinymodels:tiny_features",
                 "--layer", "3", "--size", "8", "--json", "--out", str(tmp_path)])
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["ok"] == 1
    assert all(Path(f).is_file() for f in document["results"][0]["files"])


def test_a_user_error_in_a_real_process_is_one_line(tmp_path: Path) -> None:
    done = _run([_featviz_executable(), "show", "x.jpg", "--channels", "0-x", "--out", str(tmp_path)])
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and done.stdout == ""
    lines = done.stderr.splitlines()
    assert lines[0] == "Error: cannot read channel selection '0-x'"
    assert len(lines) == 2 and lines[1].startswith("Hint:")
