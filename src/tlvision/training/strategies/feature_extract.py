"""feature-extract: the pretrained body is a fixed feature extractor; only a new last layer
trains, on the body's codes computed once and cached (tlvision.training.codes_route)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tlvision.training.strategy import FROZEN_ROUTE_EPOCHS, STRATEGIES, Strategy

if TYPE_CHECKING:
    from torch import nn

    from tlvision.training.checkpoint import TrainingCheckpoint
    from tlvision.training.run_setup import Log, RunSetup

NAME = "feature-extract"


def train(
    setup: RunSetup, model: nn.Module, log: Log, checkpoint: TrainingCheckpoint | None
) -> dict[str, Any]:
    from tlvision.training.codes_route import fit_on_codes

    return fit_on_codes(setup, model, log, stage=None, head="linear")


def range_test(setup: RunSetup, log: Log) -> Callable[[float], float]:
    from tlvision.training.lr_find import codes_step

    return codes_step(setup, log, stage=None)


STRATEGIES.register(
    NAME,
    Strategy(
        name=NAME,
        help="only a new last layer trains, on the frozen body's cached codes",
        frozen_body=True,
        default_epochs=FROZEN_ROUTE_EPOCHS,
        default_views=0,
        options=(),
        train=train,
        range_test=range_test,
    ),
)
