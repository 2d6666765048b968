"""Training: resolve the run, then either the frozen routes on cached codes or fine-tuning.

`fit` reads top to bottom: set the run up (data, weights, device, run directory), hand the
frozen routes to `codes_training`, else fine-tune: epochs of a train phase and a val phase, a
checkpoint after each, the best val weights restored and saved at the end. The loop is plain
PyTorch on purpose.
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from tlvision.backbones import choose_weights, create_model, get_backbone, preprocessing_for
from tlvision.checkpoint import (
    TRAINING_CHECKPOINT,
    TrainingCheckpoint,
    capture_random_state,
    load_training_checkpoint,
    restore_random_state,
    save_training_checkpoint,
)
from tlvision.codes_training import fit_on_codes
from tlvision.config import CODES_STRATEGIES, TrainConfig, validate_config
from tlvision.data import (
    ImageDataset,
    build_transforms,
    default_num_workers,
    find_splits,
    inverse_frequency_weights,
    make_loader,
    reseed_loader,
)
from tlvision.devices import resolve_device
from tlvision.errors import UserError
from tlvision.progress import progress_bar
from tlvision.runs import (
    CODES_RUN_CONFIG,
    METRICS_FILE,
    SUMMARY_FILE,
    Log,
    RunSetup,
    append_metrics,
    finish_run,
    prepare_run_dir,
    write_val_split,
)
from tlvision.schedules import make_scheduler
from tlvision.strategies import (
    apply_finetuning,
    count_parameters,
    parameter_groups,
    set_train_mode,
)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def fit(
    config: TrainConfig, *, log: Log = print, checkpoint: TrainingCheckpoint | None = None
) -> dict[str, Any]:
    """Train a classifier as `config` says and leave a complete run directory behind.

    With `checkpoint` (see `resume`), carry on from the end of its epoch instead of starting.
    """
    validate_config(config)
    setup = set_up(config, log, fresh=checkpoint is None)
    model = create_model(setup.backbone, len(setup.splits.class_names), setup.weights)
    if config.strategy in CODES_STRATEGIES:
        return fit_on_codes(setup, model, log)
    return finetune(setup, model, log, checkpoint)


def set_up(config: TrainConfig, log: Log, *, fresh: bool) -> RunSetup:
    """Resolve the data, backbone, weights, preprocessing and device; make the run directory."""
    splits = find_splits(config.data_dir, val_split=config.val_split, seed=config.seed)
    backbone = get_backbone(config.backbone)
    for stage_name in (config.freeze_until, config.stage):
        if stage_name is not None:
            backbone.stage(stage_name)  # an unknown name is a clear error before any work
    device = resolve_device(config.device)
    if fresh:
        prepare_run_dir(config.out_dir, overwrite=config.overwrite)
    weights = choose_weights(backbone, config.weights)
    if not weights.pretrained:
        log(
            "note: --weights none: training from random initialisation, not from pretrained weights"
        )
    class_weights = None
    if config.class_weights == "auto":
        class_weights = inverse_frequency_weights(splits.class_counts("train"))
        pairs = zip(splits.class_names, class_weights, strict=True)
        log("class weights: " + ", ".join(f"{name} {weight:.3f}" for name, weight in pairs))
    setup = RunSetup(
        config=config,
        splits=splits,
        backbone=backbone,
        weights=weights,
        preprocessing=preprocessing_for(backbone, weights, input_size=config.input_size),
        device=device,
        num_workers=default_num_workers() if config.num_workers is None else config.num_workers,
        class_weights=class_weights,
    )
    seed_everything(config.seed)
    write_val_split(setup)
    return setup


@dataclass
class _Progress:
    """Where a fine-tuning run stands: what a checkpoint saves beside the tensors."""

    first_epoch: int = 1
    best_val_acc: float = -1.0
    best_epoch: int = 0
    skipped: set[Path] = field(default_factory=set)  # unreadable files met so far
    seconds_before: float = 0.0


def finetune(
    setup: RunSetup, model: nn.Module, log: Log, checkpoint: TrainingCheckpoint | None
) -> dict[str, Any]:
    """Fine-tune every trainable layer, a checkpoint after each epoch; save the best epoch's."""
    started = time.perf_counter()
    config, device = setup.config, setup.device
    apply_finetuning(
        model, setup.backbone,
        freeze_until=config.freeze_until, backbone_lr_mult=config.backbone_lr_mult,
    )  # fmt: skip
    # channels_last: the convolutions' fast layout (about 2x faster forward on CPU, measured).
    model.to(device).to(memory_format=torch.channels_last)
    loaders = _loaders(setup)
    optimizer = torch.optim.SGD(
        parameter_groups(
            model, setup.backbone,
            learning_rate=config.learning_rate, backbone_lr_mult=config.backbone_lr_mult,
        ),
        lr=config.learning_rate, momentum=config.momentum, weight_decay=config.weight_decay,
    )  # fmt: skip
    scheduler = make_scheduler(
        optimizer, config.schedule, epochs=config.epochs,
        steps_per_epoch=len(loaders["train"]),
        step_epochs=config.step_epochs, step_gamma=config.step_gamma,
    )  # fmt: skip
    weight = setup.class_weights
    criterion = nn.CrossEntropyLoss(weight=None if weight is None else torch.tensor(weight))
    criterion.to(device)
    trainable, total = count_parameters(model)
    log(
        f"{config.strategy}: {setup.backbone.name} ({setup.weights.label}), "
        f"{len(setup.splits.class_names)} classes, {len(setup.splits.samples['train'])} train / "
        f"{len(setup.splits.samples['val'])} val images, {trainable:,} of {total:,} parameters "
        f"trainable, device {device}"
    )
    progress, best_state = _Progress(), copy.deepcopy(model.state_dict())
    if checkpoint is not None:
        progress, best_state = _restore(checkpoint, model, optimizer, scheduler, config.out_dir)
    _run_epochs(
        setup, model, loaders, criterion, optimizer, scheduler, progress, best_state, log,
        started,
    )  # fmt: skip
    model.load_state_dict(best_state)
    return finish_run(
        setup, model.cpu(), log,
        seconds=progress.seconds_before + time.perf_counter() - started,
        skipped=progress.skipped,
        extra={"resumed_from_epoch": None if checkpoint is None else checkpoint.epoch},
    )  # fmt: skip


