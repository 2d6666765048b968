"""ResNet-18 and ResNet-50 (torchvision)."""

from __future__ import annotations

from tlvision.models.backbone import BACKBONES, BackboneSpec, Stage
from tlvision.models.backbones._torchvision import builder, imagenet_weights
from tlvision.models.weights import WeightsSpec


def resnet(name: str, channels: tuple[int, ...], weights: tuple[WeightsSpec, ...]) -> BackboneSpec:
    # The stem ends in a stride-2 max pool, so it already has stride 4, like stage1.
    layers = [("stem", ("conv1", "bn1"), "maxpool")] + [
        (f"stage{index}", (f"layer{index}",), f"layer{index}") for index in range(1, 5)
    ]
    return BackboneSpec(
        name=name,
        build=builder(name),
        weights=weights,
        head="fc",
        feature_size=channels[-1],
        stages=tuple(
            Stage(stage, modules, output=output, channels=width, stride=stride)
            for (stage, modules, output), width, stride in zip(
                layers, channels, (4, 4, 8, 16, 32), strict=True
            )
        ),
    )


BACKBONES.register(
    "resnet18",
    lambda: resnet(
        "resnet18", (64, 64, 128, 256, 512),
        (imagenet_weights("resnet18", "resnet18-f37072fd.pth"),),
    ),
)  # fmt: skip
BACKBONES.register(
    "resnet50",
    lambda: resnet(
        "resnet50", (64, 256, 512, 1024, 2048),
        (
            imagenet_weights("resnet50", "resnet50-0676ba61.pth"),
            imagenet_weights("resnet50", "resnet50-11ad3fa6.pth", name="IMAGENET1K_V2",
                             resize=232),
        ),
    ),
)  # fmt: skip
