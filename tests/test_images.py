"""Tests for featviz.inputs.images: every odd image a user may have, and every way inputs are named."""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
from PIL import Image

from featviz.errors import ImageError
from featviz.inputs.discover import FoundImages, InputImage, find_images
from featviz.inputs.images import DEFAULT_MAX_PIXELS, load_image

pytestmark = pytest.mark.filterwarnings("error")

GREY = (128, 128, 128)
RED = (255, 0, 0)
BLUE = (0, 0, 255)


def close_to(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 6) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


def stored_mode(path: Path) -> str:
    """The mode PIL opens the file in: proves the fixture really exercises that mode."""
    with Image.open(path) as stored:
        return stored.mode


def check_rgb(image: Image.Image, size: tuple[int, int]) -> None:
    """What every caller relies on: RGB, 8-bit, the right size, usable after the file closed."""
    assert image.mode == "RGB"
    assert image.size == size
    assert np.asarray(image).dtype == np.uint8


# --------------------------------------------------------------------------------------------
# load_image: good images
# --------------------------------------------------------------------------------------------


def test_plain_rgb_png(tmp_path: Path) -> None:
    path = tmp_path / "plain.png"
    Image.new("RGB", (5, 4), (10, 20, 30)).save(path)
    image = load_image(path)
    check_rgb(image, (5, 4))
    assert image.getpixel((0, 0)) == (10, 20, 30)


def test_accepts_str_path(tmp_path: Path) -> None:
    path = tmp_path / "plain.png"
    Image.new("RGB", (3, 3), RED).save(path)
    check_rgb(load_image(str(path)), (3, 3))


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    path = tmp_path / "deep.png"
    values = np.array([[0, 32768, 65535, 1000]], dtype=np.uint16)
    Image.fromarray(values).save(path)
    assert stored_mode(path).startswith("I")
    image = load_image(path)
    check_rgb(image, (4, 1))
    assert image.getpixel((0, 0)) == (0, 0, 0)
    assert image.getpixel((1, 0)) == (128, 128, 128)
    assert image.getpixel((2, 0)) == (255, 255, 255)
    assert image.getpixel((3, 0)) == (4, 4, 4)  # 1000 * 255 / 65535 = 3.9, clipping gives 255