def _loaders(setup: RunSetup) -> dict[str, DataLoader[tuple[torch.Tensor, int]]]:
    transforms = build_transforms(setup.preprocessing)
    return {
        phase: make_loader(
            ImageDataset(setup.splits.samples[phase], setup.splits.class_names, transforms[phase]),
            batch_size=setup.config.batch_size,
            shuffle=phase == "train",
            num_workers=setup.num_workers,
            seed=setup.config.seed,
            pin_memory=setup.device.type == "cuda",
        )
        for phase in ("train", "val")
    }


def _restore(
    checkpoint: TrainingCheckpoint,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    run_dir: Path,
) -> tuple[_Progress, dict[str, torch.Tensor]]:
    """Put the model, optimizer, scheduler and random generators back as the checkpoint left
    them; drop metrics lines written after it (killed between the two: that epoch is redone)."""
    device = next(model.parameters()).device
    model.load_state_dict(checkpoint.model_state)
    best_state = {name: tensor.to(device) for name, tensor in checkpoint.best_state.items()}
    optimizer.load_state_dict(checkpoint.optimizer_state)
    scheduler.load_state_dict(checkpoint.scheduler_state)
    restore_random_state(checkpoint.random_state)
    metrics_path = run_dir / METRICS_FILE
    kept = (
        metrics_path.read_text().splitlines()[: checkpoint.epoch] if metrics_path.exists() else []
    )
    metrics_path.write_text("".join(line + "\n" for line in kept))
    progress = _Progress(
        first_epoch=checkpoint.epoch + 1,
        best_val_acc=checkpoint.info["best_val_acc"],
        best_epoch=checkpoint.info["best_epoch"],
        skipped={Path(path) for path in checkpoint.info["skipped_files"]},
        seconds_before=checkpoint.info["seconds"],
    )
    return progress, best_state


def _run_epochs(
    setup: RunSetup,
    model: nn.Module,
    loaders: dict[str, DataLoader[tuple[torch.Tensor, int]]],
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    progress: _Progress,
    best_state: dict[str, torch.Tensor],
    log: Log,
    started: float,
) -> None:
    """The epochs from `progress.first_epoch` on: train, validate, record, checkpoint.

    `progress` and `best_state` (the best val epoch's weights) are updated in place.
    """
    config, device = setup.config, setup.device
    skipped = progress.skipped
    epoch = progress.first_epoch - 1
    try:
        for epoch in range(progress.first_epoch, config.epochs + 1):
            epoch_started = time.perf_counter()
            learning_rate = optimizer.param_groups[0]["lr"]
            for loader in loaders.values():
                reseed_loader(loader, config.seed, epoch)
            train_loss, train_acc, unreadable_train = train_one_epoch(
                model, loaders["train"], criterion, optimizer, scheduler, device,
                description=f"epoch {epoch}/{config.epochs} train",
            )  # fmt: skip
            val_loss, val_acc, unreadable_val = evaluate(
                model, loaders["val"], criterion, device,
                description=f"epoch {epoch}/{config.epochs} val",
            )  # fmt: skip
            if not math.isfinite(val_loss):
                raise NonFiniteLoss(val_loss, -1)
            skipped |= {setup.splits.samples["train"][index][0] for index in unreadable_train}
            skipped |= {setup.splits.samples["val"][index][0] for index in unreadable_val}
            improved = val_acc > progress.best_val_acc
            if improved:
                progress.best_val_acc, progress.best_epoch = val_acc, epoch
                best_state.update(copy.deepcopy(model.state_dict()))
            record = {
                "epoch": epoch, "train_loss": train_loss, "train_acc": train_acc,
                "val_loss": val_loss, "val_acc": val_acc, "lr": learning_rate,
                "seconds": time.perf_counter() - epoch_started,
            }  # fmt: skip
            append_metrics(config.out_dir, record)
            _save_checkpoint(
                setup, epoch, model, optimizer, scheduler, progress, best_state, started
            )
            log(
                f"epoch {epoch:>3}/{config.epochs}  "
                f"train loss {train_loss:.4f} acc {train_acc:.4f}  "
                f"val loss {val_loss:.4f} acc {val_acc:.4f}  lr {learning_rate:.2e}  "
                f"{record['seconds']:.1f}s{'  best' if improved else ''}"
            )
    except NonFiniteLoss as error:
        raise UserError(
            f"epoch {epoch}: the loss became {error.value}, so training stopped; lower --lr "
            f"(now {config.learning_rate}). {config.out_dir / TRAINING_CHECKPOINT} keeps the last "
            f"good epoch ({epoch - 1})"
        ) from error
    except KeyboardInterrupt:
        log(
            f"\ninterrupted in epoch {epoch}; {config.out_dir / TRAINING_CHECKPOINT} holds epoch "
            f"{epoch - 1}: continue with `tlvision train --resume {config.out_dir}`"
        )
        raise


