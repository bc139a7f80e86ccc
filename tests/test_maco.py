"""MACO (issue 19): the magnitude spectrum kept, determinism, the spectrum command against numpy,
resampling, bad --spectrum refused before any step, and MACO on the trained example."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from examplescripts import cbam_conv2
from featviz.capture.layers import resolve_layers
from featviz.cli.main import main
from featviz.optimize.engine import OptimizeSettings, activation_of, optimize
from featviz.optimize.maco import MACO_LR, MACOImage
from featviz.optimize.spectrum import default_spectrum, load_spectrum, resample
from tinymodels import TinyFeatures

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one thread

ROOT = Path(__file__).resolve().parent.parent
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Lucid's colour matrix, restated (lucid/optvis/param/color.py): RGB = M_norm @ decorrelated
LUCID_SVD_SQRT = np.array([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
LUCID_NORMALIZED = LUCID_SVD_SQRT / np.max(np.linalg.norm(LUCID_SVD_SQRT, axis=0))


def smooth_photo(seed: int, height: int, width: int) -> np.ndarray:
    """A photo-like uint8 (H, W, 3): blurred noise plus a colour gradient."""
    rng = np.random.default_rng(seed)
    noise = rng.random((height // 4 + 1, width // 4 + 1, 3))
    big = np.asarray(Image.fromarray((noise * 255).astype(np.uint8)).resize((width, height), Image.BICUBIC),
                     dtype=np.float64)
    ramp = np.linspace(0, 60, width)[None, :, None]
    return np.clip(big * 0.7 + ramp, 0, 255).astype(np.uint8)


def photo_folder(folder: Path, sizes: list[tuple[int, int]], corrupt: bool = False) -> list[np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    arrays = []
    for i, (height, width) in enumerate(sizes):
        array = smooth_photo(i, height, width)
        Image.fromarray(array).save(folder / f"photo{i}.png")
        arrays.append(array)
    if corrupt:  # a PNG cut in half: PIL identifies it, decoding fails
        whole = (folder / "photo0.png").read_bytes()
        (folder / "zbroken.png").write_bytes(whole[: len(whole) // 2])
    return arrays


def numpy_spectra(arrays: list[np.ndarray], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Independent: centre crop (size already the shorter side), /255, |rfft2 ortho|, mean; the
    decorrelated one through the inverse of Lucid's normalised matrix."""
    rgb_sum, dec_sum = 0.0, 0.0
    inverse = np.linalg.inv(LUCID_NORMALIZED)
    for array in arrays:
        height, width, _ = array.shape
        top, left = (height - size) // 2, (width - size) // 2
        x = array[top:top + size, left:left + size].astype(np.float64).transpose(2, 0, 1) / 255.0
        rgb_sum = rgb_sum + np.abs(np.fft.rfft2(x, norm="ortho"))
        dec = np.einsum("cr,rhw->chw", inverse, x)
        dec_sum = dec_sum + np.abs(np.fft.rfft2(dec, norm="ortho"))
    return rgb_sum / len(arrays), dec_sum / len(arrays)