@pytest.mark.parametrize("mode", ["I;16", "I;16B"])
def test_sixteen_bit_modes_in_tiff(tmp_path: Path, mode: str) -> None:
    path = tmp_path / f"deep-{mode.replace(';', '')}.tif"
    dtype = "<u2" if mode == "I;16" else ">u2"
    raw = np.array([[0, 32768, 65535]], dtype=dtype).tobytes()
    Image.frombytes(mode, (3, 1), raw).save(path)
    assert stored_mode(path) == mode
    image = load_image(path)
    assert [image.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_thirty_two_bit_integer_tiff_uses_sixteen_bit_scale(tmp_path: Path) -> None:
    path = tmp_path / "int.tif"
    Image.fromarray(np.array([[0, 65535, 70000, -5]], dtype=np.int32)).save(path)
    assert stored_mode(path) == "I"
    image = load_image(path)
    assert [image.getpixel((x, 0))[0] for x in range(4)] == [0, 255, 255, 0]


def test_float_tiff_in_unit_range(tmp_path: Path) -> None:
    path = tmp_path / "float.tif"
    Image.fromarray(np.array([[0.0, 0.5, 1.0, np.nan]], dtype=np.float32)).save(path)
    assert stored_mode(path) == "F"
    image = load_image(path)
    check_rgb(image, (4, 1))
    assert [image.getpixel((x, 0))[0] for x in range(4)] == [0, 128, 255, 0]


def test_float_tiff_above_one_uses_sixteen_bit_scale(tmp_path: Path) -> None:
    path = tmp_path / "float16.tif"
    Image.fromarray(np.array([[0.0, 32768.0, 65535.0]], dtype=np.float32)).save(path)
    image = load_image(path)
    assert [image.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_cmyk_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "print.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(path, quality=95)
    assert stored_mode(path) == "CMYK"
    image = load_image(path)
    check_rgb(image, (16, 16))
    assert close_to(image.getpixel((8, 8)), RED)


def test_palette_png_with_transparency(tmp_path: Path) -> None:
    path = tmp_path / "palette.png"
    image = Image.new("P", (2, 1))
    image.putpalette([0, 255, 0, 255, 0, 0] + [0] * (254 * 3))
    image.putpixel((0, 0), 0)
    image.putpixel((1, 0), 1)
    image.save(path, transparency=0)
    assert stored_mode(path) == "P"
    loaded = load_image(path)
    assert loaded.getpixel((0, 0)) == GREY
    assert loaded.getpixel((1, 0)) == RED


def test_palette_png_without_transparency(tmp_path: Path) -> None:
    path = tmp_path / "palette.png"
    Image.new("RGB", (4, 4), BLUE).convert("P").save(path)
    assert load_image(path).getpixel((1, 1)) == BLUE


def test_rgba_png_composited_over_grey(tmp_path: Path) -> None:
    path = tmp_path / "alpha.png"
    image = Image.new("RGBA", (3, 1))
    image.putdata([(255, 0, 0, 0), (255, 0, 0, 255), (0, 0, 255, 128)])
    image.save(path)
    loaded = load_image(path)
    check_rgb(loaded, (3, 1))
    assert loaded.getpixel((0, 0)) == GREY
    assert loaded.getpixel((1, 0)) == RED
    assert close_to(loaded.getpixel((2, 0)), (64, 64, 191), tolerance=2)


def test_la_png(tmp_path: Path) -> None:
    path = tmp_path / "la.png"
    image = Image.new("LA", (2, 1))
    image.putdata([(200, 0), (200, 255)])
    image.save(path)
    loaded = load_image(path)
    assert loaded.getpixel((0, 0)) == GREY
    assert loaded.getpixel((1, 0)) == (200, 200, 200)


@pytest.mark.parametrize(
    ("mode", "colour", "expected"),
    [
        ("L", 77, (77, 77, 77)),
        ("1", 1, (255, 255, 255)),
        ("LAB", (255, 128, 128), (255, 255, 255)),
        ("CMYK", (255, 0, 255, 0), (0, 255, 0)),
    ],
)
def test_other_modes_from_tiff(
    tmp_path: Path, mode: str, colour: int | tuple[int, ...], expected: tuple[int, int, int]
) -> None:
    path = tmp_path / "mode.tif"
    Image.new(mode, (2, 2), colour).save(path)
    assert stored_mode(path) == mode
    assert close_to(load_image(path).getpixel((1, 1)), expected, tolerance=3)


@pytest.mark.parametrize(
    ("mode", "colour", "expected"),
    [
        ("YCbCr", (76, 85, 255), RED),
        ("HSV", (170, 255, 255), BLUE),
        ("RGBa", (0, 0, 0, 0), GREY),
        ("La", (0, 0), GREY),
        ("PA", (0, 0), GREY),
        ("RGBX", (1, 2, 3, 0), (1, 2, 3)),
    ],
)
def test_modes_no_file_format_yields(
    mode: str, colour: tuple[int, ...], expected: tuple[int, int, int]
) -> None:
    """PIL decodes these to other modes when reading files, so check the conversion itself."""
    from featviz.inputs.images import _to_rgb

    image = _to_rgb(Image.new(mode, (2, 2), colour), "memory")
    check_rgb(image, (2, 2))
    assert close_to(image.getpixel((1, 1)), expected, tolerance=3)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    path = tmp_path / "rotated.jpg"
    stored = Image.new("RGB", (40, 20), (0, 0, 0))
    stored.paste(RED, (0, 0, 8, 8))  # mark the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    stored.save(path, exif=exif.tobytes(), quality=95)
    image = load_image(path)
    check_rgb(image, (20, 40))
    assert close_to(image.getpixel((16, 3)), RED, tolerance=30)  # now the top-right corner
    assert close_to(image.getpixel((3, 3)), (0, 0, 0), tolerance=30)


def test_animated_gif_gives_first_frame(tmp_path: Path) -> None:
    path = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (6, 6), colour) for colour in (RED, BLUE, (0, 255, 0))]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    with Image.open(path) as stored:
        assert getattr(stored, "n_frames", 1) == 3
    image = load_image(path)
    check_rgb(image, (6, 6))
    assert image.getpixel((3, 3)) == RED


def test_animated_png_gives_first_frame(tmp_path: Path) -> None:
    path = tmp_path / "anim.png"
    frames = [Image.new("RGB", (6, 6), colour) for colour in (BLUE, RED)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50)
    assert load_image(path).getpixel((3, 3)) == BLUE


@pytest.mark.parametrize("size", [(1, 1), (3000, 8), (8, 3000)])
def test_extreme_shapes(tmp_path: Path, size: tuple[int, int]) -> None:
    path = tmp_path / "shape.png"
    Image.new("RGB", size, RED).save(path)
    check_rgb(load_image(path), size)


