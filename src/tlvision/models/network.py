"""A backbone as a network with the user's classes: built, given pretrained weights and a new
head, and the head contract applied (tlvision.models.backbone says what the contract is)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from tlvision.data.preprocessing import Preprocessing
from tlvision.errors import UserError
from tlvision.models.backbone import BackboneSpec, Stage
from tlvision.models.weights import (
    WEIGHT_FILE_SUFFIXES,
    WeightsChoice,
    ensure_weights_file,
    load_state_dict_file,
    sha256_of_file,
)


def choose_weights(
    backbone: BackboneSpec, argument: str | None, *, fetch: bool = True
) -> WeightsChoice:
    """Resolve --weights: a name of the backbone's (default: its first), a file path, or none."""
    if argument is not None and argument.lower() == "none":
        return WeightsChoice(spec=None, path=None, label="none")
    if argument is not None and (Path(argument).suffix in WEIGHT_FILE_SUFFIXES or "/" in argument):
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
    multiple = backbone.input_multiple
    if input_size % multiple:
        lower = max(multiple, input_size // multiple * multiple)
        raise UserError(
            f"--input-size {input_size}: {backbone.name} takes sides that are multiples of "
            f"{multiple}; use {lower} or {lower + multiple}"
        )
    ratio = preprocessing.resize_size / preprocessing.crop_size
    return dataclasses.replace(
        preprocessing, crop_size=input_size, resize_size=round(input_size * ratio)
    )


def _parent(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    parent_path, _, attribute = path.rpartition(".")
    return (model.get_submodule(parent_path) if parent_path else model), attribute


def replace_head(model: nn.Module, backbone: BackboneSpec, num_classes: int) -> nn.Linear:
    """Put a new nn.Linear(feature_size, num_classes) where the backbone's head is."""
    parent, attribute = _parent(model, backbone.head)
    getattr(parent, attribute)  # an AttributeError here names a registry entry that does not fit
    new_head = nn.Linear(backbone.feature_size, num_classes)
    setattr(parent, attribute, new_head)
    return new_head


def head_of(model: nn.Module, backbone: BackboneSpec) -> nn.Linear:
    """The model's head: an nn.Linear once `replace_head` has run."""
    head = model.get_submodule(backbone.head)
    if not isinstance(head, nn.Linear):
        raise TypeError(f"{backbone.name}: {backbone.head} is {type(head).__name__}, not Linear")
    return head


def install_head(model: nn.Module, backbone: BackboneSpec, linear: nn.Linear) -> nn.Linear:
    """Copy a head trained on top codes into the model's head, so that the model's logits are
    `linear(top codes)`; a head of another class count replaces the layer first."""
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
                f"saved from {backbone.name}"
            ) from error
    replace_head(model, backbone, num_classes)
    return model


def stage_parameters(model: nn.Module, stage: Stage) -> list[nn.Parameter]:
    return [
        parameter
        for module_path in stage.modules
        for parameter in model.get_submodule(module_path).parameters()
    ]


def conv_from_linear(linear: nn.Linear) -> nn.Conv2d:
    """The same weights as a 1x1 convolution: the linear layer at every location."""
    conv = nn.Conv2d(linear.in_features, linear.out_features, kernel_size=1)
    with torch.no_grad():
        conv.weight.copy_(linear.weight.view(linear.out_features, linear.in_features, 1, 1))
        conv.bias.copy_(linear.bias)  # type: ignore[union-attr]
    return conv.to(linear.weight.device)


def location_head(model: nn.Module, backbone: BackboneSpec) -> nn.Module:
    """The layers from the last stage's feature map to the logits, run at every location:
    global average pooling then a linear layer equals the linear layer at every location then
    averaging, so the head becomes a 1x1 convolution (and whatever the backbone declares
    between its pool and its head runs per location too)."""
    head = head_of(model, backbone)
    if backbone.location_head is not None:
        return backbone.location_head(model, head)
    return conv_from_linear(head)
