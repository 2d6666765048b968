"""What torchvision's backbones share: the builder, ImageNet's weights as data, stage groups over
a `features` nn.Sequential. torchvision itself is imported only when a network is built."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from tlvision.data.preprocessing import Preprocessing
from tlvision.models.backbone import Stage
from tlvision.models.weights import RegistryPackage, WeightsSpec

if TYPE_CHECKING:
    from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LICENCE = "BSD-3-Clause (torchvision); trained on ImageNet-1k"
DOWNLOADS = "https://download.pytorch.org/models/"


def builder(name: str) -> Callable[[], nn.Module]:
    """torchvision's architecture `name` with its 1000-class head, randomly initialised."""

    def build() -> nn.Module:
        import torchvision

        return torchvision.models.get_model(name, weights=None)

    return build


def imagenet_weights(
    backbone: str,
    filename: str,
    *,
    name: str = "IMAGENET1K_V1",
    resize: int = 256,
    interpolation: str = "bilinear",
    sha256: str | None = None,
    package: RegistryPackage | None = None,
) -> WeightsSpec:
    """One of torchvision's weights entries, as data: its file, URL and preprocessing (a 224
    centre crop of the image resized to `resize`, ImageNet's mean and std)."""
    return WeightsSpec(
        backbone=backbone,
        name=name,
        filename=filename,
        url=DOWNLOADS + filename,
        sha256=sha256,
        package=package,
        preprocessing=Preprocessing(
            resize_size=resize,
            crop_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            interpolation=interpolation,
        ),
        licence=LICENCE,
    )


def features_stages(
    groups: list[tuple[str, int, int, int, int]], extra_last: tuple[str, ...] = ()
) -> tuple[Stage, ...]:
    """Stages over a `features` nn.Sequential: (name, first index, last index, channels,
    stride) groups; `extra_last`: modules after `features` that belong to the last stage."""
    stages = []
    for position, (name, first, last, channels, stride) in enumerate(groups):
        modules = tuple(f"features.{index}" for index in range(first, last + 1))
        if position == len(groups) - 1:
            modules += extra_last
        stages.append(
            Stage(name, modules, output=f"features.{last}", channels=channels, stride=stride)
        )
    return tuple(stages)
