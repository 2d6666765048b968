"""linear-probe: a linear classifier (softmax layer, logistic regression or linear SVM) on the
pooled codes of any stage of the frozen body, or the top; the saved model is the body cut at
that stage plus the classifier (tlvision.models.stages.StageClassifier)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tlvision.errors import UserError
from tlvision.training.strategy import FROZEN_ROUTE_EPOCHS, STRATEGIES, Strategy

if TYPE_CHECKING:
    from torch import nn

    from tlvision.training.checkpoint import TrainingCheckpoint
    from tlvision.training.run_setup import Log, RunSetup

NAME = "linear-probe"


def train(
    setup: RunSetup, model: nn.Module, log: Log, checkpoint: TrainingCheckpoint | None
) -> dict[str, Any]:
    from tlvision.training.codes_route import fit_on_codes

    return fit_on_codes(setup, model, log, stage=setup.config.stage, head=setup.config.head)


def range_test(setup: RunSetup, log: Log) -> Callable[[float], float]:
    from tlvision.training.lr_find import codes_step

    if setup.config.head != "linear":
        raise UserError(f"lr-find: the {setup.config.head} head is fitted without a learning rate")
    return codes_step(setup, log, stage=setup.config.stage)


STRATEGIES.register(
    NAME,
    Strategy(
        name=NAME,
        help="a linear classifier (--head) on the pooled codes of any --stage, or the top",
        frozen_body=True,
        default_epochs=FROZEN_ROUTE_EPOCHS,
        default_views=0,
        options=("stage", "head"),
        train=train,
        range_test=range_test,
    ),
)
