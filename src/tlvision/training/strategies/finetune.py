"""finetune: the stages after --freeze-until and the head train, the pretrained layers at
--backbone-lr-mult times the rate; the frozen stages run once per kept view
(tlvision.training.frozen_prefix) and the head starts trained on codes (tlvision.training.finetune).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from tlvision.training.strategy import STRATEGIES, Strategy

if TYPE_CHECKING:
    from torch import nn

    from tlvision.config import TrainConfig
    from tlvision.models.backbone import BackboneSpec
    from tlvision.training.checkpoint import TrainingCheckpoint
    from tlvision.training.run_setup import Log, RunSetup

NAME = "finetune"
# The measured best (benchmarks/RESULTS.md, "Fine-tuning fast"): 10 epochs above the frozen
# stages, whose output is kept for the centre crop and 8 augmented views of each train image.
EPOCHS = 10
VIEWS = 8


def train(
    setup: RunSetup, model: nn.Module, log: Log, checkpoint: TrainingCheckpoint | None
) -> dict[str, Any]:
    from tlvision.training.finetune import finetune

    return finetune(setup, model, log, checkpoint)


def prepare(setup: RunSetup, log: Log, fresh: bool) -> RunSetup:
    from tlvision.training.finetune import prepare_finetune

    return prepare_finetune(setup, log, fresh)


def range_test(setup: RunSetup, log: Log) -> Callable[[float], float]:
    from tlvision.training.lr_find import finetune_step

    return finetune_step(setup, log)


def with_backbone_defaults(config: TrainConfig, backbone: BackboneSpec) -> TrainConfig:
    """--freeze-until's default: the backbone's middle stage (stage2 for most)."""
    if config.freeze_until is not None:
        return config
    return replace(config, freeze_until=backbone.partial_freeze_stage)


STRATEGIES.register(
    NAME,
    Strategy(
        name=NAME,
        help="the stages after --freeze-until and the head train (the pretrained ones slower)",
        frozen_body=False,
        default_epochs=EPOCHS,
        default_views=VIEWS,
        options=("freeze_until", "batchnorm", "backbone_lr_mult", "sampler"),
        train=train,
        prepare=prepare,
        range_test=range_test,
        with_backbone_defaults=with_backbone_defaults,
    ),
)
