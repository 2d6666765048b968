"""Known transforms for calibrating the near-duplicate threshold: copies of a seeded sample of
train images resized, recompressed, cropped and mirrored, written to a scratch folder (never
beside the originals). The same images give the same bytes, so a second audit reads their
codes from the cache."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image, ImageOps

from tlvision.data.images import BadImageError, load_rgb_image

CALIBRATION_IMAGES = 24
"""How many train images the calibration copies (four copies each)."""


def _resized(image: Image.Image) -> Image.Image:
    width, height = image.size
    return image.resize((max(8, width // 2), max(8, height // 2)), Image.Resampling.BILINEAR)


def _cropped(image: Image.Image) -> Image.Image:
    width, height = image.size
    return image.crop((width // 10, height // 10, width, height))  # 10% off two sides


TRANSFORMS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "resize": _resized,
    "recompress": lambda image: image,  # saved as JPEG at quality 40 below
    "crop": _cropped,
    "mirror": ImageOps.mirror,
}


def write_transformed_copies(
    files: Sequence[Path], scratch: Path, *, count: int, seed: int
) -> list[tuple[Path, Path, str]]:
    """(copy, original, transform) for `count` seeded picks of `files`; unreadable ones skipped."""
    picked = random.Random(seed).sample(list(files), min(count, len(files)))
    copies = []
    for number, original in enumerate(picked):
        try:
            image = load_rgb_image(original)
        except (BadImageError, OSError):
            continue  # the audit lists it as unreadable
        for name, transform in TRANSFORMS.items():
            copy = scratch / f"{number:04d}-{name}.jpg"
            transform(image).save(copy, quality=40 if name == "recompress" else 90)
            copies.append((copy, original, name))
    return copies
