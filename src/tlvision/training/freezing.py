"""Transfer strategies: which pretrained layers train, at what learning rate.

- feature-extract: the ConvNet is a fixed feature extractor; only the new last layer trains.
- finetune: every layer trains, the pretrained ones at `backbone_lr_mult` times the head's rate
  (they are already good; the new head starts from random), optionally with the early stages up
  to `freeze_until` kept fixed, since early features (edges, colour blobs) are the most generic.

A frozen layer must not change at all. Parameters are easy (requires_grad=False), but BatchNorm
also updates its running mean and variance in train mode, so `set_train_mode` keeps every frozen
BatchNorm in eval mode.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from tlvision.config import NO_FREEZING, TrainConfig
from tlvision.models.backbone import BackboneSpec
from tlvision.models.network import head_of, stage_parameters


def frozen_stage(config: TrainConfig) -> str | None:
    """The last frozen stage of a fine-tuning run, or None when every stage trains."""
    if config.freeze_until in (None, NO_FREEZING):
        return None
    return config.freeze_until


def freeze(parameters: Any) -> None:
    for parameter in parameters:
        parameter.requires_grad_(False)


def unfreeze(parameters: Any) -> None:
    for parameter in parameters:
        parameter.requires_grad_(True)


def apply_finetuning(
    model: nn.Module,
    backbone: BackboneSpec,
    *,
    freeze_until: str | None = None,
    backbone_lr_mult: float = 0.1,
) -> None:
    """Set requires_grad for fine-tuning: every layer trains but the stages up to and including
    `freeze_until`. A `backbone_lr_mult` of 0 means the pretrained layers do not learn, so they
    are frozen outright: their BatchNorm statistics must not move either."""
    unfreeze(model.parameters())
    if backbone_lr_mult == 0:
        freeze(model.parameters())
        unfreeze(head_of(model, backbone).parameters())
        return
    if freeze_until is not None:
        backbone.stage(freeze_until)  # an unknown name is a clear error
        for stage in backbone.stages:
            freeze(stage_parameters(model, stage))
            if stage.name == freeze_until:
                break


def parameter_groups(
    model: nn.Module, backbone: BackboneSpec, *, learning_rate: float, backbone_lr_mult: float
) -> list[dict[str, Any]]:
    """Optimizer groups: the new head at `learning_rate`, trainable pretrained layers lower."""
    head_ids = {id(parameter) for parameter in head_of(model, backbone).parameters()}
    head = [p for p in model.parameters() if id(p) in head_ids]
    body = [p for p in model.parameters() if id(p) not in head_ids and p.requires_grad]
    groups: list[dict[str, Any]] = [{"params": head, "lr": learning_rate, "name": "head"}]
    if body:
        groups.append({"params": body, "lr": learning_rate * backbone_lr_mult, "name": "backbone"})
    return groups


def is_frozen_batchnorm(module: nn.Module) -> bool:
    parameters = list(module.parameters(recurse=False))
    return (
        isinstance(module, nn.modules.batchnorm._BatchNorm)
        and bool(parameters)
        and not any(parameter.requires_grad for parameter in parameters)
    )


def set_train_mode(model: nn.Module, *, keep_batchnorm_statistics: bool = False) -> None:
    """model.train(), except that frozen BatchNorm layers keep their running statistics, and
    with `keep_batchnorm_statistics` every BatchNorm does (its weight and bias still train)."""
    model.train()
    for module in model.modules():
        if is_frozen_batchnorm(module) or (
            keep_batchnorm_statistics and isinstance(module, nn.modules.batchnorm._BatchNorm)
        ):
            module.eval()


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(parameter.numel() for parameter in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
