"""The learning-rate range test: train briefly while the rate grows exponentially, watch the loss.

One SGD step per rate on a geometric ramp from `start` to `end`; the loss is smoothed (an
exponential moving average, bias-corrected) and the test stops once it diverges (non-finite, or
4x the lowest smoothed loss). The suggestion is the rate of the lowest smoothed loss divided by
10 (Smith 2017; the rule fastai's first lr_find used): a rate that still descends steeply but
well before the loss blows up. The frozen routes run it on the cached CNN codes (seconds); fine-
tuning runs it on images, with the run's augmentation and per-group rates, on a throwaway copy.
"""

from __future__ import annotations

import itertools
import math
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tlvision.codes.cache import FeatureCache, default_cache_dir
from tlvision.codes.split_codes import extract_split_codes
from tlvision.config import TrainConfig
from tlvision.errors import UserError
from tlvision.models.network import create_model, head_of
from tlvision.training.batchnorm import backbone_lr_mult_of
from tlvision.training.freezing import (
    apply_finetuning,
    frozen_stage,
    parameter_groups,
    set_train_mode,
)
from tlvision.training.run_setup import Log, RunSetup
from tlvision.training.setup import set_up
from tlvision.training.strategy import strategy_of, views_of

SMOOTHING = 0.98  # weight of the running average: the last ~50 steps
DIVERGENCE = 4.0  # stop when the smoothed loss exceeds this times its lowest value
MIN_STEPS_BEFORE_STOP = 10
SUGGESTION_DIVISOR = 10.0
DEFAULT_STEPS = {"codes": 300, "images": 100}  # a finetune step is a full forward + backward
HEAD_START_RATE = TrainConfig.learning_rate  # finetune's head start on codes: --lr's default


@dataclass(frozen=True)
class RangeTest:
    rates: list[float]
    losses: list[float]  # smoothed
    raw_losses: list[float]
    suggested: float
    diverged: bool  # stopped before the end of the ramp
    route: str  # "codes" or "images"

    def to_json(self) -> dict[str, Any]:
        return {
            "suggested_lr": self.suggested,
            "route": self.route,
            "steps": len(self.rates),
            "diverged": self.diverged,
            "rates": self.rates,
            "smoothed_losses": self.losses,
            "raw_losses": self.raw_losses,
        }


def ramp(start: float, end: float, steps: int) -> np.ndarray:
    if not (0 < start < end) or steps < 2:
        raise UserError(
            f"lr-find: --start-lr {start:g}, --end-lr {end:g}, --steps {steps}: need "
            "0 < --start-lr < --end-lr and at least 2 --steps"
        )
    return np.geomspace(start, end, steps)


def suggest(rates: list[float], smoothed: list[float]) -> float:
    """The rate of the lowest smoothed loss divided by 10, never below the ramp's start."""
    lowest = int(np.argmin(smoothed))
    return max(rates[0], rates[lowest] / SUGGESTION_DIVISOR)


def run_range_test(step: Callable[[float], float], rates: np.ndarray, route: str) -> RangeTest:
    """Call `step(rate)` (one training step at that rate, returning its loss) along the ramp."""
    average, best = 0.0, math.inf
    tried: list[float] = []
    smoothed: list[float] = []
    raw: list[float] = []
    diverged = False
    for number, rate in enumerate(rates, start=1):
        loss = step(float(rate))
        if not math.isfinite(loss):
            diverged = True
            break
        average = SMOOTHING * average + (1 - SMOOTHING) * loss
        value = average / (1 - SMOOTHING**number)
        tried.append(float(rate))
        raw.append(loss)
        smoothed.append(value)
        best = min(best, value)
        if number > MIN_STEPS_BEFORE_STOP and value > DIVERGENCE * best:
            diverged = True
            break
    if len(tried) < 2:
        raise UserError("lr-find: the loss diverged at once; lower --start-lr")
    return RangeTest(tried, smoothed, raw, suggest(tried, smoothed), diverged, route)


