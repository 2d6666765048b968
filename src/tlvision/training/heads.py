"""Heads on CNN codes: a softmax linear layer trained with torch, as the classic loop's last layer
trains, on codes of one or several views per image (tlvision.training.sklearn_heads fits the
logistic regression and linear SVM heads). Every head ends up as a plain `nn.Linear` on raw
codes, so it can go back into the network: `models.network.install_head` puts a head trained
on top codes into the full model; `models.stages.StageClassifier` is the body cut at a stage
with a head on that stage's codes."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from tlvision.codes.shards import rows_per_block
from tlvision.errors import UserError
from tlvision.training.schedules import make_scheduler

OPTIMIZERS = ("sgd", "adamw")

Codes = np.ndarray  # (N, C) float32, in memory or a np.memmap
TrainCodes = np.ndarray | Sequence[np.ndarray]  # one array, or one (N, C) array per view


def code_views(train_codes: TrainCodes) -> list[np.ndarray]:
    views = [train_codes] if isinstance(train_codes, np.ndarray) else list(train_codes)
    if not views:
        raise ValueError("no training codes")
    shape = views[0].shape
    if len(shape) != 2 or any(view.shape != shape for view in views):
        raise ValueError(
            f"every view must be (N, C) with one shape; got {[v.shape for v in views]}"
        )
    return views


def label_array(labels: Any) -> np.ndarray:
    return np.asarray(labels, dtype=np.int64).reshape(-1)


def _gather(views: Sequence[np.ndarray], view_of: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Rows `rows` of `views[view_of[i]]`, as one float32 array (reads only those rows)."""
    out = np.empty((len(rows), views[0].shape[1]), dtype=np.float32)
    for view in np.unique(view_of).tolist():
        mask = view_of == view
        out[mask] = views[view][rows[mask]]
    return out


def feature_statistics(train_codes: TrainCodes) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and standard deviation over every view, read in blocks (memmap-safe).

    A feature that never varies gets a deviation of 1, so standardising leaves it at 0.
    """
    views = code_views(train_codes)
    dim = views[0].shape[1]
    block = rows_per_block(dim, itemsize=8)
    total, sums, squares = 0, np.zeros(dim), np.zeros(dim)
    for view in views:
        for start in range(0, view.shape[0], block):
            chunk = np.asarray(view[start : start + block], dtype=np.float64)
            total += chunk.shape[0]
            sums += chunk.sum(axis=0)
            squares += np.square(chunk).sum(axis=0)
    mean = sums / max(1, total)
    variance = np.maximum(squares / max(1, total) - np.square(mean), 0.0)
    std = np.sqrt(variance)
    std[std < 1e-12] = 1.0
    return mean, std


def fold_standardization(
    weight: np.ndarray, bias: np.ndarray, mean: np.ndarray, std: np.ndarray
) -> nn.Linear:
    """The nn.Linear on raw codes x equal to (weight, bias) applied to (x - mean) / std."""
    weight = np.asarray(weight, dtype=np.float64)
    folded_weight = weight / std[None, :]
    folded_bias = np.asarray(bias, dtype=np.float64) - folded_weight @ mean
    layer = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(folded_weight.astype(np.float32)))
        layer.bias.copy_(torch.from_numpy(folded_bias.astype(np.float32)))
    return layer


@torch.no_grad()
def _score(
    layer: nn.Linear,
    codes: np.ndarray,
    labels: np.ndarray,
    device: torch.device,
    transform: Callable[[torch.Tensor], torch.Tensor],
    weight: torch.Tensor | None = None,
) -> tuple[float, float]:
    """(cross-entropy, accuracy) of `layer` on `codes`, read in blocks; with class weights the
    loss is their weighted mean, as nn.CrossEntropyLoss(weight) computes it."""
    block = rows_per_block(codes.shape[1])
    loss_sum, weight_sum, correct = 0.0, 0.0, 0
    for start in range(0, codes.shape[0], block):
        inputs = torch.from_numpy(np.array(codes[start : start + block], dtype=np.float32))
        targets = torch.from_numpy(labels[start : start + block])
        logits = layer(transform(inputs.to(device)))
        on_device = targets.to(device)
        loss_sum += float(
            nn.functional.cross_entropy(logits, on_device, weight=weight, reduction="sum")
        )
        weight_sum += float(weight[on_device].sum()) if weight is not None else len(targets)
        correct += int((logits.argmax(dim=1).cpu() == targets).sum())
    return loss_sum / max(weight_sum, 1e-12), correct / max(1, codes.shape[0])


@dataclass(frozen=True)
class HeadTraining:
    """How a softmax head trains on codes: the classic loop's last layer by default."""

    epochs: int = 25
    learning_rate: float = 0.01
    batch_size: int = 32
    weight_decay: float = 0.0
    momentum: float = 0.9
    optimizer: str = "sgd"  # or adamw
    schedule: str = "step"
    step_epochs: int = 7
    step_gamma: float = 0.1
    seed: int = 0
    standardize: bool = False  # train on standardised codes, the scaler folded into the layer
    keep_best: bool = True  # the best val epoch's weights (ties: the earliest), else the last's


