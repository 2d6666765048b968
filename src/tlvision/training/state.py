"""What a fine-tuning run carries from one epoch to the next: saved after each, restored on
--resume.

The checkpoint (checkpoint.TrainingCheckpoint) holds the unwrapped model, the best epoch's
weights, the optimizer, the scheduler, the random generators and `Progress`; restoring puts all
of it back, so a run resumed on the same number of processes draws and steps as the uninterrupted
one would have. With another
number of processes the batches per epoch differ, and the schedule is replayed for them.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from tlvision.runs.layout import METRICS_FILE
from tlvision.training.checkpoint import (
    TrainingCheckpoint,
    capture_random_state,
    restore_random_state,
    save_training_checkpoint,
)
from tlvision.training.run_setup import RunSetup


@dataclass
class Progress:
    """Where a fine-tuning run stands: what a checkpoint saves beside the tensors."""

    first_epoch: int = 1
    best_val_acc: float = -1.0
    best_epoch: int = 0
    skipped: set[Path] = field(default_factory=set)  # unreadable files met so far
    seconds_before: float = 0.0
    steps_per_epoch: int = 0  # batches per epoch per process (differs with the process count)
    # float16's loss scale as the gradient scaler has tuned it ({} when there is no scaler): a
    # resumed run starting again from the initial scale would skip steps the first one made
    scaler_state: dict[str, float | int] = field(default_factory=dict)


def scaler_state(scaler: torch.amp.GradScaler) -> dict[str, float | int]:
    """The gradient scaler's state as plain numbers (the checkpoint's JSON holds it)."""
    return {key: float(value) if isinstance(value, float) else int(value)
            for key, value in scaler.state_dict().items()}  # fmt: skip


def restore(
    checkpoint: TrainingCheckpoint,
    setup: RunSetup,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    steps_per_epoch: int,
) -> tuple[Progress, dict[str, torch.Tensor]]:
    """Put the model, optimizer, scheduler and random generators back as the checkpoint left
    them; drop metrics lines written after it (killed between the two: that epoch is redone).

    The checkpoint holds the unwrapped model, so any number of processes can resume it; with
    another number the batches per epoch differ and the schedule is replayed for the new one.
    """
    device = next(model.parameters()).device
    model.load_state_dict(checkpoint.model_state)
    best_state = {name: tensor.to(device) for name, tensor in checkpoint.best_state.items()}
    optimizer.load_state_dict(checkpoint.optimizer_state)
    same_steps = checkpoint.info.get("steps_per_epoch", steps_per_epoch) == steps_per_epoch
    same_epochs = checkpoint.info["config"].get("epochs") == setup.config.epochs  # --epochs
    if same_steps and same_epochs:
        scheduler.load_state_dict(checkpoint.scheduler_state)
    else:  # the schedule of this run's length, as if it had been set from the start
        replay_schedule(optimizer, scheduler, checkpoint.epoch * steps_per_epoch)
    restore_random_state(checkpoint.random_state)
    metrics_path = setup.config.out_dir / METRICS_FILE
    if setup.distributed.is_main:
        lines = metrics_path.read_text().splitlines() if metrics_path.exists() else []
        kept = lines[: checkpoint.epoch]
        metrics_path.write_text("".join(line + "\n" for line in kept))
    progress = Progress(
        first_epoch=checkpoint.epoch + 1,
        best_val_acc=checkpoint.info["best_val_acc"],
        best_epoch=checkpoint.info["best_epoch"],
        skipped={Path(path) for path in checkpoint.info["skipped_files"]},
        seconds_before=checkpoint.info["seconds"],
        scaler_state=checkpoint.info.get("scaler", {}),
    )
    return progress, best_state


def replay_schedule(
    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler, steps: int
) -> None:
    """Step a fresh schedule `steps` times from the start, as if this run had made them."""
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"]
    with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": intended
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(steps):
            scheduler.step()


def save_checkpoint(
    setup: RunSetup,
    epoch: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    progress: Progress,
    best_state: dict[str, torch.Tensor],
    started: float,
) -> None:
    """Everything needed to continue exactly after this epoch, in one atomically written file."""
    info = {
        "config": setup.config.to_json(),
        "best_val_acc": progress.best_val_acc,
        "best_epoch": progress.best_epoch,
        "skipped_files": sorted(str(path) for path in progress.skipped),
        "seconds": progress.seconds_before + time.perf_counter() - started,
        "steps_per_epoch": progress.steps_per_epoch,
        "processes": setup.distributed.world_size,
        "scaler": progress.scaler_state,
    }
    save_training_checkpoint(
        setup.config.out_dir,
        TrainingCheckpoint(
            epoch=epoch,
            model_state=model.state_dict(),
            best_state=best_state,
            optimizer_state=optimizer.state_dict(),
            scheduler_state=scheduler.state_dict(),
            random_state=capture_random_state(),
            info=info,
        ),
    )
