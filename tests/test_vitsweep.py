"""``featviz sweep`` with ``--vit-stats``, ``--artifacts``, ``--pca-tokens`` and ``--pca-foreground``
(issue 18): the same files with the same bytes as ``show`` for the same photos, the run's PCA
basis, the usage errors before any photo; and the every-block ``artifacts.png`` on a constructed
case (12 blocks, a photo shrunk to its panel) checked pixel by pixel.

End to end with the trained example (examples/vit_shapes.py), through click's CliRunner; the
fixtures are test_vitcli.py's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from featviz.capture.tokens import TokenLayout
from featviz.maps.tokenrun import PhotoTokenFacts
from featviz.models.preprocess import CropBox
from featviz.output.vitfiles import artifacts_overlay, panel_size
from test_vitcli import EXAMPLE, artifact_panels, held_out, invoke, outlined  # noqa: F401  (held_out: a fixture)

TOKEN_FILES = ("attention_statistics.json", "attention_statistics.png", "artifacts.json", "artifacts.png")


def test_sweep_writes_shows_files_with_the_same_bytes(held_out: Path, tmp_path: Path) -> None:  # noqa: F811
    photos = sorted(held_out.glob("*.png"))[:2]
    options = ["--layer", "blocks.1,blocks.3", "--vit-stats", "--artifacts", "2", "--pca-tokens",
               "--pca-foreground", "0"]
    swept, shown = tmp_path / "sweep", tmp_path / "show"
    result = invoke(["sweep", *photos, *EXAMPLE, *options, "--out", swept, "--json"])
    assert result.exit_code == 0, result.output
    assert invoke(["show", *photos, *EXAMPLE, *options, "--top-k", "1", "--out", shown]).exit_code == 0
    document = json.loads(result.stdout)
    assert document["ok"] == 2 and document["attention_statistics"] == str(swept / "attention_statistics.json")
    for photo, record in zip(photos, document["results"], strict=True):
        folder = swept / photo.stem
        expected = [folder / "sweep.png", folder / "blocks.1" / "pca.png",
                    *(folder / name for name in TOKEN_FILES), folder / "blocks.3" / "pca.png"]
        assert record["files"] == [str(path) for path in expected]
        for name in (*TOKEN_FILES, "blocks.1/pca.png", "blocks.3/pca.png"):
            assert (folder / name).read_bytes() == (shown / photo.stem / name).read_bytes(), name
        artifacts = json.loads((folder / "artifacts.json").read_text())
        assert artifacts["k"] == 2.0 and artifacts["drawn_blocks"] == [f"blocks.{b}" for b in range(4)]
        masked = np.asarray(Image.open(folder / "blocks.3" / "pca.png"))
        assert masked.shape == (256, 256, 3)  # sweep has no --size: show's default, 32 px per patch
        assert 0 < masked[16::32, 16::32].any(-1).sum() < 64  # --pca-foreground 0 blacked out some patches
    # the run's mean: over both photos, as show's
    assert json.loads((swept / "attention_statistics.json").read_text())["photos"] == 2
    for name in ("attention_statistics.json", "attention_statistics.png"):
        assert (swept / name).read_bytes() == (shown / name).read_bytes(), name


def test_sweep_fits_one_basis_over_all_its_photos(held_out: Path, tmp_path: Path) -> None:  # noqa: F811
    photos = sorted(held_out.glob("*.png"))[:2]
    args = [*EXAMPLE, "--layer", "blocks.2", "--pca-tokens"]
    both, alone = tmp_path / "both", tmp_path / "alone"
    result = invoke(["sweep", *photos, *args, "--out", both])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [str(both / p.stem / name) for p in photos
                                          for name in ("sweep.png", "blocks.2/pca.png")]
    assert invoke(["sweep", photos[0], *args, "--out", alone]).exit_code == 0
    # a basis fitted over the first photo alone colours it differently from the run's over both
    assert (both / photos[0].stem / "blocks.2" / "pca.png").read_bytes() != \
        (alone / photos[0].stem / "blocks.2" / "pca.png").read_bytes()
    assert not (both / "attention_statistics.json").exists()  # no --vit-stats: no run mean


@pytest.mark.parametrize(("size", "panel"), [((64, 64), (192, 192)), ((100, 50), (200, 100)), ((96, 64), (192, 128)),
                                             ((384, 200), (384, 200)), ((1000, 500), (384, 192))])
def test_panel_size_enlarges_by_a_whole_factor_and_shrinks_to_384(size: tuple[int, int],
                                                                  panel: tuple[int, int]) -> None:
    assert panel_size(size) == panel


def test_artifacts_png_outlines_each_blocks_own_patches_on_a_shrunk_photo() -> None:
    """12 blocks, block b flags patch (b // 4, b % 4) and, from block 6 on, also patch (3, 3): a
    768x512 grey photo, centre crop 512x512 (x 128..640), 4x4 patches of 128 photo px; each panel
    is the photo halved (384x256), so a patch is 64 panel px starting at x = 64 + 64c, y = 64r."""
    layout = TokenLayout(prefix=1, grid=(4, 4), patch=(16, 16))
    flags = torch.zeros(12, 4, 4, dtype=torch.bool)
    for b in range(12):
        flags[b, b // 4, b % 4] = True
        flags[b, 3, 3] = b >= 6
    facts = PhotoTokenFacts(blocks=tuple(f"blocks.{b}" for b in range(12)), layout=layout, heads=2, statistics=None,
                            norms=torch.ones(12, 17), flags=flags, artifacts=None, k=3.0)
    photo = Image.new("RGB", (768, 512), (128, 128, 128))
    drawn = np.asarray(artifacts_overlay(facts, photo, CropBox(128.0, 0.0, 640.0, 512.0), (64, 64))).astype(int)
    for b, panel in enumerate(artifact_panels(drawn, 12, (384, 256))):
        patches = [{"row": r, "col": c} for r, c in torch.nonzero(flags[b]).tolist()]
        outline = outlined((256, 384), patches, left=64, top=0, step=64)
        assert (panel[outline] == [255, 0, 255]).all(), f"block {b}"
        assert (np.abs(panel[~outline] - 128) <= 1).all(), f"block {b}"  # the rest is the (resampled) grey photo


TINY_TORCHVISION = '''
import torch
import torchvision


def build():
    torch.manual_seed(0)
    return torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                                hidden_dim=16, mlp_dim=32, num_classes=5).eval()
'''


def test_default_stages_colour_only_the_token_layers(held_out: Path, tmp_path: Path) -> None:  # noqa: F811
    """torchvision's ViT: sweep's default stages start with the patch convolution conv_proj, a
    feature map; --pca-tokens colours the two encoder layers and leaves conv_proj uncoloured. Named
    with --layer, conv_proj is refused as in show."""
    factory = tmp_path / "tinytv.py"
    factory.write_text(TINY_TORCHVISION)
    photo = held_out / "photo0.png"
    args = ["--model", f"{factory}:build", "--weights", "none", "--resize", "32", "--crop", "32", "--pca-tokens"]
    result = invoke(["sweep", photo, *args, "--out", tmp_path / "out", "--json"])
    assert result.exit_code == 0, result.output
    [record] = json.loads(result.stdout)["results"]
    assert [stage["layer"] for stage in record["stages"]] == [
        "conv_proj", "encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_1"]
    assert record["files"] == [str(tmp_path / "out" / "photo0" / name) for name in (
        "sweep.png", "encoder.layers.encoder_layer_0/pca.png", "encoder.layers.encoder_layer_1/pca.png")]
    named = invoke(["sweep", photo, *args, "--layer", "conv_proj,encoder.layers.encoder_layer_0",
                    "--out", tmp_path / "named"])
    assert named.exit_code == 2 and "layer conv_proj of" in named.stderr and "no token layer" in named.stderr


def test_a_full_disk_stops_the_sweep_with_whole_files_only(held_out: Path, tmp_path: Path,  # noqa: F811
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import os

    from featviz.output import layout

    real, room = os.write, [3000]  # sweep.png (a few kB) does not fit: the first file fails

    def filling(fd: int, data: bytes) -> int:
        if room[0] <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written = real(fd, memoryview(data)[:room[0]])
        room[0] -= written
        return written

    monkeypatch.setattr(layout.os, "write", filling)
    out = tmp_path / "out"
    result = invoke(["sweep", held_out / "photo0.png", *EXAMPLE, "--artifacts", "--out", out])
    assert result.exit_code == 1, result.output
    assert f"Error: cannot write into {out / 'photo0'} (No space left on device)" in result.stderr
    assert "Traceback" not in result.output and result.stdout == ""
    assert [p.name for p in out.rglob("*") if p.is_file()] == []  # no partial file, no temporary
