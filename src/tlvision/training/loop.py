"""One epoch of training and one of validation: the inner loops of `training.finetune`.

Plain PyTorch: autocast at the run's precision, a gradient scaler for float16, and under
torchrun the epoch's sums reduced over every rank (tlvision.compute.distributed).
"""

from __future__ import annotations

from collections.abc import Callable, Sized
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from tlvision.compute import distributed
from tlvision.compute.devices import autocast_for
from tlvision.compute.distributed import Distributed
from tlvision.progress import progress_bar
from tlvision.training.freezing import set_train_mode
from tlvision.training.multilabel_loss import count_correct, observe


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
    *,
    precision: str = "32",
    scaler: torch.amp.GradScaler | None = None,
    job: Distributed | None = None,
    keep_batchnorm_statistics: bool = False,
    on_step: Callable[[], None] | None = None,
) -> tuple[float, float, list[int]]:
    """One pass over the training data; returns (mean loss, accuracy, unreadable indices).
    `on_step` runs after each optimizer step (a weight average's update, say).

    Under torchrun (`job`) `loader` holds this rank's share, and the returned numbers are the
    whole epoch's, summed over every rank.
    """
    job = job or Distributed()
    scaler = scaler or torch.amp.GradScaler(device.type, enabled=False)
    set_train_mode(model, keep_batchnorm_statistics=keep_batchnorm_statistics)
    loss_sum, correct, seen, unreadable = 0.0, 0, 0, []
    bar = _progress_bar(loader, description, job)
    for batch, (images, labels, batch_unreadable) in enumerate(loader):
        bar.update(len(labels) + len(batch_unreadable))
        unreadable.extend(batch_unreadable)
        if len(labels) == 0:
            continue
        images = images.to(device, non_blocking=True, memory_format=torch.channels_last)
        labels = labels.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with autocast_for(device, precision):
            logits = model(images)
            loss = criterion(logits.float(), labels)
        if not torch.isfinite(loss):
            # Stop before the step: one NaN update would spoil every weight it touches.
            raise NonFiniteLoss(loss.item(), batch)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        if on_step is not None:
            on_step()
        loss_sum += loss.item() * labels.shape[0]
        correct += count_correct(criterion, logits, labels)
        seen += labels.shape[0]
    bar.close()
    return _reduced(job, device, loss_sum, correct, seen, unreadable)


def _progress_bar(
    loader: DataLoader[tuple[torch.Tensor, int]], description: str, job: Distributed
) -> tqdm[Any]:
    """A bar counting images (so it shows images/s) as the caller wants it (tlvision.progress),
    for rank 0 only; the loops update it by each batch's size."""
    sampler = loader.sampler
    total = len(sampler) if isinstance(sampler, Sized) else None
    return progress_bar(
        total=total, desc=description, unit="img", leave=False,
        disable=None if job.is_main else True,
    )  # fmt: skip


def _reduced(
    job: Distributed,
    device: torch.device,
    loss_sum: float,
    correct: int,
    seen: int,
    unreadable: list[int],
) -> tuple[float, float, list[int]]:
    """(mean loss, accuracy, unreadable indices) over every rank's share of the data."""
    loss_sum, correct_sum, seen_sum = distributed.sum_over_ranks(
        job, [loss_sum, correct, seen], device
    )
    everyone_unreadable = distributed.gather_lists(job, unreadable)
    return loss_sum / max(1, seen_sum), correct_sum / max(1, seen_sum), everyone_unreadable


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: DataLoader[tuple[torch.Tensor, int]],
    criterion: nn.Module,
    device: torch.device,
    description: str = "val",
    *,
    precision: str = "32",
    job: Distributed | None = None,
) -> tuple[float, float, list[int]]:
    """One pass over the validation data; returns (mean loss, accuracy, unreadable indices).

    Under torchrun each rank scores its unpadded share (`ShardSampler`) and the sums are
    reduced: the numbers are the whole val set's, each image counted once.
    """
    job = job or Distributed()
    model.eval()
    loss_sum, correct, seen, unreadable = 0.0, 0, 0, []
    bar = _progress_bar(loader, description, job)
    for images, labels, batch_unreadable in loader:
        bar.update(len(labels) + len(batch_unreadable))
        unreadable.extend(batch_unreadable)
        if len(labels) == 0:
            continue
        images = images.to(device, non_blocking=True, memory_format=torch.channels_last)
        labels = labels.to(device, non_blocking=True)
        with autocast_for(device, precision):
            logits = model(images)
            loss = criterion(logits.float(), labels)
        observe(criterion, logits, labels)
        loss_sum += loss.item() * labels.shape[0]
        correct += count_correct(criterion, logits, labels)
        seen += labels.shape[0]
    bar.close()
    return _reduced(job, device, loss_sum, correct, seen, unreadable)
