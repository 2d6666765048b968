"""Small multi-label datasets on disk: each image is two halves, each a colour class or plain
grey; its labels are the colours it holds (none for two grey halves)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = {"blue": (40, 60, 210), "green": (30, 170, 60), "red": (200, 40, 40)}
GREY = (128, 128, 128)


def halves_image(left: str | None, right: str | None, seed: int, size: int = 48) -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = np.empty((size, size, 3), dtype=np.float32)
    for column, name in ((slice(0, size // 2), left), (slice(size // 2, size), right)):
        pixels[:, column] = COLOURS[name] if name else GREY
    pixels += rng.normal(0, 20, size=pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_multilabel_dataset(root: Path, *, repeats: dict[str, int] | None = None) -> Path:
    """DATA/images/*.png with DATA/train.csv and DATA/val.csv (file,labels)."""
    repeats = repeats or {"train": 3, "val": 2}
    choices = [None, *COLOURS]
    (root / "images").mkdir(parents=True, exist_ok=True)
    seed = 0
    for phase, count in repeats.items():
        lines = ["file,labels"]
        for left, right in itertools.product(choices, choices):
            for _ in range(count):
                seed += 1
                name = f"images/{phase}_{seed}.png"
                halves_image(left, right, seed).save(root / name)
                labels = sorted({colour for colour in (left, right) if colour})
                lines.append(f"{name},{';'.join(labels)}")
        (root / f"{phase}.csv").write_text("\n".join(lines) + "\n")
    return root
