"""EfficientNet-B0 (torchvision)."""

from tlvision.models.backbone import BACKBONES, BackboneSpec
from tlvision.models.backbones._torchvision import builder, features_stages, imagenet_weights


def spec() -> BackboneSpec:
    return BackboneSpec(
        name="efficientnet_b0",
        build=builder("efficientnet_b0"),
        weights=(
            imagenet_weights(
                "efficientnet_b0", "efficientnet_b0_rwightman-7f5810bc.pth", interpolation="bicubic"
            ),
        ),
        head="classifier.1",
        feature_size=1280,
        stages=features_stages(
            [
                ("stem", 0, 1, 16, 2),
                ("stage1", 2, 2, 24, 4),
                ("stage2", 3, 3, 40, 8),
                ("stage3", 4, 5, 112, 16),
                ("stage4", 6, 8, 1280, 32),
            ]
        ),
    )


BACKBONES.register("efficientnet_b0", spec)