@pytest.mark.parametrize("name", ["with space.png", "chat noir é.png", "猫 写真.png", "Ωm.jpg"])
def test_unusual_file_names(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    Image.new("RGB", (4, 4), RED).save(path)
    check_rgb(load_image(path), (4, 4))


def test_file_is_closed_and_image_usable_afterwards(tmp_path: Path) -> None:
    path = tmp_path / "plain.png"
    Image.new("RGB", (4, 4), RED).save(path)
    image = load_image(path)
    path.unlink()  # would fail on Windows if still open; either way pixels must be in memory
    assert image.resize((2, 2)).getpixel((0, 0)) == RED


def test_extension_does_not_matter(tmp_path: Path) -> None:
    path = tmp_path / "actually-a-png.jpg"
    Image.new("RGB", (4, 4), RED).save(path, format="PNG")
    assert load_image(path).getpixel((0, 0)) == RED


# --------------------------------------------------------------------------------------------
# load_image: bad inputs
# --------------------------------------------------------------------------------------------


def noise(size: tuple[int, int]) -> Image.Image:
    """Incompressible pixels, so that cutting the file surely cuts into pixel data."""
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def png_header_only(path: Path, width: int, height: int) -> None:
    """A valid, tiny PNG whose header claims a huge 1-bit image: the decompression bomb shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * 64)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels)
    path.write_bytes(png + chunk(b"IEND", b""))


def make_truncated_jpeg(path: Path) -> None:
    noise((256, 256)).save(path, quality=90)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def make_truncated_png(path: Path) -> None:
    noise((256, 256)).save(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def make_empty(path: Path) -> None:
    path.write_bytes(b"")


def make_random_bytes(path: Path) -> None:
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())


def make_text(path: Path) -> None:
    path.write_text("this is not a picture\nreally not\n")


def make_png_header_only(path: Path) -> None:
    path.write_bytes(b"\x89PNG\r\n\x1a\n")


def make_directory(path: Path) -> None:
    path.mkdir()


def make_nothing(path: Path) -> None:
    pass


def make_bomb_between_limits(path: Path) -> None:
    png_header_only(path, 12_000, 12_000)  # 144M pixels: PIL only warns, featviz refuses


def make_bomb_over_hard_limit(path: Path) -> None:
    png_header_only(path, 20_000, 20_000)  # 400M pixels: PIL itself raises


BAD_FILES: dict[str, tuple[str, Callable[[Path], None], str]] = {
    "truncated-jpeg": ("cut.jpg", make_truncated_jpeg, "truncated or corrupt"),
    "truncated-png": ("cut.png", make_truncated_png, "truncated or corrupt"),
    "empty": ("empty.png", make_empty, "empty file"),
    "random-bytes": ("noise.jpg", make_random_bytes, "not a readable image"),
    "text-named-png": ("notes.png", make_text, "not a readable image"),
    "png-signature-only": ("stub.png", make_png_header_only, ""),
    "directory": ("folder.png", make_directory, "folder"),
    "missing": ("missing.png", make_nothing, "no such file"),
    "bomb-warning-range": ("bomb1.png", make_bomb_between_limits, "too large"),
    "bomb-hard-limit": ("bomb2.png", make_bomb_over_hard_limit, "too large"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_files_raise_one_line_image_error(tmp_path: Path, case: str) -> None:
    name, make, phrase = BAD_FILES[case]
    path = tmp_path / name
    make(path)
    with pytest.raises(ImageError) as caught:
        load_image(path)
    message = str(caught.value)
    assert "\n" not in message and "\r" not in message
    assert message.startswith(f"{path}: ")
    assert name in message
    assert phrase in message


def test_bomb_header_checked_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "small.png"
    Image.new("RGB", (20, 20), RED).save(path)
    with pytest.raises(ImageError, match="too large"):
        load_image(path, max_pixels=399)
    check_rgb(load_image(path, max_pixels=400), (20, 20))


def test_real_one_bit_bomb_is_small_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    make_bomb_between_limits(path)
    assert path.stat().st_size < 1000
    assert 12_000 * 12_000 > DEFAULT_MAX_PIXELS
    with pytest.raises(ImageError, match=r"^.*bomb\.png: too large"):
        load_image(path)


def test_pil_globals_untouched(tmp_path: Path) -> None:
    from PIL import ImageFile

    before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
    path = tmp_path / "small.png"
    Image.new("RGB", (20, 20), RED).save(path)
    load_image(path, max_pixels=10**12)
    with pytest.raises(ImageError):
        load_image(path, max_pixels=10)
    assert (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES) == before


def test_permission_error_is_an_image_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Root can read anything, so simulate the refusal where featviz opens the file."""
    import featviz.inputs.images

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    # featviz opens with os.open (O_NONBLOCK, so that a FIFO cannot block it: issue 20 item 3)
    monkeypatch.setattr(featviz.inputs.images.os, "open", refuse)
    with pytest.raises(ImageError, match=r"locked\.png: permission denied$"):
        load_image(tmp_path / "locked.png")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs a non-root POSIX user")
def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "secret.png"
    Image.new("RGB", (2, 2)).save(path)
    path.chmod(0)
    try:
        with pytest.raises(ImageError, match="permission denied"):
            load_image(path)
    finally:
        path.chmod(0o644)


# --------------------------------------------------------------------------------------------
# find_images
# --------------------------------------------------------------------------------------------


def write_png(path: Path, colour: tuple[int, int, int] = RED) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), colour).save(path, format="PNG")
    return path


