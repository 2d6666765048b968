"""How an image becomes the tensor a network reads, as data: resize, crop, normalisation.

It comes with a backbone's pretrained weights (tlvision.models.weights) and travels with every
run (model.json) and export (its sidecar). tlvision.data.transforms applies it. Imports no
torch, so backbones can be declared and listed without loading a network.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Preprocessing:
    """Resize the shorter side to `resize_size`, centre-crop `crop_size`, scale to 0..1, then
    (x - mean) / std per channel."""

    resize_size: int = 256
    crop_size: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"

    def to_json(self) -> dict[str, Any]:
        return {
            "resize_size": self.resize_size,
            "crop_size": self.crop_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Preprocessing:
        mean = tuple(float(value) for value in data["mean"])
        std = tuple(float(value) for value in data["std"])
        return cls(
            resize_size=int(data["resize_size"]),
            crop_size=int(data["crop_size"]),
            mean=(mean[0], mean[1], mean[2]),
            std=(std[0], std[1], std[2]),
            interpolation=str(data["interpolation"]),
        )