def _save_checkpoint(
    setup: RunSetup,
    epoch: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    progress: _Progress,
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


def resume(run_dir: Path, *, log: Log = print) -> dict[str, Any]:
    """Continue a run from its last checkpoint, exactly as if it had never stopped.

    The frozen routes keep no per-epoch checkpoint: their codes are cached, so a killed run is
    simply run again from its recorded config (a few seconds).
    """
    frozen_config = run_dir / CODES_RUN_CONFIG
    if not (run_dir / TRAINING_CHECKPOINT).exists() and frozen_config.is_file():
        config = TrainConfig.from_json(json.loads(frozen_config.read_text()))
        if (run_dir / SUMMARY_FILE).exists():
            raise UserError(f"{run_dir}: this run already finished; its model is model.safetensors")
        log(f"resuming {run_dir}: re-running the head on the cached codes")
        return fit(replace(config, out_dir=run_dir, overwrite=True), log=log)
    checkpoint = load_training_checkpoint(run_dir)
    config = replace(TrainConfig.from_json(checkpoint.info["config"]), out_dir=run_dir)
    if checkpoint.epoch >= config.epochs:
        raise UserError(
            f"{run_dir}: this run already finished all {config.epochs} epochs; its model is "
            "model.safetensors (train again with a new --out to go further)"
        )
    log(f"resuming {run_dir} after epoch {checkpoint.epoch} of {config.epochs}")
    return fit(config, log=log, checkpoint=checkpoint)


def autocast_for(device: torch.device) -> torch.autocast:
    """bfloat16 autocast on CUDA (no loss scaling needed); full precision elsewhere."""
    enabled = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


class NonFiniteLoss(Exception):
    def __init__(self, value: float, batch: int) -> None:
        super().__init__(f"loss {value} at batch {batch}")
        self.value, self.batch = value, batch


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader[tuple[torch.Tensor, int]],
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
    description: str = "train",
) -> tuple[float, float, list[int]]:
    """One pass over the training data; returns (mean loss, accuracy, unreadable indices)."""
    set_train_mode(model)
    loss_sum, correct, seen, unreadable = 0.0, 0, 0, []
    batches = progress_bar(loader, desc=description, leave=False)
    for batch, (images, labels, batch_unreadable) in enumerate(batches):
        unreadable.extend(batch_unreadable)
        if len(labels) == 0:
            continue
        images = images.to(device, non_blocking=True, memory_format=torch.channels_last)
        labels = labels.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with autocast_for(device):
            logits = model(images)
            loss = criterion(logits.float(), labels)
        if not torch.isfinite(loss):
            # Stop before the step: one NaN update would spoil every weight it touches.
            raise NonFiniteLoss(loss.item(), batch)
        loss.backward()
        optimizer.step()
        scheduler.step()
        loss_sum += loss.item() * labels.shape[0]
        correct += int((logits.argmax(dim=1) == labels).sum())
        seen += labels.shape[0]
    return loss_sum / max(1, seen), correct / max(1, seen), unreadable


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: DataLoader[tuple[torch.Tensor, int]],
    criterion: nn.Module,
    device: torch.device,
    description: str = "val",
) -> tuple[float, float, list[int]]:
    """One pass over the validation data; returns (mean loss, accuracy, unreadable indices)."""
    model.eval()
    loss_sum, correct, seen, unreadable = 0.0, 0, 0, []
    batches = progress_bar(loader, desc=description, leave=False)
    for images, labels, batch_unreadable in batches:
        unreadable.extend(batch_unreadable)
        if len(labels) == 0:
            continue
        images = images.to(device, non_blocking=True, memory_format=torch.channels_last)
        labels = labels.to(device, non_blocking=True)
        with autocast_for(device):
            logits = model(images)
            loss = criterion(logits.float(), labels)
        loss_sum += loss.item() * labels.shape[0]
        correct += int((logits.argmax(dim=1) == labels).sum())
        seen += labels.shape[0]
    return loss_sum / max(1, seen), correct / max(1, seen), unreadable