def write_jpeg(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), BLUE).save(path, format="JPEG")
    return path


def keys(found: FoundImages) -> list[str]:
    return [str(image.key) for image in found.images]


def assert_safe_keys(found: FoundImages) -> None:
    all_keys = [image.key for image in found.images]
    assert len(set(all_keys)) == len(all_keys)
    assert all_keys == sorted(all_keys, key=lambda key: key.parts)
    for key in all_keys:
        assert isinstance(key, PurePosixPath)
        assert str(key) not in ("", ".")
        assert not key.is_absolute()
        assert ".." not in key.parts and "." not in key.parts


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A folder with everything a real photo folder accumulates."""
    root = tmp_path / "data"
    write_png(root / "a.png")
    write_jpeg(root / "b.jpg")
    write_png(root / "no_extension")
    write_jpeg(root / "wrong.txt")
    write_png(root / ".hidden.png")
    write_png(root / ".thumbs" / "x.png")
    (root / "notes.txt").write_text("not an image")
    (root / "empty.png").write_bytes(b"")
    write_png(root / "sub" / "c.png")
    write_png(root / "sub" / "deeper" / "d.png")
    (root / "sub" / "readme.md").write_text("# hi")
    return root


def test_folder_not_recursive(tree: Path) -> None:
    found = find_images([str(tree)])
    # empty.png is named like an image, so it is kept and will be reported as an error
    assert keys(found) == ["a", "b", "empty", "no_extension", "wrong"]
    assert [image.path for image in found.images] == [
        tree / "a.png",
        tree / "b.jpg",
        tree / "empty.png",
        tree / "no_extension",
        tree / "wrong.txt",
    ]
    assert found.skipped_hidden == 1  # .hidden.png; .thumbs would not be entered anyway
    assert found.skipped_not_image == 1  # notes.txt
    assert found.missing == []
    assert_safe_keys(found)


def test_folder_recursive(tree: Path) -> None:
    found = find_images([str(tree)], recursive=True)
    assert keys(found) == ["a", "b", "empty", "no_extension", "sub/c", "sub/deeper/d", "wrong"]
    assert found.skipped_hidden == 2  # .hidden.png and .thumbs/
    assert found.skipped_not_image == 2  # notes.txt, sub/readme.md
    assert_safe_keys(found)


def test_found_images_load(tree: Path) -> None:
    for image in find_images([str(tree)], recursive=True).images:
        if image.path.name == "empty.png":  # kept so that the batch reports it
            with pytest.raises(ImageError, match="empty.png: empty file"):
                load_image(image.path)
        else:
            check_rgb(load_image(image.path), (4, 4))


def test_symlink_loop_terminates(tmp_path: Path) -> None:
    root = tmp_path / "loop"
    write_png(root / "a.png")
    write_png(root / "sub" / "b.png")
    (root / "sub" / "back").symlink_to(root, target_is_directory=True)
    (root / "self").symlink_to(root / "sub", target_is_directory=True)
    found = find_images([str(root)], recursive=True)
    assert keys(found) == ["a", "self/b"]  # "self" sorts before "sub" and is walked first
    assert_safe_keys(found)


def test_symlinked_folder_outside_is_followed(tmp_path: Path) -> None:
    write_png(tmp_path / "elsewhere" / "far.png")
    root = tmp_path / "root"
    write_png(root / "near.png")
    (root / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    assert keys(find_images([str(root)], recursive=True)) == ["link/far", "near"]


def test_glob(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_png(tmp_path / "one.png")
    write_png(tmp_path / "two.png")
    write_png(tmp_path / "deep" / "three.png")
    (tmp_path / "folder.png").mkdir()  # a directory matching the glob is skipped
    (tmp_path / "text.png").write_text("explicit matches are kept, to fail visibly later")
    found = find_images(["*.png", "**/three.png", "nothing*.gif"])
    assert keys(found) == ["deep/three", "one", "text", "two"]
    assert found.missing == ["nothing*.gif"]


def test_existing_name_with_glob_characters_is_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write_png(tmp_path / "shot[1].png")
    assert keys(find_images(["shot[1].png"])) == ["shot[1]"]


def test_stdin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_png(tmp_path / "a.png")
    write_png(tmp_path / "my photos" / "chat é.png")
    stream = io.StringIO("a.png\n\n   \nmy photos/chat é.png\r\nghost.png\n")
    found = find_images(["-"], stdin=stream)
    assert keys(found) == ["a", "my photos/chat é"]
    assert found.missing == ["ghost.png"]


def test_explicit_files_taken_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_png(tmp_path / ".secret.png")
    (tmp_path / "notes.txt").write_text("not an image")
    found = find_images([".secret.png", "notes.txt"])
    assert keys(found) == [".secret", "notes"]
    assert found.skipped_hidden == 0 and found.skipped_not_image == 0


def test_same_relative_name_under_two_folders(tmp_path: Path) -> None:
    write_png(tmp_path / "d1" / "cat.png")
    write_png(tmp_path / "d2" / "cat.png")
    found = find_images([str(tmp_path / "d2"), str(tmp_path / "d1")])
    assert found.images == [
        InputImage(tmp_path / "d1" / "cat.png", PurePosixPath("cat")),
        InputImage(tmp_path / "d2" / "cat.png", PurePosixPath("cat~2")),
    ]


def test_same_stem_in_one_folder(tmp_path: Path) -> None:
    write_png(tmp_path / "cat.png")
    write_jpeg(tmp_path / "cat.jpg")
    write_png(tmp_path / "cat~2.png")
    found = find_images([str(tmp_path)])
    by_key = {str(image.key): image.path.name for image in found.images}
    assert by_key == {"cat": "cat.jpg", "cat~2": "cat~2.png", "cat~3": "cat.png"}
    assert_safe_keys(found)


def test_duplicates_by_resolved_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_png(tmp_path / "data" / "a.png")
    (tmp_path / "alias.png").symlink_to(tmp_path / "data" / "a.png")
    found = find_images(["data", "data/a.png", "./data/../data/a.png", "alias.png"])
    assert keys(found) == ["a"]


def test_missing_inputs_reported(tmp_path: Path) -> None:
    write_png(tmp_path / "real.png")
    ghost = str(tmp_path / "ghost.png")
    found = find_images([ghost, str(tmp_path / "real.png"), str(tmp_path / "nope" / "*.jpg")])
    assert found.missing == [ghost, str(tmp_path / "nope" / "*.jpg")]
    assert len(found.images) == 1


def test_keys_inside_and_outside_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "work"
    write_png(work / "in" / "cat.png")
    outside = write_png(tmp_path / "outside" / "dog.png")
    monkeypatch.chdir(work)
    found = find_images(["in/cat.png", "../outside/dog.png", str(outside.with_name("*.png"))])
    expected_outside = PurePosixPath(*outside.with_suffix("").parts[1:])
    assert [image.key for image in found.images] == sorted(
        [PurePosixPath("in/cat"), expected_outside], key=lambda key: key.parts
    )
    assert_safe_keys(found)


def test_order_of_inputs_does_not_change_result(tree: Path) -> None:
    extra = write_png(tree.parent / "other" / "a.png")
    first = find_images([str(tree), str(extra.parent)], recursive=True)
    second = find_images([str(extra.parent), str(tree)], recursive=True)
    assert first.images == second.images


def test_hidden_root_folder_is_walked(tmp_path: Path) -> None:
    write_png(tmp_path / ".cache" / "a.png")
    assert keys(find_images([str(tmp_path / ".cache")])) == ["a"]


def test_unicode_and_spaces_in_folders(tmp_path: Path) -> None:
    write_png(tmp_path / "Fotos 2024" / "Bär am Fluss.png")
    write_png(tmp_path / "Fotos 2024" / "東京" / "夜.png")
    found = find_images([str(tmp_path / "Fotos 2024")], recursive=True)
    assert keys(found) == ["Bär am Fluss", "東京/夜"]