def train_linear_head(
    train_codes: TrainCodes,
    train_labels: Any,
    val_codes: Codes,
    val_labels: Any,
    *,
    num_classes: int,
    training: HeadTraining = HeadTraining(),
    init: nn.Linear | None = None,
    class_weights: Sequence[float] | None = None,
    device: torch.device | str = "cpu",
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[nn.Linear, list[dict[str, Any]]]:
    """Train a softmax linear layer on codes; return it (on the CPU) and per-epoch metrics.

    `train_codes`: one (N, C) array, or one per view of the same N images (each epoch sees every
    image once, under a random view, so epochs and schedules mean what the classic loop's do).
    `init`: start from that layer (the model's new head). `class_weights` weight the
    cross-entropy. History records: epoch, train_loss, train_acc, val_loss, val_acc, lr,
    seconds (each also given to `on_epoch`).
    """
    t = training
    views, labels = code_views(train_codes), label_array(train_labels)
    val_targets = label_array(val_labels)
    count, dim = views[0].shape
    _check_head_inputs(labels, val_targets, count, len(val_codes), t)
    device = torch.device(device)
    layer = _initial_layer(dim, num_classes, init, t.seed).to(device)
    mean, std = feature_statistics(views) if t.standardize else (np.zeros(dim), np.ones(dim))
    opt = _optimizer(t, layer)
    run = _HeadRun(
        layer=layer, views=views, labels=labels, val_codes=val_codes, val_labels=val_targets,
        transform=_standardizer(mean, std, device),
        weight=_class_weight_tensor(class_weights, num_classes, device), optimizer=opt,
        scheduler=make_scheduler(
            opt, t.schedule, epochs=t.epochs, steps_per_epoch=math.ceil(count / t.batch_size),
            step_epochs=t.step_epochs, step_gamma=t.step_gamma,
        ),
        rng=np.random.default_rng(t.seed), batch_size=t.batch_size,
    )  # fmt: skip
    best_acc, best_state, history = -1.0, copy.deepcopy(layer.state_dict()), []
    for epoch in range(1, t.epochs + 1):
        record = _head_epoch(run, epoch)
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
        if t.keep_best and record["val_acc"] > best_acc:
            best_acc, best_state = record["val_acc"], copy.deepcopy(layer.state_dict())
    if t.keep_best:
        layer.load_state_dict(best_state)
    # the scaler folded in: the returned layer reads raw codes (an identity fold without it)
    weights = layer.cpu().weight.detach().numpy(), layer.bias.detach().numpy()
    return fold_standardization(*weights, mean, std), history


@dataclass
class _HeadRun:
    """What the epochs of one linear head's training share."""

    layer: nn.Linear
    views: list[np.ndarray]
    labels: np.ndarray
    val_codes: Codes
    val_labels: np.ndarray
    transform: Callable[[torch.Tensor], torch.Tensor]
    weight: torch.Tensor | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    rng: np.random.Generator
    batch_size: int


def _head_epoch(run: _HeadRun, epoch: int) -> dict[str, Any]:
    """Every image once, in a new order, under a view drawn at random; then the val score."""
    started, lr = time.perf_counter(), float(run.optimizer.param_groups[0]["lr"])
    count = len(run.labels)
    view_of: np.ndarray = np.asarray(run.rng.integers(len(run.views), size=count))
    train_loss, train_acc = _epoch(
        run.layer, run.views, run.labels, run.rng.permutation(count), view_of, run.batch_size,
        run.transform, run.weight, run.optimizer, run.scheduler,
    )  # fmt: skip
    device = next(run.layer.parameters()).device
    val_loss, val_acc = _score(
        run.layer, run.val_codes, run.val_labels, device, run.transform, run.weight
    )
    if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
        raise UserError(f"epoch {epoch}: the loss became non-finite; lower the learning rate")
    return {
        "epoch": epoch, "train_loss": train_loss, "train_acc": train_acc,
        "val_loss": val_loss, "val_acc": val_acc, "lr": lr,
        "seconds": time.perf_counter() - started,
    }  # fmt: skip


def _check_head_inputs(
    labels: np.ndarray, val_labels: np.ndarray, count: int, val_count: int, t: HeadTraining
) -> None:
    if labels.shape[0] != count or val_labels.shape[0] != val_count:
        raise ValueError("codes and labels differ in length")
    if count == 0:
        raise UserError("no training codes to train a head on")
    if t.epochs < 1 or t.batch_size < 1 or not t.learning_rate > 0:
        raise UserError("epochs and batch size must be at least 1 and the learning rate positive")


def _epoch(
    layer: nn.Linear,
    views: Sequence[np.ndarray],
    labels: np.ndarray,
    order: np.ndarray,
    view_of: np.ndarray,
    batch_size: int,
    transform: Callable[[torch.Tensor], torch.Tensor],
    weight: torch.Tensor | None,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> tuple[float, float]:
    """One pass over the images in `order`, image i under view `view_of[i]`; (loss, accuracy)."""
    device = next(layer.parameters()).device
    layer.train()
    loss_sum, correct = 0.0, 0
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        inputs = transform(torch.from_numpy(_gather(views, view_of[rows], rows)).to(device))
        loss, batch_correct = _step(layer, inputs, labels[rows], weight, optimizer, scheduler)
        loss_sum, correct = loss_sum + loss * len(rows), correct + batch_correct
    layer.eval()
    return loss_sum / len(order), correct / len(order)


def _initial_layer(dim: int, num_classes: int, init: nn.Linear | None, seed: int) -> nn.Linear:
    """A copy of `init`, or a new layer initialised from `seed` (global RNG untouched)."""
    layer = nn.Linear(dim, num_classes)
    if init is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            layer.reset_parameters()
        return layer
    if (init.in_features, init.out_features) != (dim, num_classes):
        raise ValueError(
            f"init is Linear({init.in_features}, {init.out_features}); the codes need "
            f"Linear({dim}, {num_classes})"
        )
    layer.load_state_dict({k: v.detach().cpu() for k, v in init.state_dict().items()})
    return layer


def _class_weight_tensor(
    class_weights: Sequence[float] | None, num_classes: int, device: torch.device
) -> torch.Tensor | None:
    if class_weights is None:
        return None
    if len(class_weights) != num_classes:
        raise ValueError(f"{len(class_weights)} class weights for {num_classes} classes")
    return torch.tensor(list(class_weights), dtype=torch.float32, device=device)


def _optimizer(t: HeadTraining, layer: nn.Linear) -> torch.optim.Optimizer:
    if t.optimizer == "sgd":
        return torch.optim.SGD(
            layer.parameters(), lr=t.learning_rate, momentum=t.momentum,
            weight_decay=t.weight_decay,
        )  # fmt: skip
    if t.optimizer == "adamw":
        return torch.optim.AdamW(
            layer.parameters(), lr=t.learning_rate, weight_decay=t.weight_decay
        )
    raise UserError(f"unknown optimizer {t.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")


def _standardizer(
    mean: np.ndarray, std: np.ndarray, device: torch.device
) -> Callable[[torch.Tensor], torch.Tensor]:
    mean_t = torch.from_numpy(mean.astype(np.float32)).to(device)
    std_t = torch.from_numpy(std.astype(np.float32)).to(device)

    def transform(inputs: torch.Tensor) -> torch.Tensor:
        return (inputs - mean_t) / std_t

    return transform


def _step(
    layer: nn.Linear,
    inputs: torch.Tensor,
    labels: np.ndarray,
    weight: torch.Tensor | None,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> tuple[float, int]:
    """One optimizer and schedule step on a batch; (its loss, how many it got right)."""
    targets = torch.from_numpy(labels).to(inputs.device)
    optimizer.zero_grad(set_to_none=True)
    logits = layer(inputs)
    loss = nn.functional.cross_entropy(logits, targets, weight=weight)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return float(loss.detach()), int((logits.argmax(dim=1) == targets).sum())


@torch.no_grad()
def accuracy(layer: nn.Linear, codes: Codes, labels: Any) -> float:
    """Accuracy of `layer` on codes read in blocks."""
    block = rows_per_block(codes.shape[1])
    targets = label_array(labels)
    correct = 0
    for start in range(0, codes.shape[0], block):
        inputs = torch.from_numpy(np.array(codes[start : start + block], dtype=np.float32))
        correct += int(
            (layer(inputs).argmax(dim=1).numpy() == targets[start : start + block]).sum()
        )
    return correct / max(1, codes.shape[0])
