"""featviz.output.png: every picture featviz writes goes through this encoder, so it is checked against
two independent readers (Pillow, and a by-hand chunk parser with zlib and a cumulative sum)."""

from __future__ import annotations

import io
import platform
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from featviz.output import png

MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


def pictures() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    ramp = np.add.outer(np.arange(61), np.arange(47)).astype(np.uint8)
    return [
        rng.integers(0, 256, (33, 29), dtype=np.uint8),  # noise: every byte value, wrap-around
        ramp,  # smooth, like an upsampled feature map
        rng.integers(0, 256, (17, 23, 3), dtype=np.uint8),
        rng.integers(0, 256, (5, 9, 4), dtype=np.uint8),
        rng.integers(0, 256, (8, 6, 2), dtype=np.uint8),
        np.full((1, 1), 200, np.uint8),
        rng.integers(0, 256, (1, 300), dtype=np.uint8),
        rng.integers(0, 256, (300, 1, 3), dtype=np.uint8),
    ]


def decode_by_hand(data: bytes) -> np.ndarray:
    """A reader written from the PNG specification for what the encoder claims to write."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position, chunks = 8, []
    while position < len(data):
        (length,) = struct.unpack(">I", data[position:position + 4])
        kind = data[position + 4:position + 8]
        body = data[position + 8:position + 8 + length]
        (crc,) = struct.unpack(">I", data[position + 8 + length:position + 12 + length])
        assert crc == zlib.crc32(kind + body), f"bad CRC in {kind!r}"
        chunks.append((kind, body))
        position += 12 + length
    kinds = [kind for kind, _ in chunks]
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and set(kinds[1:-1]) == {b"IDAT"}
    width, height, depth, color, *_ = struct.unpack(">IIBBBBB", chunks[0][1])
    samples = {0: 1, 4: 2, 2: 3, 6: 4}[color]
    assert depth == 8
    raw = np.frombuffer(zlib.decompress(b"".join(body for _, body in chunks[1:-1])), np.uint8)
    lines = raw.reshape(height, 1 + width * samples)
    assert set(lines[:, 0]) <= {png.FILTER_UP}
    rows = np.cumsum(lines[:, 1:].astype(np.uint64), axis=0) % 256  # undo "minus the row above"
    shape = (height, width) if samples == 1 else (height, width, samples)
    return rows.astype(np.uint8).reshape(shape)


@pytest.fixture(params=["isal", "zlib"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "isal" and png.ISAL is None:
        pytest.skip("isal is not installed on this platform")
    if request.param == "zlib":
        monkeypatch.setattr(png, "ISAL", None)
    return request.param


@pytest.mark.parametrize("level", [0, 1, 3, 6, 9])
def test_round_trip_through_pillow_and_by_hand(backend: str, level: int) -> None:
    for pixels in pictures():
        data = png.encode_png(pixels, level)
        decoded = Image.open(io.BytesIO(data))
        decoded.load()
        samples = 1 if pixels.ndim == 2 else pixels.shape[2]
        assert decoded.mode == MODES[samples]
        assert np.array_equal(np.asarray(decoded), pixels)
        assert np.array_equal(decode_by_hand(data), pixels)
    assert png.deflate_backend(level) == (backend if level in (1, 2, 3) else "zlib")


def test_isal_is_installed_where_it_has_wheels() -> None:
    """The install step (pyproject's platform marker) must bring ISA-L on these machines."""
    if platform.machine() in {"x86_64", "AMD64", "aarch64", "arm64"}:
        assert png.ISAL is not None
        assert png.deflate_backend(1) == "isal"


def test_pil_images_of_every_mode() -> None:
    rng = np.random.default_rng(1)
    rgb = Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))
    for image in (rgb, rgb.convert("L"), rgb.convert("RGBA"), rgb.convert("LA"), rgb.convert("P"),
                  rgb.convert("1"), rgb.convert("I;16")):
        decoded = Image.open(io.BytesIO(png.encode_png(image, 1)))
        assert decoded.size == image.size
        assert np.array_equal(np.asarray(decoded), np.asarray(image)), image.mode


def test_large_pictures_split_into_several_idat_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(png, "IDAT_LIMIT", 100)
    pixels = np.random.default_rng(2).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    data = png.encode_png(pixels, 1)
    assert data.count(b"IDAT") > 10
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), pixels)
    assert np.array_equal(decode_by_hand(data), pixels)


def test_views_and_non_contiguous_arrays() -> None:
    pixels = np.random.default_rng(3).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    for view in (pixels[::2, ::3], pixels[5:9, :, 1], np.asfortranarray(pixels[:, :, 0])):
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(png.encode_png(view)))), view)


@pytest.mark.parametrize("bad", [np.zeros((4, 4), np.float32), np.zeros((4, 4, 5), np.uint8),
                                 np.zeros((0, 4), np.uint8), np.zeros(4, np.uint8)])
def test_refuses_what_it_cannot_store(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        png.encode_png(bad)
    with pytest.raises(ValueError):
        png.encode_png(np.zeros((2, 2), np.uint8), level=10)


def test_feature_map_files_about_as_small_as_pillows() -> None:
    """One filter for the whole picture must not cost much size on smooth maps (what featviz
    writes): within 15 % of Pillow's adaptive per-row filters at the same zlib level."""
    import torch

    maps = torch.rand(1, 16, 13, 13, generator=torch.Generator().manual_seed(0))
    up = torch.nn.functional.interpolate(maps, size=(256, 256), mode="bilinear", align_corners=True)[0]
    tiles = (up * 255).round().to(torch.uint8).numpy()
    ours = sum(len(png.encode_png(tile, 1)) for tile in tiles)
    buffer_sizes = []
    for tile in tiles:
        buffer = io.BytesIO()
        Image.fromarray(tile).save(buffer, format="PNG", compress_level=1)
        buffer_sizes.append(len(buffer.getvalue()))
    assert ours <= 1.15 * sum(buffer_sizes)
