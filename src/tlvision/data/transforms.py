"""Preprocessing applied: the tensors a network reads, and the uint8 pixels an exported model reads.

`build_transforms` gives the phase-keyed set: train augments (a random resized crop and a flip),
val resizes the shorter side and centre-crops; both end in normalised float tensors.
`build_pixel_transforms` does the same geometry and stops at uint8 RGB pixels, (H, W, 3): the
exported graphs, every runtime and the codes pass normalise inside the model
(tlvision.models.pixels), so both give the same numbers to float rounding. `prepare_pixels` is
val's pixels as a numpy array.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2 as transforms

from tlvision.data.preprocessing import Preprocessing

PHASES = ("train", "val")


def _geometry(preprocessing: Preprocessing, phase: str) -> list[Callable[..., Any]]:
    """A phase's crop and resize: augmentation for train, resize + centre crop for val."""
    interpolation = transforms.InterpolationMode(preprocessing.interpolation)
    if phase == "train":
        return [
            transforms.RandomResizedCrop(
                preprocessing.crop_size, interpolation=interpolation, antialias=True
            ),
            transforms.RandomHorizontalFlip(),
        ]
    return [
        transforms.Resize(preprocessing.resize_size, interpolation=interpolation, antialias=True),
        transforms.CenterCrop(preprocessing.crop_size),
    ]


def build_transforms(
    preprocessing: Preprocessing,
) -> dict[str, Callable[[Image.Image], torch.Tensor]]:
    """The phase-keyed transform set, ending in (3, H, W) float tensors normalised as the
    backbone's weights expect."""
    to_normalized_tensor = [
        transforms.ToImage(),
        transforms.ToDtype(torch.float32, scale=True),
        transforms.Normalize(list(preprocessing.mean), list(preprocessing.std)),
    ]
    return {
        phase: transforms.Compose([*_geometry(preprocessing, phase), *to_normalized_tensor])
        for phase in PHASES
    }


class ToPixels:
    """A PIL image -> its (H, W, 3) uint8 RGB pixels as a tensor (what PixelNormalize reads)."""

    def __call__(self, image: Image.Image) -> torch.Tensor:
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        return torch.from_numpy(np.array(rgb, dtype=np.uint8))

    def __repr__(self) -> str:
        return "ToPixels()"


def build_pixel_transforms(
    preprocessing: Preprocessing,
) -> dict[str, Callable[[Image.Image], torch.Tensor]]:
    """The same geometry as build_transforms, ending in uint8 pixels: normalising a whole batch
    inside the model (tlvision.models.pixels.PixelNormalize) costs less than each image's float
    conversion here, and runs in the model's threads, not the loader's one."""
    return {phase: _pixels(preprocessing, phase) for phase in PHASES}


@functools.lru_cache(maxsize=8)
def _pixels(preprocessing: Preprocessing, phase: str) -> Callable[[Image.Image], torch.Tensor]:
    """One phase's pixel transform, built once per preprocessing: prepare_pixels runs for every
    image served or streamed, and the transforms hold no state between images (the train
    phase's randomness comes from torch's generator at call time)."""
    return transforms.Compose([*_geometry(preprocessing, phase), ToPixels()])


def prepare_pixels(image: Image.Image, preprocessing: Preprocessing) -> np.ndarray:
    """Resize and centre-crop exactly like the val transform; (H, W, 3) uint8 RGB."""
    pixels = _pixels(preprocessing, "val")(image.convert("RGB"))
    return np.ascontiguousarray(pixels.numpy())
