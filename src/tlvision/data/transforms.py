"""Preprocessing applied: the tensors a network reads, and the uint8 pixels an exported model reads.

`build_transforms` gives the phase-keyed set: train augments (a random resized crop and a flip),
val resizes the shorter side and centre-crops. `prepare_pixels` does val's resize and crop and
stops at uint8 RGB: the exported graphs and every runtime normalise inside the model
(tlvision.models.pixels), so both give the same numbers to float rounding.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2 as transforms

from tlvision.data.preprocessing import Preprocessing


def build_transforms(
    preprocessing: Preprocessing,
) -> dict[str, Callable[[Image.Image], torch.Tensor]]:
    """The phase-keyed transform set: augmentation for train, resize + centre crop for val."""
    interpolation = transforms.InterpolationMode(preprocessing.interpolation)
    to_normalized_tensor = [
        transforms.ToImage(),
        transforms.ToDtype(torch.float32, scale=True),
        transforms.Normalize(list(preprocessing.mean), list(preprocessing.std)),
    ]
    return {
        "train": transforms.Compose(
            [
                transforms.RandomResizedCrop(
                    preprocessing.crop_size, interpolation=interpolation, antialias=True
                ),
                transforms.RandomHorizontalFlip(),
                *to_normalized_tensor,
            ]
        ),
        "val": transforms.Compose(
            [
                transforms.Resize(
                    preprocessing.resize_size, interpolation=interpolation, antialias=True
                ),
                transforms.CenterCrop(preprocessing.crop_size),
                *to_normalized_tensor,
            ]
        ),
    }


def prepare_pixels(image: Image.Image, preprocessing: Preprocessing) -> np.ndarray:
    """Resize and centre-crop exactly like the val transform; (H, W, 3) uint8 RGB."""
    interpolation = transforms.InterpolationMode(preprocessing.interpolation)
    resize_and_crop = transforms.Compose(
        [
            transforms.Resize(
                preprocessing.resize_size, interpolation=interpolation, antialias=True
            ),
            transforms.CenterCrop(preprocessing.crop_size),
        ]
    )
    cropped = resize_and_crop(image.convert("RGB"))
    return np.ascontiguousarray(np.asarray(cropped, dtype=np.uint8))
