"""Test-time augmentation: several views of each image, their class probabilities averaged.

The views are the val transform's centre crop, its mirror image and the four corner crops of
the same resized image, so every view is a crop the network was trained to read. They are
uint8 pixels like any other input, so TTA runs on every runtime (tlvision.inference.runtime).
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from torchvision.transforms import v2 as transforms

from tlvision.data.preprocessing import Preprocessing

TTA_VIEWS = ("centre", "centre mirrored", "top-left", "top-right", "bottom-left", "bottom-right")


def tta_pixels(image: Image.Image, preprocessing: Preprocessing) -> np.ndarray:
    """(len(TTA_VIEWS), crop, crop, 3) uint8 views of an RGB image, in the order of TTA_VIEWS."""
    interpolation = transforms.InterpolationMode(preprocessing.interpolation)
    resize = transforms.Resize(
        preprocessing.resize_size, interpolation=interpolation, antialias=True
    )
    crops = transforms.FiveCrop(preprocessing.crop_size)(resize(image.convert("RGB")))
    top_left, top_right, bottom_left, bottom_right, centre = (
        np.asarray(crop, dtype=np.uint8) for crop in crops
    )
    mirrored = centre[:, ::-1]
    return np.ascontiguousarray(
        np.stack([centre, mirrored, top_left, top_right, bottom_left, bottom_right])
    )


def averaged(probabilities: np.ndarray, views: int) -> np.ndarray:
    """(N x views, classes) probabilities -> (N, classes): each image's views averaged."""
    return probabilities.reshape(-1, views, probabilities.shape[1]).mean(axis=1)
