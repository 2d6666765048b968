"""Test-time augmentation: several views of each image, their class probabilities averaged.

The views are the val transform's centre crop, its mirror image and the four corner crops of
the same resized image (torchvision's FiveCrop), so every view is a crop the network was trained
to read. `AveragedViews` wraps any classifier so that callers which apply a softmax to the
output (evaluation.predict_probabilities, predict.predict_images) get the averaged
probabilities unchanged: it returns their logarithm, and softmax(log p) = p when p sums to 1.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image
from torch import nn
from torchvision.transforms import v2 as transforms
from torchvision.transforms.v2 import functional

from tlvision.models.weights import Preprocessing

TTA_VIEWS = ("centre", "centre mirrored", "top-left", "top-right", "bottom-left", "bottom-right")


def tta_transform(preprocessing: Preprocessing) -> Callable[[Image.Image], torch.Tensor]:
    """image -> (len(TTA_VIEWS), 3, crop, crop) normalised views, in the order of TTA_VIEWS."""
    interpolation = transforms.InterpolationMode(preprocessing.interpolation)
    resize = transforms.Resize(
        preprocessing.resize_size, interpolation=interpolation, antialias=True
    )
    five_crop = transforms.FiveCrop(preprocessing.crop_size)
    to_normalized_tensor = transforms.Compose(
        [
            transforms.ToImage(),
            transforms.ToDtype(torch.float32, scale=True),
            transforms.Normalize(list(preprocessing.mean), list(preprocessing.std)),
        ]
    )

    def views(image: Image.Image) -> torch.Tensor:
        top_left, top_right, bottom_left, bottom_right, centre = five_crop(resize(image))
        ordered = [
            centre,
            functional.horizontal_flip(centre),
            top_left,
            top_right,
            bottom_left,
            bottom_right,
        ]
        return torch.stack([to_normalized_tensor(view) for view in ordered])

    return views


class AveragedViews(nn.Module):
    """(N, V, 3, H, W) views -> (N, classes) log of the views' mean softmax probabilities."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        batch, count = views.shape[:2]
        logits = self.model(views.flatten(0, 1)).float()
        probabilities = torch.softmax(logits, dim=1).view(batch, count, -1).mean(dim=1)
        return torch.log(probabilities.clamp_min(1e-12))
