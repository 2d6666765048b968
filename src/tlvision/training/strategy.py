"""Strategies: what trains, declared as data and registered by one module each.

A strategy is one module in tlvision/training/strategies/ (or anywhere: a test, a plug-in) that
calls `STRATEGIES.register(name, Strategy(...))`. It says whether the pretrained body stays
frozen (then its codes are computed once and cached, and the report reads them back), its
default epochs and views, which of the options only some strategies read it takes, and the
functions that train it and run its learning-rate range test. Nothing else names strategies:
`fit` looks the run's strategy up here, the command line lists the registered names.

Strategy modules import no torch at import time (their functions import what they run), so the
command line can list them without loading a network.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from tlvision.config import TrainConfig, option_fields
from tlvision.errors import UserError
from tlvision.registry import Registry

if TYPE_CHECKING:
    from torch import nn

    from tlvision.models.backbone import BackboneSpec
    from tlvision.training.checkpoint import TrainingCheckpoint
    from tlvision.training.run_setup import Log, RunSetup

    Train = Callable[[RunSetup, nn.Module, Log, TrainingCheckpoint | None], dict[str, Any]]
    Prepare = Callable[[RunSetup, Log, bool], RunSetup]
    RangeTest = Callable[[RunSetup, Log], Callable[[float], float]]

# The frozen routes' epochs: the classic recipe's (a head on codes takes seconds an epoch).
FROZEN_ROUTE_EPOCHS = 25
# The options only some strategies read; each strategy lists those it takes in `options`.
STRATEGY_OPTIONS = (
    "freeze_until", "batchnorm", "backbone_lr_mult", "stage", "head", "sampler",
)  # fmt: skip


@dataclass(frozen=True)
class Strategy:
    name: str
    help: str  # one line: what trains
    frozen_body: bool  # the pretrained body never trains: codes once, cached, reused
    default_epochs: int
    default_views: int  # augmented views per train image beside its centre crop
    options: tuple[str, ...]  # of STRATEGY_OPTIONS, those this strategy reads
    train: Train  # (setup, model with a new head, log, checkpoint or None) -> summary
    # the setup with what this strategy decides before training (finetune: its BatchNorm mode
    # and kept views), given whether the run is fresh (not resumed)
    prepare: Prepare | None = None
    # a step of the learning-rate range test (rate -> loss) on this strategy's setup; None:
    # the strategy has no learning rate to find
    range_test: RangeTest | None = None
    # fills in defaults that depend on the backbone (finetune: the stage to freeze up to)
    with_backbone_defaults: Callable[[TrainConfig, BackboneSpec], TrainConfig] | None = None


STRATEGIES: Registry[Strategy] = Registry("strategy", "tlvision.training.strategies")


def strategy_of(config: TrainConfig) -> Strategy:
    return STRATEGIES.get(config.strategy)


def epochs_of(config: TrainConfig) -> int:
    return config.epochs if config.epochs is not None else strategy_of(config).default_epochs


def views_of(config: TrainConfig) -> int:
    return config.views if config.views is not None else strategy_of(config).default_views


def check_strategy_options(config: TrainConfig, backbone: BackboneSpec) -> None:
    """Refuse an option the strategy does not read, and stage names the backbone lacks."""
    strategy = strategy_of(config)
    defaults = {each.field: each for each in option_fields()}
    for name in STRATEGY_OPTIONS:
        if name in strategy.options or getattr(config, name) == defaults[name].default:
            continue
        readers = [each for each in STRATEGIES if name in STRATEGIES.get(each).options]
        raise UserError(
            f"{defaults[name].flag} applies to --strategy {' or '.join(readers)}, not "
            f"{strategy.name}"
        )
    for stage in (config.stage, config.freeze_until):
        if stage is not None and stage != "none":
            backbone.stage(stage)  # an unknown name is a clear error before any work


def with_defaults(config: TrainConfig, backbone: BackboneSpec) -> TrainConfig:
    """`config` with its strategy's defaults filled in where it left them unset: what a run
    records, so that a resumed run reads back the same choices (idempotent)."""
    strategy = strategy_of(config)
    config = replace(config, epochs=epochs_of(config), views=views_of(config))
    if strategy.with_backbone_defaults is not None:
        config = strategy.with_backbone_defaults(config, backbone)
    return config


def strategy_help() -> str:
    """Each registered strategy and what it trains, for --strategy's help."""
    return "; ".join(f"{name}: {STRATEGIES.get(name).help}" for name in STRATEGIES)
