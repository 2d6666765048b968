"""A "salted" dataset: good images plus every kind of broken, odd and stray file users have."""

from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance


def texture(seed: int, size: tuple[int, int] = (64, 64)) -> Image.Image:
    """A smooth random RGB picture: distinct seeds give unrelated images (and dHashes)."""
    blocks = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return Image.fromarray(blocks).resize(size, Image.Resampling.BILINEAR)


def write_bomb_png(path: Path, width: int, height: int) -> None:
    """A genuine all-black 1-bit PNG: tens of KB on disk, width * height pixels decoded."""

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    compressor = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)
    pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def save_jpegs(folder: Path, prefix: str, seeds: range) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        texture(seed).save(folder / f"{prefix}{seed}.jpg", quality=90)


def make_salted(root: Path) -> Path:
    """train: ants (9 good + 6 odd-mode + tiny + 4 broken), bees (3); val: 3+2 good, 2 leaks."""
    data = root / "salted"
    ants, bees = data / "train" / "ants", data / "train" / "bees"
    save_jpegs(ants, "a", range(0, 9))
    save_jpegs(bees, "b", range(20, 23))
    save_jpegs(data / "val" / "ants", "v", range(40, 43))
    save_jpegs(data / "val" / "bees", "w", range(50, 52))

    # Broken files.
    (ants / "zero.jpg").touch()
    texture(60, (128, 128)).save(ants / "truncated.jpg", quality=90)
    whole = (ants / "truncated.jpg").read_bytes()
    (ants / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (ants / "text.jpg").write_text("not a picture\n")
    write_bomb_png(ants / "bomb.png", 20_000, 20_000)
    texture(61, (8, 8)).save(ants / "tiny.png")

    # Odd but valid files: notes, not problems.
    texture(62).convert("CMYK").save(ants / "cmyk.jpg", quality=90)
    rgba = texture(63).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((64, 64)))
    rgba.save(ants / "rgba.png")
    sixteen = (np.asarray(texture(64).convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(sixteen).save(ants / "sixteen.png")
    texture(65).convert("P").save(ants / "palette.png")
    texture(66).convert("L").save(ants / "gray.jpg", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6
    texture(67, (80, 48)).save(ants / "rotated.jpg", quality=90, exif=exif)

    # Clutter: ignored (hidden/system) or noted (visible non-image).
    (data / "train" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (data / "val" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (ants / "._a0.jpg").write_bytes(b"\x00\x05\x16\x07AppleDouble")
    (ants / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    macosx = data / "train" / "__MACOSX" / "ants"
    macosx.mkdir(parents=True)
    (macosx / "._a1.jpg").write_bytes(b"\x00\x05\x16\x07")
    (ants / "notes.txt").write_text("collected in May\n")

    # Leakage: an exact copy and a re-encoded, brightened copy of train images in val.
    shutil.copy(ants / "a0.jpg", data / "val" / "ants" / "dup.jpg")
    brighter = ImageEnhance.Brightness(Image.open(ants / "a1.jpg").convert("RGB")).enhance(1.08)
    brighter.save(data / "val" / "ants" / "near.jpg", quality=70)
    return data
