"""The EfficientNet-Lite network of the `efficientnet-lite-pytorch` package (Apache-2.0, a fork of
lukemelas' efficientnet_pytorch), with its stem and head activations made separate modules.

The package's model shares one ReLU6 module between the stem and the head, so a feature
extractor cannot tell the two apart; here each has its own (parameter-free, so the state dict
is unchanged and the converted weights load strictly), which makes the last stage's output
addressable by name.
"""

from __future__ import annotations

from typing import Any

import torch
from efficientnet_lite_pytorch import EfficientNet
from torch import nn


class EfficientNetLite(EfficientNet):
    """The package's EfficientNet-Lite with its own stem and head activations."""

    def __init__(self, blocks_args: Any, global_params: Any) -> None:
        super().__init__(blocks_args, global_params)
        # Lite models use ReLU6 everywhere (it quantises well).
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


def build(package_name: str) -> nn.Module:
    """`package_name` (efficientnet-lite0, -lite1, -lite2), randomly initialised.

    The package builds TensorFlow-style "SAME" padding as fixed amounts for the variant's own
    image size (224, 240, 260): exact there and, for lite0, at every side that is a multiple of
    32; other sizes run with the same amounts, close to what TensorFlow would pad.
    """
    model: nn.Module = EfficientNetLite.from_name(package_name)
    return model
