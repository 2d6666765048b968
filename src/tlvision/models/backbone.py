"""What a backbone is, as data: its builder, weights, named stages and the one head contract.

The head contract, the same for every backbone (timm's idea, made smaller): the module at `head`
takes the pooled top codes, (N, feature_size), and returns logits; training replaces it with a
new nn.Linear(feature_size, classes). Stages are declared as data, any number of them, early to
late, each with its modules, the module whose output is the stage's output, and that output's
channels and stride (input side / output side: checked against a real forward by the tests).
`location_head` says how the layers from the last stage's map to the logits run at every
location (class maps); without one, the head alone runs as a 1x1 convolution.

A backbone is one module in tlvision/models/backbones/ that calls `BACKBONES.register(name,
factory)`; the factory builds the BackboneSpec when the backbone is first asked for. Imports no
torch: listing backbones loads no network.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tlvision.errors import UserError
from tlvision.models.weights import WeightsSpec
from tlvision.registry import Registry

if TYPE_CHECKING:
    from torch import nn


TOP_LABEL = "top"  # how the top codes (the head's input) are named in files, logs and tables


@dataclass(frozen=True)
class Stage:
    """A named group of modules, like timm's feature_info entries."""

    name: str
    modules: tuple[str, ...]
    output: str
    channels: int
    stride: int


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    build: Callable[[], nn.Module]  # the architecture with its original head, randomly initialised
    weights: tuple[WeightsSpec, ...]  # the first is the default
    head: str  # dotted path of the final classifier: (N, feature_size) top codes -> logits
    feature_size: int  # the size of the top codes
    stages: tuple[Stage, ...]  # forward order, early to late
    # --input-size must be a multiple of this (1: any size; a conv net accepts any resolution).
    input_multiple: int = 1
    # (model, its head) -> the module from the last stage's feature map to per-location logits
    # (class maps); None: the head as a 1x1 convolution (the pool is the only layer before it).
    location_head: Callable[[nn.Module, nn.Module], nn.Module] | None = None

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

    # The roles of stages, by position, so that any number of stages works. With the usual five
    # (stem and stage1 to stage4, strides 2 to 32) they are the choices measured on the tuning
    # sets: fine-tuning keeps up to stage2 frozen, the advisor races stage2, stage3 and the top,
    # and the early stages are stem and stage1.

    @property
    def partial_freeze_stage(self) -> str:
        """The last stage `finetune` keeps frozen by default: the third from the end."""
        return self.stages[max(0, len(self.stages) - 3)].name

    @property
    def race_stages(self) -> tuple[str, ...]:
        """The stages whose pooled codes the advisor races beside the top: the two before the
        last (the last one's pooled output is the top codes, or nearly)."""
        return tuple(stage.name for stage in self.stages[max(0, len(self.stages) - 3) : -1])

    @property
    def early_stages(self) -> tuple[str, ...]:
        """The first two stages: generic edges and colours, whatever the data."""
        return tuple(stage.name for stage in self.stages[:2])


BACKBONES: Registry[Callable[[], BackboneSpec]] = Registry("backbone", "tlvision.models.backbones")


def get_backbone(name: str) -> BackboneSpec:
    """The registered backbone `name`, built from its factory (plain data: cheap)."""
    spec = BACKBONES.get(name)()
    if spec.name != name:
        raise ValueError(f"the backbone registered as {name!r} calls itself {spec.name!r}")
    return spec
