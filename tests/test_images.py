"""open_image_rgb on real files: broken ones raise BadImageError, odd ones convert with a note."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile
from salted_data import texture, write_bomb_png

from tlvision.data.images import (
    MAX_IMAGE_PIXELS,
    BadImageError,
    decode_image_rgb,
    load_rgb_image,
    open_image_rgb,
)


def rgb(image: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    pixel = image.getpixel(xy)
    assert isinstance(pixel, tuple)
    return pixel


def bad(path: Path) -> BadImageError:
    with pytest.raises(BadImageError) as caught:
        open_image_rgb(path)
    assert caught.value.path == path
    return caught.value


def test_plain_rgb_jpeg_loads_without_notes(tmp_path: Path) -> None:
    path = tmp_path / "good.jpg"
    texture(0, (64, 48)).save(path, quality=90)
    image, notes = open_image_rgb(path)
    assert (image.mode, image.size, notes) == ("RGB", (64, 48), [])
    assert load_rgb_image(path).size == (64, 48)


def test_returned_image_is_fully_loaded_and_independent_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "good.png"
    texture(1).save(path)
    image, _ = open_image_rgb(path)
    path.unlink()
    assert image.getpixel((10, 10)) == texture(1).getpixel((10, 10))


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.touch()
    error = bad(path)
    assert (error.kind, error.reason) == ("zero-byte", "zero-byte file")
    assert str(path) in str(error)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"cut.{fmt.lower()}"
    texture(2, (128, 128)).save(path, fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    error = bad(path)
    assert (error.kind, error.reason) == ("truncated", "truncated image data")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_text_file_named_jpg_is_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("these are my notes, not a picture\n")
    error = bad(path)
    assert error.kind == "not-an-image"
    assert error.reason == "not an image (cannot identify image file)"


def test_bomb_writer_makes_a_real_png(tmp_path: Path) -> None:
    path = tmp_path / "small.png"
    write_bomb_png(path, 100, 50)
    image, notes = open_image_rgb(path)
    assert image.size == (100, 50)
    assert image.getpixel((0, 0)) == (0, 0, 0)
    assert notes == ["1-bit (1) converted to RGB"]


def test_decompression_bomb_over_twice_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    write_bomb_png(path, 20_000, 20_000)
    assert path.stat().st_size < 100_000
    error = bad(path)
    assert error.kind == "decompression-bomb"
    assert error.reason == (
        f"decompression bomb: 400,000,000 pixels exceeds the limit of {MAX_IMAGE_PIXELS:,}"
    )


def test_decompression_bomb_just_over_the_limit_is_refused_not_warned(tmp_path: Path) -> None:
    # 9500 x 9500 is between PIL's warning and error thresholds.
    path = tmp_path / "bomb.png"
    write_bomb_png(path, 9_500, 9_500)
    filters_before = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        error = bad(path)
    assert error.kind == "decompression-bomb"
    assert "90,250,000 pixels" in error.reason
    assert caught == []
    assert warnings.filters == filters_before


def test_decompression_bomb_refused_even_with_pils_limit_disabled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    path = tmp_path / "bomb.png"
    write_bomb_png(path, 9_500, 9_500)
    error = bad(path)
    assert error.kind == "decompression-bomb"
    assert error.reason.startswith("decompression bomb: 90,250,000 pixels (9500x9500)")


def test_an_image_too_elongated_to_resize_is_refused_from_its_header(tmp_path: Path) -> None:
    """1 x 100 pixels: a short side scaled to 256 would be 25,600 long; at 1 x 50,000 it would
    take ~10 GB. 64:1 still loads."""
    Image.new("RGB", (100, 1), (200, 40, 40)).save(tmp_path / "thin.png")
    error = bad(tmp_path / "thin.png")
    assert error.kind == "too-elongated"
    assert error.reason.startswith("too elongated (100x1, more than 64:1)")
    Image.new("RGB", (2, 128), (200, 40, 40)).save(tmp_path / "tall.png")
    assert load_rgb_image(tmp_path / "tall.png").size == (2, 128)


def test_unreadable_path(tmp_path: Path) -> None:
    error = bad(tmp_path / "missing.jpg")
    assert error.kind == "unreadable"


def test_bad_image_error_pickles_with_its_attributes(tmp_path: Path) -> None:
    error = BadImageError(tmp_path / "x.jpg", "truncated image data", "truncated")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.path, copy.reason, copy.kind, str(copy)) == (
        error.path,
        error.reason,
        error.kind,
        str(error),
    )


def test_cmyk_jpeg_converted(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.jpg"
    Image.new("RGB", (40, 40), (200, 30, 30)).convert("CMYK").save(path, quality=95)
    assert Image.open(path).mode == "CMYK"
    image, notes = open_image_rgb(path)
    assert notes == ["CMYK converted to RGB"]
    assert np.allclose(rgb(image, (20, 20)), (200, 30, 30), atol=6)


def test_rgba_composited_on_white(tmp_path: Path) -> None:
    path = tmp_path / "rgba.png"
    pixels = np.zeros((40, 40, 4), dtype=np.uint8)
    pixels[:, :20] = (255, 0, 0, 0)  # fully transparent red: should become white
    pixels[:, 20:] = (255, 0, 0, 128)  # half-transparent red over white: pink
    Image.fromarray(pixels, mode="RGBA").save(path)
    image, notes = open_image_rgb(path)
    assert notes == ["RGBA composited on white"]
    assert image.getpixel((5, 5)) == (255, 255, 255)
    assert np.allclose(rgb(image, (30, 5)), (255, 127, 127), atol=2)


def test_sixteen_bit_grayscale_scaled_not_clipped(tmp_path: Path) -> None:
    path = tmp_path / "sixteen.png"
    values = np.array([[0, 256, 40_000, 65_535]], dtype=np.uint16).repeat(4, axis=0)
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "I;16"
    image, notes = open_image_rgb(path)
    assert notes == ["16-bit grayscale (I;16) scaled to 8-bit RGB"]
    row = [image.getpixel((x, 0)) for x in range(4)]
    assert row == [(0, 0, 0), (1, 1, 1), (156, 156, 156), (255, 255, 255)]


def test_palette_converted_and_palette_transparency_composited(tmp_path: Path) -> None:
    plain = tmp_path / "palette.png"
    texture(3).convert("P").save(plain)
    image, notes = open_image_rgb(plain)
    assert (image.mode, notes) == ("RGB", ["palette (P) converted to RGB"])

    transparent = tmp_path / "transparent.png"
    paletted = Image.new("P", (10, 10), 0)
    paletted.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    paletted.save(transparent, transparency=0)
    image, notes = open_image_rgb(transparent)
    assert notes == ["palette (P) with transparency composited on white"]
    assert image.getpixel((0, 0)) == (255, 255, 255)


def test_grayscale_converted(tmp_path: Path) -> None:
    path = tmp_path / "gray.jpg"
    texture(4).convert("L").save(path)
    image, notes = open_image_rgb(path)
    assert (image.mode, notes) == ("RGB", ["grayscale (L) converted to RGB"])


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (np.array([[0, 32_768, 65_535]], dtype=np.int32), [0, 128, 255]),  # 16-bit data as I
        (np.array([[0.0, 0.5, 1.0]], dtype=np.float32), [0, 127, 255]),  # float 0..1 as F
    ],
)
def test_wide_modes_scaled_to_8_bit(
    tmp_path: Path, values: np.ndarray, expected: list[int]
) -> None:
    path = tmp_path / "wide.tif"
    Image.fromarray(values).save(path)
    image, notes = open_image_rgb(path)
    assert len(notes) == 1 and "scaled to 8-bit RGB" in notes[0]
    assert [rgb(image, (x, 0))[0] for x in range(3)] == expected


def test_exif_orientation_applied(tmp_path: Path) -> None:
    # Stored 80x40, left half red and right half blue; orientation 6 = rotate 90 clockwise
    # for display, so the displayed picture is 40x80, red on top and blue below.
    path = tmp_path / "rotated.jpg"
    stored = Image.new("RGB", (80, 40), (255, 0, 0))
    stored.paste((0, 0, 255), (40, 0, 80, 40))
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(path, quality=95, exif=exif)
    image, notes = open_image_rgb(path)
    assert notes == ["EXIF orientation 6 applied"]
    assert image.size == (40, 80)
    red, blue = rgb(image, (20, 10)), rgb(image, (20, 70))
    assert red[0] > 200 and red[2] < 60
    assert blue[2] > 200 and blue[0] < 60


def test_decode_from_bytes_matches_file(tmp_path: Path) -> None:
    path = tmp_path / "good.png"
    texture(5).save(path)
    from_bytes, _ = decode_image_rgb(path.read_bytes(), path)
    assert from_bytes.tobytes() == open_image_rgb(path)[0].tobytes()
