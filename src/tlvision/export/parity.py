"""Real images for checking an export: the run's own val split, as uint8 pixels at the crop size.

An export is compared with the torch model on images like the ones it will see, not on noise;
they come from the run's data_dir (recorded in model.json) or from --data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from tlvision.data.images import BadImageError, load_rgb_image
from tlvision.data.layouts import DatasetSplits, find_splits
from tlvision.errors import UserError
from tlvision.models.pixels import prepare_pixels
from tlvision.runs.checkpoint import LoadedModel


@dataclass(frozen=True)
class ParityImages:
    pixels: np.ndarray  # (N, crop, crop, 3) uint8
    labels: np.ndarray  # (N,) class indices in the run's class order

    def at_other_size(self, offset: tuple[int, int], count: int = 2) -> np.ndarray:
        """The first `count` images resized by (height, width) offset pixels: a non-square size
        that the fixed-size check never ran."""
        height = self.pixels.shape[1] + offset[0]
        width = self.pixels.shape[2] + offset[1]
        resized = [
            np.asarray(Image.fromarray(pixels).resize((width, height), Image.Resampling.BILINEAR))
            for pixels in self.pixels[:count]
        ]
        return np.ascontiguousarray(np.stack(resized))


def run_splits(loaded: LoadedModel, data: Path | None) -> DatasetSplits:
    """The labelled splits of `data`, or of the data_dir the run was trained on."""
    config = loaded.metadata.get("config", {})
    data_dir = data if data is not None else Path(config.get("data_dir") or ".")
    if not data_dir.is_dir():
        raise UserError(
            f"{data_dir}: no images to check the export with (the run's data is gone); pass "
            "--data DIR, a dataset folder with images of this model's classes"
        )
    splits = find_splits(data_dir, val_split=config.get("val_split"), seed=config.get("seed", 0))
    if tuple(splits.class_names) != loaded.class_names:
        raise UserError(
            f"{data_dir}: classes {', '.join(splits.class_names)} differ from the model's "
            f"{', '.join(loaded.class_names)}; pass --data with the model's classes"
        )
    return splits


def load_pixels(
    loaded: LoadedModel, samples: list[tuple[Path, int]], limit: int | None = None
) -> ParityImages:
    pixels: list[np.ndarray] = []
    labels: list[int] = []
    for path, label in samples:
        if limit is not None and len(pixels) >= limit:
            break
        try:
            image = load_rgb_image(path)
        except BadImageError:
            continue  # the dataset doctor reports these; a check just uses the readable ones
        pixels.append(prepare_pixels(image, loaded.preprocessing))
        labels.append(label)
    if not pixels:
        return ParityImages(np.empty((0, 0, 0, 3), np.uint8), np.empty(0, np.int64))
    return ParityImages(np.stack(pixels), np.asarray(labels, dtype=np.int64))


def parity_pixels(loaded: LoadedModel, data: Path | None, minimum: int = 32) -> ParityImages:
    """`minimum` readable images: from the val split, topped up from train if it is small."""
    splits = run_splits(loaded, data)
    samples = list(splits.samples.get("val", [])) + list(splits.samples.get("train", []))
    images = load_pixels(loaded, samples, limit=minimum)
    if len(images.pixels) < minimum:
        raise UserError(
            f"{splits.root}: only {len(images.pixels)} readable images; the export check needs "
            f"at least {minimum}: pass --data with more val images"
        )
    return images
