"""What a backbone is, as data: its builder, weights, head and named stages.

These types sit below every backbone module (torchvision's, EfficientNet-Lite's) so that the
registry in `backbones.py` can import them all and none of them imports the registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from tlvision.errors import UserError
from tlvision.models.weights import WeightsSpec


@dataclass(frozen=True)
class Stage:
    """A named group of modules, like timm's feature_info entries.

    `output` is the module whose output is the stage's output; `channels` and `stride` describe
    that output (stride: input side / output side), checked against a real forward in the tests.
    """

    name: str
    modules: tuple[str, ...]
    output: str
    channels: int
    stride: int


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    build: Callable[[], nn.Module]  # the architecture with its original 1000-class head
    weights: tuple[WeightsSpec, ...]  # the first is the default
    head: str  # dotted path of the final classifier layer, an nn.Linear
    feature_size: int  # in_features of that layer: the size of the top CNN codes
    stages: tuple[Stage, ...]  # forward order, early to late
    # --input-size must be a multiple of this (1: any size; a conv net accepts any resolution).
    input_multiple: int = 1

    @property
    def stage_names(self) -> list[str]:
        return [stage.name for stage in self.stages]

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise UserError(
            f"unknown stage {name!r} for {self.name}; its stages, early to late, are "
            f"{', '.join(self.stage_names)}"
        )

    def weights_named(self, name: str) -> WeightsSpec:
        for spec in self.weights:
            if spec.name == name:
                return spec
        known = ", ".join(spec.name for spec in self.weights)
        raise UserError(
            f"unknown weights {name!r} for {self.name}; choose one of {known}, a file path, or none"
        )

    @property
    def default_weights(self) -> WeightsSpec:
        return self.weights[0]
