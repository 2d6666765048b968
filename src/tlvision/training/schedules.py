"""Learning-rate schedules, one factory for every loop (the network's and the heads' on codes).

Every schedule steps once per batch, so each reads the same in any loop and a resumed run picks up
mid-schedule exactly where it stopped.
"""

from __future__ import annotations

import torch

from tlvision.config import SCHEDULES
from tlvision.errors import UserError


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    schedule: str,
    *,
    epochs: int,
    steps_per_epoch: int,
    step_epochs: int = 7,
    step_gamma: float = 0.1,
) -> torch.optim.lr_scheduler.LRScheduler:
    """`step`: x step_gamma every step_epochs epochs; `cosine`: to zero over the run;
    `onecycle`: up to each group's own rate and down again; `constant`."""
    total_steps = max(1, epochs * steps_per_epoch)
    if schedule == "step":
        return torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=max(1, step_epochs * steps_per_epoch), gamma=step_gamma
        )
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    if schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=[group["lr"] for group in optimizer.param_groups],
            total_steps=total_steps,
        )
    if schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    raise UserError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