def test_the_spectrum_command_equals_numpy_and_goes_on_past_a_corrupt_photo(tmp_path: Path) -> None:
    arrays = photo_folder(tmp_path / "photos", [(40, 40), (40, 48), (48, 40)], corrupt=True)
    out = tmp_path / "spectrum.npz"
    result = CliRunner().invoke(main, ["spectrum", str(tmp_path / "photos"), "--size", "40", "--out", str(out)])
    assert result.exit_code == 1, result.output  # one photo failed: exit 1, as a batch export
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "zbroken.png" in errors[0] and "Traceback" not in result.output
    spectrum = load_spectrum(out)
    assert spectrum.size == 40 and spectrum.count == 3
    assert spectrum.sources == ["photo0", "photo1", "photo2"]
    rgb, dec = numpy_spectra(arrays, 40)
    np.testing.assert_allclose(spectrum.rgb, rgb, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(spectrum.decorrelated, dec, rtol=1e-5, atol=1e-6)
    with np.load(out, allow_pickle=False) as data:  # nothing pickled: it loads without pickle
        assert sorted(data.files) == ["count", "decorrelated", "rgb", "size", "sources"]


def test_photos_are_resized_by_the_shorter_side_and_centre_cropped(tmp_path: Path) -> None:
    """torchvision's rule restated with PIL: the shorter side to S (bilinear; PIL antialiases),
    the longer to int(S * long / short), the centre crop at round((long - S) / 2)."""
    arrays = photo_folder(tmp_path / "photos", [(48, 64), (64, 64)])
    out = tmp_path / "s.npz"
    assert CliRunner().invoke(main, ["spectrum", str(tmp_path / "photos"), "--size", "32", "--out", str(out),
                                     "-q"]).exit_code == 0
    resized = []
    for array in arrays:
        height, width, _ = array.shape
        new = (int(32 * width / height), 32) if width > height else (32, 32)
        small = np.asarray(Image.fromarray(array).resize(new, Image.BILINEAR))
        left = int(round((new[0] - 32) / 2))
        resized.append(small[:, left:left + 32])
    rgb, dec = numpy_spectra(resized, 32)
    spectrum = load_spectrum(out)
    np.testing.assert_allclose(spectrum.rgb, rgb, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(spectrum.decorrelated, dec, rtol=1e-5, atol=1e-6)


def test_a_spectrum_of_nothing_readable_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(main, ["spectrum", str(tmp_path / "empty"), "--out", str(tmp_path / "s.npz")])
    assert result.exit_code == 2 and "no image found" in result.output and "Hint:" in result.output
    result = CliRunner().invoke(main, ["spectrum", str(tmp_path), "--size", "4", "--out", str(tmp_path / "s.npz")])
    assert result.exit_code == 2 and "--size 4" in result.output
    assert not (tmp_path / "s.npz").exists()
    photo_folder(tmp_path / "photos", [(16, 16)])
    (tmp_path / "file").write_text("")
    for out, words in [(tmp_path / "photos", "is a folder"), (tmp_path / "file" / "s.npz", "is a file, not a folder")]:
        result = CliRunner().invoke(main, ["spectrum", str(tmp_path / "photos"), "--size", "16", "--out", str(out)])
        assert result.exit_code == 2 and words in result.output and "Hint:" in result.output, result.output


def test_resampling_keeps_the_bins_in_cycles_per_image() -> None:
    source = torch.rand(3, 16, 9, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 0.1
    source = (source + source[:, (-torch.arange(16)) % 16, :]) / 2  # a real image's symmetry in every column
    small = resample(source, 8)
    for ky in range(-4, 4):
        for kx in range(5):
            expected = float(source[1, ky % 16, kx]) * 8 / 16
            assert float(small[1, ky % 8, kx]) == pytest.approx(expected, rel=1e-6)
    same = resample(source, 16)
    torch.testing.assert_close(same.double(), source, rtol=1e-6, atol=1e-7)
    large = resample(source, 32)  # beyond the band: the edge value times |k_edge| / |k| (1/f)
    assert float(large[0, 0, 16]) == pytest.approx(float(source[0, 0, 8]) * 8 / 16 * 2, rel=1e-6)
    assert float(large[2, 3, 4]) == pytest.approx(float(source[2, 3, 4]) * 2, rel=1e-6)
    assert float(large[2, 32 - 12, 0]) == pytest.approx(float(source[2, 16 - 8, 0]) * 8 / 12 * 2, rel=1e-6)


def make_spectrum(tmp_path: Path, size: int) -> Path:
    photo_folder(tmp_path / "photos", [(size, size), (size, size + 8)])
    out = tmp_path / "spectrum.npz"
    result = CliRunner().invoke(main, ["spectrum", str(tmp_path / "photos"), "--size", str(size), "--out", str(out),
                                       "--quiet"])
    assert result.exit_code == 0, result.output
    return out


def tiny() -> TinyFeatures:
    torch.manual_seed(0)
    return TinyFeatures()


def run_maco(model: torch.nn.Module, seed: int = 0, **options: object) -> torch.Tensor:
    ref = resolve_layers(model, ["features.3"])[0]
    settings = OptimizeSettings(**{"steps": 8, "size": 32, "seed": seed, "param": "maco", **options})  # type: ignore[arg-type]
    return optimize(model, ref, [0, 1, 2], settings, MEAN, STD).images


def test_the_optimised_images_keep_the_magnitude_spectrum(tmp_path: Path) -> None:
    """From the engine's final pixels (float32 in (0, 1)): undo the sigmoid and the colour mix
    (numpy, Lucid's matrix), FFT: every coefficient but the mean is the file's magnitude times one
    factor per image (1 / the image's standard deviation), in all three colour planes."""
    path = make_spectrum(tmp_path, 32)
    magnitude = load_spectrum(path).decorrelated.astype(np.float64)  # (3, 32, 17)
    images = run_maco(tiny(), spectrum=str(path)).double().numpy()
    assert 0.0 < images.min() and images.max() < 1.0
    logits = np.log(images / (1 - images))
    decorrelated = np.einsum("cr,nrhw->nchw", np.linalg.inv(LUCID_NORMALIZED), logits)
    found = np.abs(np.fft.rfft2(decorrelated, norm="ortho"))  # (3 images, 3, 32, 17)
    ratio = found / magnitude
    ratio[:, :, 0, 0] = np.nan  # the DC: the mean colour, free (see featviz.optimize.maco)
    for one in ratio:
        factor = np.nanmedian(one)
        np.testing.assert_allclose(one[~np.isnan(one)], factor, rtol=2e-3)
    # and the optimisation did move the pixels: the three channels' images differ
    assert np.abs(images[0] - images[1]).max() > 0.01


def test_before_standardisation_the_spectrum_is_exactly_the_magnitude() -> None:
    magnitude = torch.rand(3, 15, 8, generator=torch.Generator().manual_seed(2)) + 0.05
    magnitude = (magnitude + magnitude[:, (-torch.arange(15)) % 15, :]) / 2
    image = MACOImage(2, 15, torch.Generator().manual_seed(1), magnitude)
    found = torch.fft.rfft2(image.decorrelated().detach(), norm="ortho").abs()
    dc = found[:, :, 0, 0].clone()
    found[:, :, 0, 0] = magnitude[:, 0, 0]
    torch.testing.assert_close(found, magnitude.expand_as(found), rtol=1e-4, atol=1e-5)
    phase = image.phase.detach()
    standard = (phase - phase.mean(dim=(1, 2, 3), keepdim=True)) / (phase.std(dim=(1, 2, 3), keepdim=True) + 1e-4)
    torch.testing.assert_close(dc, magnitude[:, 0, 0] * standard[:, :, 0, 0].cos().abs(), rtol=1e-4, atol=1e-5)


# the official chain (serre-lab/Horama, maco_fv.py maco_preconditioner and common.py), restated in numpy
HORAMA_COLOR = np.array([[0.56282854, 0.58447580, 0.58447580], [0.19482528, 0.00000000, -0.19482528],
                         [0.04329450, -0.10823626, 0.06494176]])


def official_image(magnitude: np.ndarray, phase: np.ndarray, norm: str = "backward") -> np.ndarray:
    """One image: standardise the phase, M exp(i phase), irfft2 (the official: torch's default
    norm, 1/N), standardise, flat @ Horama's matrix, sigmoid (values range (0, 1))."""
    p = (phase - phase.mean()) / (phase.std(ddof=1) + 1e-4)
    x = np.fft.irfft2(magnitude * np.cos(p) + 1j * magnitude * np.sin(p), s=phase.shape[-2:-1] * 2, norm=norm)
    x = (x - x.mean()) / (x.std(ddof=1) + 1e-4)
    return 1 / (1 + np.exp(-np.einsum("chw,cr->rhw", x, HORAMA_COLOR)))


def test_a_maco_image_is_the_official_chain_where_irfft2_drops_nothing() -> None:
    """Where the official irfft2 drops nothing (the phase already odd in the columns kx = 0 and
    H/2, with mean 0), featviz's image equals the official chain restated in numpy; only the
    normalisation of the FFT differs (ortho vs 1/N), which the standardisation removes up to its
    1e-4 guard."""
    size = 16
    rng = np.random.default_rng(5)
    magnitude = rng.random((3, size, size // 2 + 1)) + 0.05
    magnitude = (magnitude + magnitude[:, (-np.arange(size)) % size, :]) / 2  # even in every column
    phase = rng.normal(size=(2, 3, size, size // 2 + 1))
    for column in (0, size // 2):  # odd, and 0 at the self-conjugate bins
        phase[..., column] = (phase[..., column] - phase[:, :, (-np.arange(size)) % size, column]) / 2
    inner = np.ones(size // 2 + 1, dtype=bool)
    inner[[0, size // 2]] = False
    for image in phase:  # mean 0, by moving only the other columns
        image[..., inner] -= image.sum() / image[..., inner].size
    np.testing.assert_allclose(HORAMA_COLOR, LUCID_NORMALIZED.T, atol=1e-6)  # the same colour matrix
    ours = MACOImage(2, size, torch.Generator(), torch.tensor(magnitude, dtype=torch.float32))
    with torch.no_grad():
        ours.phase.copy_(torch.from_numpy(phase))
    got = ours().detach().double().numpy()
    for i in range(2):
        # the 1e-4 guard weighs 16x more on the official's 1/N-normalised image (std ~0.03 here)
        np.testing.assert_allclose(got[i], official_image(magnitude, phase[i]), atol=1e-3)
        np.testing.assert_allclose(got[i], official_image(magnitude, phase[i], "ortho"), atol=1e-5)


def test_the_same_seed_gives_the_same_pixels_and_another_seed_others() -> None:
    model = tiny()
    first, again, other = run_maco(model, 0), run_maco(model, 0), run_maco(model, 1)
    assert torch.equal(first, again)
    assert (first - other).abs().max() > 0.01


def test_the_built_in_spectrum_is_shipped_and_falls_like_natural_images() -> None:
    spectrum = default_spectrum()
    assert spectrum.size == 224 and spectrum.count == 5
    assert spectrum.sources == ["astronaut", "chelsea", "coffee", "retina", "rocket"]
    assert '"featviz.optimize" = ["natural_spectrum.npz"]' in (ROOT / "pyproject.toml").read_text()  # in the wheel
    # amplitude falls with frequency: along the first row, each octave lower than the one before
    row = spectrum.decorrelated[:, 0, :].astype(np.float64)
    octaves = [row[:, lo:2 * lo].mean(axis=1) for lo in (2, 4, 8, 16, 32, 64)]
    assert all((a > b).all() for a, b in zip(octaves, octaves[1:], strict=False))


# --- the CLI ------------------------------------------------------------------------------

def invoke(tmp_path: Path, *args: str) -> object:
    return CliRunner().invoke(main, ["optimize", "--model", "tinymodels:tiny_features", "--weights", "none",
                                     "--layer", "features.3", "--channels", "0-1", "--steps", "3", "--size", "24",
                                     "--out", str(tmp_path / "out"), "--quiet", *args])


def test_the_cli_writes_maco_pictures(tmp_path: Path) -> None:
    result = invoke(tmp_path, "--param", "maco")
    assert result.exit_code == 0, result.output
    document = json.loads((tmp_path / "out" / "features.3" / "optimize.json").read_text())
    assert document["settings"]["param"] == "maco" and document["settings"]["spectrum"] is None
    assert document["settings"]["lr"] == MACO_LR  # maco's own default; fft keeps 0.05
    assert invoke(tmp_path, "--param", "fft").exit_code == 0
    assert json.loads((tmp_path / "out" / "features.3" / "optimize.json").read_text())["settings"]["lr"] == 0.05
    with Image.open(tmp_path / "out" / "features.3" / "optimized" / "0001.png") as picture:
        assert picture.size == (24, 24)


def bad_files(tmp_path: Path) -> dict[str, Path]:
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, decorrelated=np.ones((3, 8, 8), np.float32), size=np.int64(8))
    negative = tmp_path / "negative.npz"
    np.savez(negative, decorrelated=-np.ones((3, 8, 5), np.float32), size=np.int64(8))
    text = tmp_path / "text.npz"
    text.write_text("not a spectrum")
    bare = tmp_path / "bare.npy"
    np.save(bare, np.ones((3, 8, 5), np.float32))
    return {"missing": tmp_path / "nothing.npz", "wrong": wrong, "negative": negative, "text": text, "bare": bare}


@pytest.mark.parametrize(("which", "param", "words"), [
    ("missing", "maco", "no such file"),
    ("wrong", "maco", "'decorrelated' has shape [3, 8, 8]"),
    ("negative", "maco", "negative or non-finite"),
    ("text", "maco", "not a spectrum file"),
    ("bare", "maco", "one bare array"),
    ("wrong", "fft", "--spectrum is for --param maco"),
])
def test_a_bad_spectrum_is_one_sentence_and_exit_2(tmp_path: Path, which: str, param: str, words: str) -> None:
    result = invoke(tmp_path, "--param", param, "--spectrum", str(bad_files(tmp_path)[which]))
    assert result.exit_code == 2, result.output
    assert words in result.output and "Hint:" in result.output and "Traceback" not in result.output
    assert len([line for line in result.output.splitlines() if line.startswith("Error:")]) == 1
    assert not (tmp_path / "out").exists()


# --- the trained example ------------------------------------------------------------------

def test_maco_on_the_trained_example_reaches_the_best_photo_for_most_channels() -> None:
    _, model, ref, mean, std, best_photo = cbam_conv2(32)
    settings = OptimizeSettings(steps=64, size=32, param="maco", lr=MACO_LR)
    result = optimize(model, ref, list(range(32)), settings, mean, std)
    own = activation_of(model, ref, result.images, mean, std).diagonal()
    reached = int((own >= best_photo).sum())
    assert reached >= 27, reached  # measured: 28 of 32 (fft: 32 of 32); see docs/optimize.md
