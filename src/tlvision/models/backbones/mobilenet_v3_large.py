"""MobileNetV3-Large (torchvision): a Linear + Hardswish sit between its pool and its head."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tlvision.models.backbone import BACKBONES, BackboneSpec
from tlvision.models.backbones._torchvision import builder, features_stages, imagenet_weights

if TYPE_CHECKING:
    from torch import nn


def location_head(model: nn.Module, head: nn.Module) -> nn.Module:
    """classifier.0 (Linear) and its Hardswish at every location, then the head; the dropout
    between them does nothing at inference."""
    from torch import nn

    from tlvision.models.network import conv_from_linear

    first = model.get_submodule("classifier.0")
    assert isinstance(first, nn.Linear) and isinstance(head, nn.Linear)
    return nn.Sequential(conv_from_linear(first), nn.Hardswish(), conv_from_linear(head))


def spec() -> BackboneSpec:
    return BackboneSpec(
        name="mobilenet_v3_large",
        build=builder("mobilenet_v3_large"),
        weights=(
            imagenet_weights("mobilenet_v3_large", "mobilenet_v3_large-8738ca79.pth"),
            imagenet_weights(
                "mobilenet_v3_large",
                "mobilenet_v3_large-5c1a4163.pth",
                name="IMAGENET1K_V2",
                resize=232,
            ),
        ),
        head="classifier.3",
        feature_size=1280,
        stages=features_stages(
            [
                ("stem", 0, 1, 16, 2),
                ("stage1", 2, 3, 24, 4),
                ("stage2", 4, 6, 40, 8),
                ("stage3", 7, 12, 112, 16),
                ("stage4", 13, 16, 960, 32),
            ],
            extra_last=("classifier.0",),
        ),
        location_head=location_head,
    )


BACKBONES.register("mobilenet_v3_large", spec)
