"""ConvNeXt-Tiny (torchvision): a LayerNorm sits between its pool and its head."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tlvision.models.backbone import BACKBONES, BackboneSpec
from tlvision.models.backbones._torchvision import builder, features_stages, imagenet_weights

if TYPE_CHECKING:
    from torch import nn


def location_head(model: nn.Module, head: nn.Module) -> nn.Module:
    """The LayerNorm2d (per location already: it normalises each location's channels), then
    the head as a 1x1 convolution."""
    from torch import nn

    from tlvision.models.network import conv_from_linear

    assert isinstance(head, nn.Linear)
    return nn.Sequential(model.get_submodule("classifier.0"), conv_from_linear(head))


def spec() -> BackboneSpec:
    return BackboneSpec(
        name="convnext_tiny",
        build=builder("convnext_tiny"),
        weights=(imagenet_weights("convnext_tiny", "convnext_tiny-983f1562.pth", resize=236),),
        head="classifier.2",
        feature_size=768,
        stages=features_stages(
            [
                # ConvNeXt's patchify stem is a 4x4 convolution with stride 4.
                ("stem", 0, 0, 96, 4),
                ("stage1", 1, 1, 96, 4),
                ("stage2", 2, 3, 192, 8),
                ("stage3", 4, 5, 384, 16),
                ("stage4", 6, 7, 768, 32),
            ],
            extra_last=("classifier.0",),
        ),
        location_head=location_head,
    )


BACKBONES.register("convnext_tiny", spec)
