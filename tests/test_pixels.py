"""prepare_pixels, which every ONNX Runtime path feeds, gives the val transform's pixels exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tlvision.data.images import load_rgb_image
from tlvision.data.preprocessing import Preprocessing
from tlvision.data.transforms import build_transforms, prepare_pixels

IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


def val_pixels(image: Image.Image, preprocessing: Preprocessing) -> np.ndarray:
    """The val transform's pixels: its float output un-normalised back to 0..255."""
    tensor = build_transforms(preprocessing)["val"](image)
    mean = torch.tensor(preprocessing.mean).view(3, 1, 1)
    std = torch.tensor(preprocessing.std).view(3, 1, 1)
    pixels = (tensor * std + mean) * 255.0
    return pixels.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize(
    ("size", "resize", "crop"),
    [((500, 375), 256, 224), ((333, 500), 256, 224), ((32, 32), 73, 64), ((640, 97), 128, 112),
     ((224, 224), 256, 224), ((301, 299), 232, 224)],
)  # fmt: skip
def test_crop_only_resampling_matches_the_val_transform(
    size: tuple[int, int], resize: int, crop: int, interpolation: str
) -> None:
    generator = np.random.default_rng(sum(size) + resize)
    # smooth content plus noise: both the filter's interior and its edges are exercised
    y, x = np.mgrid[0 : size[1], 0 : size[0]]
    smooth = np.stack([x * 255 / size[0], y * 255 / size[1], (x + y) % 256], axis=-1)
    noisy = smooth + generator.normal(0, 40, smooth.shape)
    image = Image.fromarray(noisy.clip(0, 255).astype(np.uint8))
    preprocessing = Preprocessing(
        resize_size=resize, crop_size=crop, interpolation=interpolation, **IMAGENET
    )
    ours = prepare_pixels(image, preprocessing)
    expected = val_pixels(image, preprocessing)
    assert ours.shape == expected.shape == (crop, crop, 3)
    assert np.array_equal(ours, expected)


def test_reference_photos_match_the_val_transform(reference_data: Path) -> None:
    preprocessing = Preprocessing(resize_size=256, crop_size=224, **IMAGENET)
    for path in sorted((reference_data / "val").rglob("*.jpg"))[::15]:
        image = load_rgb_image(path)
        assert np.array_equal(
            prepare_pixels(image, preprocessing), val_pixels(image, preprocessing)
        ), path