def _set_rate(optimizer: torch.optim.Optimizer, rate: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = rate * group["multiplier"]


def codes_step(setup: RunSetup, log: Log, *, stage: str | None) -> Callable[[float], float]:
    """One SGD step of a fresh head on a random batch of the cached train codes of `stage`."""
    config = setup.config
    model = create_model(setup.backbone, len(setup.splits.class_names), setup.weights)
    cache = (
        None if config.no_cache else FeatureCache(config.cache_dir or default_cache_dir(), log=log)
    )
    codes = extract_split_codes(
        model, setup.backbone, setup.splits, weights=setup.weights.label,
        preprocessing=setup.preprocessing, cache=cache, stages=[stage],
        augmented_views=views_of(config), seed=config.seed, batch_size=config.batch_size,
        num_workers=setup.num_workers, device=setup.device, log=log,
    )[stage]  # fmt: skip
    train, labels = codes.stacked_train()
    inputs = torch.from_numpy(np.asarray(train, dtype=np.float32))
    targets = torch.from_numpy(labels)
    layer = nn.Linear(inputs.shape[1], len(setup.splits.class_names))
    if stage is None:
        layer.load_state_dict(head_of(model, setup.backbone).state_dict())
    optimizer = torch.optim.SGD(
        [{"params": layer.parameters(), "multiplier": 1.0}], lr=1.0,
        momentum=config.momentum, weight_decay=config.weight_decay,
    )  # fmt: skip
    criterion = _criterion(setup)
    generator = torch.Generator().manual_seed(config.seed)

    def step(rate: float) -> float:
        rows = torch.randint(
            len(targets), (min(config.batch_size, len(targets)),), generator=generator
        )
        _set_rate(optimizer, rate)
        optimizer.zero_grad()
        loss = criterion(layer(inputs[rows]), targets[rows])
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def _criterion(setup: RunSetup) -> nn.Module:
    weight = None if setup.class_weights is None else torch.tensor(setup.class_weights)
    return nn.CrossEntropyLoss(weight=weight).to(setup.device)


@dataclass
class FinetuneRangeTest:
    """What a fine-tuning range test steps: the network the run's epochs train (the stages
    after the kept frozen prefix, or the whole model), its head as the run starts it, the
    optimizer with the run's per-group rates as multiples of the rate tried."""

    network: nn.Module
    optimizer: torch.optim.Optimizer
    batches: Iterator[Any]
    head_started: bool


def finetune_range_test(setup: RunSetup, log: Log) -> FinetuneRangeTest:
    """The run's own setup (tlvision.training.finetune): its BatchNorm mode and
    --backbone-lr-mult resolved as the run will; with kept views, the frozen prefix run once
    and the head started on codes (at the default --lr, HEAD_START_RATE), then trained at the
    pretrained layers' rate (lr x mult), as `make_optimizer` does."""
    from tlvision.training.finetune import (
        HEAD_START_EPOCHS,
        keep_frozen_prefix,
        make_loaders,
        prefix_loaders,
    )
    from tlvision.training.frozen_prefix import start_head_from_codes

    config, multiplier = setup.config, backbone_lr_mult_of(setup.config)
    model = create_model(setup.backbone, len(setup.splits.class_names), setup.weights)
    apply_finetuning(
        model, setup.backbone, freeze_until=frozen_stage(config), backbone_lr_mult=multiplier
    )
    model.to(setup.device).to(memory_format=torch.channels_last)
    kept = keep_frozen_prefix(setup, model, log)
    network: nn.Module = model
    if kept is None:
        loaders = make_loaders(setup)
    else:
        activations, network = kept
        loaders = prefix_loaders(activations, setup)
        start_head_from_codes(
            kept[1], head_of(model, setup.backbone), activations, epochs=HEAD_START_EPOCHS,
            learning_rate=HEAD_START_RATE, batch_size=config.batch_size, seed=config.seed,
            class_weights=setup.class_weights, log=log,
        )  # fmt: skip
    groups = parameter_groups(model, setup.backbone, learning_rate=1.0, backbone_lr_mult=multiplier)
    if kept is not None:
        groups[0]["lr"] = multiplier  # the started head goes on at the body's rate
    for group in groups:
        group["multiplier"] = group["lr"]
    optimizer = torch.optim.SGD(
        groups, lr=1.0, momentum=config.momentum, weight_decay=config.weight_decay
    )
    set_train_mode(network, keep_batchnorm_statistics=config.batchnorm == "frozen")
    return FinetuneRangeTest(network, optimizer, _endless(loaders["train"]), kept is not None)


def finetune_step(setup: RunSetup, log: Log) -> Callable[[float], float]:
    """One fine-tuning step on a train batch of the run's own setup (`finetune_range_test`)."""
    test = finetune_range_test(setup, log)
    criterion = _criterion(setup)

    def step(rate: float) -> float:
        images, labels, _unreadable = next(test.batches)
        _set_rate(test.optimizer, rate)
        test.optimizer.zero_grad()
        loss = criterion(test.network(images.to(setup.device)), labels.to(setup.device))
        loss.backward()
        test.optimizer.step()
        return loss.item()

    return step


def _endless(loader: Any) -> Iterator[Any]:
    for _ in itertools.count():
        yield from (batch for batch in loader if len(batch[1]))


def find_learning_rate(
    config: TrainConfig,
    *,
    start: float = 1e-6,
    end: float = 1.0,
    steps: int | None = None,
    log: Log = print,
    progress: bool = True,
) -> RangeTest:
    """The range test of `config`'s strategy (its `range_test`): on the cached codes for a
    frozen body, on images when the body trains."""
    config = replace(config, learning_rate=1.0)  # each step sets its own rate
    strategy = strategy_of(config)
    if strategy.range_test is None:
        raise UserError(f"lr-find: --strategy {strategy.name} has no learning rate to find")
    route = "codes" if strategy.frozen_body else "images"
    rates = ramp(start, end, steps or DEFAULT_STEPS[route])
    # a scratch run directory: the test writes nothing into the real one (which may not exist)
    with tempfile.TemporaryDirectory(prefix="tlvision-lr-find-") as scratch:
        setup = set_up(replace(config, out_dir=Path(scratch), overwrite=True), log, fresh=False)
        stepper = strategy.range_test(setup, log)
        return run_range_test(_with_progress(stepper, len(rates), progress), rates, route)


def _with_progress(
    step: Callable[[float], float], total: int, enabled: bool
) -> Callable[[float], float]:
    """A bar when someone watches (tlvision.progress); never in --json mode (`enabled` off)."""
    from tlvision.progress import progress_bar

    bar = progress_bar(total=total, desc="lr-find", unit="step", leave=False,
                       disable=None if enabled else True)  # fmt: skip

    def counted(rate: float) -> float:
        loss = step(rate)
        bar.update(1)
        bar.set_postfix(lr=f"{rate:.1e}", loss=f"{loss:.3f}")
        return loss

    return counted
