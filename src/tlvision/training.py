"""Training: epochs of a train phase and a val phase, the best val weights kept and restored.

The loop is plain PyTorch on purpose; read `fit` top to bottom to see everything a run does.
"""

from __future__ import annotations

import copy
import json
import math
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from tlvision.backbones import (
    DEFAULT_BACKBONE,
    BackboneSpec,
    WeightsChoice,
    choose_weights,
    create_model,
    get_backbone,
    head_of,
    preprocessing_for,
)
from tlvision.checkpoint import (
    TRAINING_CHECKPOINT,
    TrainingCheckpoint,
    capture_random_state,
    load_training_checkpoint,
    restore_random_state,
    save_run_model,
    save_training_checkpoint,
    write_json_atomic,
)
from tlvision.data import (
    DatasetSplits,
    ImageDataset,
    Preprocessing,
    build_transforms,
    default_num_workers,
    find_splits,
    make_loader,
    reseed_loader,
)
from tlvision.errors import UserError
from tlvision.features import FeatureCache, default_cache_dir, extract_split_codes
from tlvision.heads import HEADS, StageClassifier, fit_sklearn_head, install_head, train_linear_head
from tlvision.images import BadImageError, open_image_rgb
from tlvision.strategies import (
    CODES_STRATEGIES,
    STRATEGIES,
    apply_strategy,
    count_parameters,
    parameter_groups,
    set_train_mode,
)

SCHEDULES = ("step", "cosine", "onecycle", "constant")
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CODES_RUN_CONFIG = "run_config.json"  # the frozen routes' config, written first: for --resume


@dataclass(frozen=True)
class TrainConfig:
    data_dir: Path
    out_dir: Path
    backbone: str = DEFAULT_BACKBONE
    weights: str | None = None  # a registry name (default: the backbone's first), a path, "none"
    strategy: str = "feature-extract"
    freeze_until: str | None = None
    input_size: int | None = None  # crop side in pixels; None: the weights' own (224 for most)
    epochs: int = 25
    batch_size: int = 32
    learning_rate: float = 0.01  # the new head's; pretrained layers get backbone_lr_mult x this
    backbone_lr_mult: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "step"
    step_epochs: int = 7  # the classic recipe: x0.1 every 7 epochs
    step_gamma: float = 0.1
    seed: int = 0
    device: str = "auto"
    num_workers: int | None = None  # None: one per core
    stage: str | None = None  # linear-probe: the stage whose pooled codes the head reads; None: top
    head: str = "linear"  # linear-probe: linear (softmax, torch), logreg or svm (scikit-learn)
    views: int = 0  # frozen routes: augmented views per train image, beside the centre crop
    cache_dir: Path | None = None  # CNN-codes cache; None: ~/.cache/tlvision/features
    no_cache: bool = False  # keep codes in memory only
    val_split: float | None = None  # hold out this fraction of train/ when there is no val/
    class_weights: str | None = None  # "auto": weight the loss by inverse class frequency
    overwrite: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            key: str(value.absolute()) if isinstance(value, Path) else value
            for key, value in asdict(self).items()
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainConfig:
        known = {field.name for field in fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        for key in ("data_dir", "out_dir", "cache_dir"):
            values[key] = None if values.get(key) is None else Path(values[key])
        return cls(**values)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA GPU is visible here; use --device auto or cpu")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def validate_config(config: TrainConfig) -> None:
    if config.strategy not in STRATEGIES:
        raise UserError(
            f"unknown strategy {config.strategy!r}; choose one of {', '.join(STRATEGIES)}"
        )
    if config.schedule not in SCHEDULES:
        raise UserError(
            f"unknown schedule {config.schedule!r}; choose one of {', '.join(SCHEDULES)}"
        )
    if config.input_size is not None and config.input_size < 32:
        raise UserError("--input-size must be at least 32 pixels")
    if config.epochs < 1 or config.batch_size < 1:
        raise UserError("--epochs and --batch-size must be at least 1")
    if not (config.learning_rate > 0 and config.backbone_lr_mult >= 0):
        raise UserError("--lr must be positive and --backbone-lr-mult zero or more")
    if config.head not in HEADS:
        raise UserError(f"unknown head {config.head!r}; choose one of {', '.join(HEADS)}")
    if config.strategy != "linear-probe" and (config.stage is not None or config.head != "linear"):
        raise UserError("--stage and --head apply to --strategy linear-probe")
    if config.views < 0:
        raise UserError("--views must be 0 or more")
    if config.class_weights not in (None, "auto"):
        raise UserError(f"--class-weights {config.class_weights}: the only choice is auto")


def refuse_to_overwrite(out_dir: Path, *, overwrite: bool) -> None:
    """Never overwrite a run without --overwrite, and never delete anything but a run."""
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise UserError(
                f"{out_dir}: already exists and is not empty; choose a new --out or pass "
                "--overwrite"
            )
        markers = (SUMMARY_FILE, METRICS_FILE, TRAINING_CHECKPOINT, CODES_RUN_CONFIG)
        if not any((out_dir / marker).exists() for marker in markers):
            raise UserError(
                f"{out_dir}: --overwrite replaces only tlvision run directories, and this one "
                "has no metrics.jsonl, summary.json or checkpoint; choose a new --out"
            )


def prepare_run_dir(out_dir: Path, *, overwrite: bool) -> None:
    """An empty run directory, replacing an earlier run only when `overwrite` allows it."""
    refuse_to_overwrite(out_dir, overwrite=overwrite)
    if out_dir.exists() and any(out_dir.iterdir()):
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)


def make_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Every schedule steps once per batch, so all of them read the same in the loop."""
    total_steps = config.epochs * steps_per_epoch
    if config.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=config.step_epochs * steps_per_epoch, gamma=config.step_gamma
        )
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    if config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=[group["lr"] for group in optimizer.param_groups],
            total_steps=total_steps,
        )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


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
    batches = tqdm(loader, desc=description, leave=False, disable=None, file=sys.stderr)
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
    batches = tqdm(loader, desc=description, leave=False, disable=None, file=sys.stderr)
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


def inverse_frequency_weights(counts: list[int]) -> list[float]:
    """n_total / (n_classes * n_class): each class contributes equally to the loss."""
    total = sum(counts)
    return [total / (len(counts) * max(1, count)) for count in counts]


def describe_skipped(paths: set[Path]) -> list[dict[str, str]]:
    """Why each skipped file could not be read (decoded again once, at the end)."""
    described = []
    for path in sorted(paths):
        try:
            open_image_rgb(path)
            reason = "could not be read during training"
        except BadImageError as error:
            reason = error.reason
        described.append({"path": str(path), "reason": reason})
    return described


def resume(run_dir: Path, *, log: Any = print) -> dict[str, Any]:
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


def fit(
    config: TrainConfig, *, log: Any = print, checkpoint: TrainingCheckpoint | None = None
) -> dict[str, Any]:
    """Train a classifier as `config` says and leave a complete run directory behind.

    With `checkpoint` (see `resume`), carry on from the end of its epoch instead of starting.
    """
    validate_config(config)
    started = time.perf_counter()
    splits = find_splits(config.data_dir, val_split=config.val_split, seed=config.seed)
    backbone = get_backbone(config.backbone)
    for stage_name in (config.freeze_until, config.stage):
        if stage_name is not None:
            backbone.stage(stage_name)
    device = resolve_device(config.device)
    if checkpoint is None:
        prepare_run_dir(config.out_dir, overwrite=config.overwrite)
    weights = choose_weights(backbone, config.weights)
    if not weights.pretrained:
        log(
            "note: --weights none: training from random initialisation, not from pretrained weights"
        )
    preprocessing = preprocessing_for(backbone, weights, input_size=config.input_size)
    seed_everything(config.seed)
    if splits.val_split is not None:
        write_json_atomic(
            config.out_dir / "val_split.json",
            {
                "fraction": splits.val_split,
                "seed": config.seed,
                "val_files": [str(path) for path, _ in splits.samples["val"]],
            },
        )

    transforms = build_transforms(preprocessing)
    num_workers = default_num_workers() if config.num_workers is None else config.num_workers
    loaders = {
        phase: make_loader(
            ImageDataset(splits.samples[phase], splits.class_names, transforms[phase]),
            batch_size=config.batch_size,
            shuffle=phase == "train",
            num_workers=num_workers,
            seed=config.seed,
            pin_memory=device.type == "cuda",
        )
        for phase in ("train", "val")
    }

    model = create_model(backbone, len(splits.class_names), weights)
    if config.strategy in CODES_STRATEGIES:
        return fit_on_codes(config, splits, model, backbone, weights, preprocessing, device, log)
    apply_strategy(model, backbone, config.strategy, freeze_until=config.freeze_until)
    # channels_last: the convolutions' fast layout (about 2x faster forward on CPU, measured).
    model.to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(
        parameter_groups(
            model,
            backbone,
            learning_rate=config.learning_rate,
            backbone_lr_mult=config.backbone_lr_mult,
        ),
        lr=config.learning_rate,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    scheduler = make_scheduler(optimizer, config, steps_per_epoch=len(loaders["train"]))
    class_weights = None
    if config.class_weights == "auto":
        class_weights = inverse_frequency_weights(splits.class_counts("train"))
        pairs = zip(splits.class_names, class_weights, strict=True)
        log("class weights: " + ", ".join(f"{name} {weight:.3f}" for name, weight in pairs))
    criterion = nn.CrossEntropyLoss(
        weight=None if class_weights is None else torch.tensor(class_weights, device=device)
    )

    trainable, total = count_parameters(model)
    log(
        f"{config.strategy}: {backbone.name} ({weights.label}), {len(splits.class_names)} classes, "
        f"{len(splits.samples['train'])} train / {len(splits.samples['val'])} val images, "
        f"{trainable:,} of {total:,} parameters trainable, device {device}"
    )

    first_epoch, best_val_acc, best_epoch = 1, -1.0, 0
    best_state = copy.deepcopy(model.state_dict())
    skipped: set[Path] = set()
    seconds_before = 0.0
    metrics_path = config.out_dir / METRICS_FILE
    if checkpoint is not None:
        model.load_state_dict(checkpoint.model_state)
        best_state = {name: tensor.to(device) for name, tensor in checkpoint.best_state.items()}
        optimizer.load_state_dict(checkpoint.optimizer_state)
        scheduler.load_state_dict(checkpoint.scheduler_state)
        restore_random_state(checkpoint.random_state)
        first_epoch = checkpoint.epoch + 1
        best_val_acc, best_epoch = checkpoint.info["best_val_acc"], checkpoint.info["best_epoch"]
        skipped = {Path(path) for path in checkpoint.info["skipped_files"]}
        seconds_before = checkpoint.info["seconds"]
        # Lines written after the checkpoint (killed between the two) belong to a redone epoch.
        kept = (
            metrics_path.read_text().splitlines()[: checkpoint.epoch]
            if metrics_path.exists()
            else []
        )
        metrics_path.write_text("".join(line + "\n" for line in kept))

    epoch = first_epoch - 1
    try:
        for epoch in range(first_epoch, config.epochs + 1):
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
            skipped |= {splits.samples["train"][index][0] for index in unreadable_train}
            skipped |= {splits.samples["val"][index][0] for index in unreadable_val}
            improved = val_acc > best_val_acc
            if improved:
                best_val_acc, best_epoch = val_acc, epoch
                best_state = copy.deepcopy(model.state_dict())
            record = {
                "epoch": epoch,
                "train_loss": train_loss,
                "train_acc": train_acc,
                "val_loss": val_loss,
                "val_acc": val_acc,
                "lr": learning_rate,
                "seconds": time.perf_counter() - epoch_started,
            }
            with metrics_path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
            info = {
                "config": config.to_json(),
                "best_val_acc": best_val_acc,
                "best_epoch": best_epoch,
                "skipped_files": sorted(str(path) for path in skipped),
                "seconds": seconds_before + time.perf_counter() - started,
            }
            save_training_checkpoint(
                config.out_dir,
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

    model.load_state_dict(best_state)
    return finish_run(
        config, splits, model.cpu(), backbone, weights, preprocessing, log,
        best_val_acc=best_val_acc, best_epoch=best_epoch,
        seconds=seconds_before + time.perf_counter() - started,
        skipped=skipped, class_weights=class_weights, device=device, num_workers=num_workers,
        extra={"resumed_from_epoch": None if checkpoint is None else checkpoint.epoch},
    )  # fmt: skip


def finish_run(
    config: TrainConfig,
    splits: DatasetSplits,
    model: nn.Module,
    backbone: BackboneSpec,
    weights: WeightsChoice,
    preprocessing: Preprocessing,
    log: Any,
    *,
    best_val_acc: float,
    best_epoch: int,
    seconds: float,
    skipped: set[Path],
    class_weights: list[float] | None,
    device: torch.device,
    num_workers: int,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """Save the model (safetensors + model.json) and summary.json; report skipped files."""
    metadata = {
        "classes": list(splits.class_names),
        "backbone": backbone.name,
        "weights": weights.label,
        "pretrained": weights.pretrained,
        "preprocessing": preprocessing.to_json(),
        "strategy": config.strategy,
        "config": config.to_json(),
    }
    if config.strategy == "linear-probe":
        metadata.update({"stage": config.stage, "head": config.head})
    save_run_model(config.out_dir, model, metadata)
    skipped_files = describe_skipped(skipped | set(splits.broken_links))
    summary = {
        "best_val_acc": best_val_acc,
        "best_epoch": best_epoch,
        "epochs": config.epochs,
        "seconds": seconds,
        "strategy": config.strategy,
        "backbone": backbone.name,
        "weights": weights.label,
        "classes": list(splits.class_names),
        "train_images": len(splits.samples["train"]),
        "val_images": len(splits.samples["val"]),
        "val_split": splits.val_split,
        "class_weights": class_weights,
        "skipped_files": skipped_files,
        **extra,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "loader_workers": num_workers,
    }
    write_json_atomic(config.out_dir / SUMMARY_FILE, summary)
    if skipped_files:
        log(f"skipped {len(skipped_files)} unreadable files (listed in summary.json):")
        for entry in skipped_files:
            log(f"  {entry['path']}: {entry['reason']}")
    log(
        f"best val acc {best_val_acc:.4f} at epoch {best_epoch}; {seconds:.0f}s; "
        f"model saved to {config.out_dir}"
    )
    return summary


def fit_on_codes(
    config: TrainConfig,
    splits: DatasetSplits,
    model: nn.Module,
    backbone: BackboneSpec,
    weights: WeightsChoice,
    preprocessing: Preprocessing,
    device: torch.device,
    log: Any,
) -> dict[str, Any]:
    """The frozen routes: the body runs once per image and view, then a head trains on codes.

    feature-extract trains the new last layer as the classic loop would (same optimizer,
    schedule and epochs), but on cached CNN codes, and puts it back into the full model.
    linear-probe fits a head (softmax, logistic regression or linear SVM) on the pooled codes of
    any stage; the saved model is the body cut at that stage plus the head.
    """
    started = time.perf_counter()
    num_workers = default_num_workers() if config.num_workers is None else config.num_workers
    cache = (
        None if config.no_cache else FeatureCache(config.cache_dir or default_cache_dir(), log=log)
    )
    stage = config.stage if config.strategy == "linear-probe" else None
    codes = extract_split_codes(
        model, backbone, splits, weights=weights.label, preprocessing=preprocessing,
        cache=cache, stages=[stage], augmented_views=config.views, seed=config.seed,
        batch_size=config.batch_size, num_workers=num_workers, device=device, log=log,
    )[stage]  # fmt: skip
    class_weights = None
    if config.class_weights == "auto":
        class_weights = inverse_frequency_weights(splits.class_counts("train"))
    metrics_path = config.out_dir / METRICS_FILE
    metrics_path.write_text("")
    write_json_atomic(config.out_dir / CODES_RUN_CONFIG, config.to_json())

    def record_epoch(record: dict[str, Any]) -> None:
        with metrics_path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")

    head_name = "linear" if config.strategy == "feature-extract" else config.head
    log(
        f"{config.strategy}: {backbone.name} ({weights.label}) codes from "
        f"{stage or 'the top'}, head {head_name}, {len(codes.train_labels)} train x "
        f"{len(codes.train_views)} views / {len(codes.val_labels)} val images"
    )
    if head_name == "linear":
        layer, history = train_linear_head(
            codes.train_views, codes.train_labels, codes.val, codes.val_labels,
            num_classes=len(splits.class_names), epochs=config.epochs,
            learning_rate=config.learning_rate, batch_size=config.batch_size,
            weight_decay=config.weight_decay, momentum=config.momentum,
            schedule=config.schedule, step_epochs=config.step_epochs,
            step_gamma=config.step_gamma, seed=config.seed,
            init=head_of(model, backbone) if stage is None else None,
            class_weights=class_weights, on_epoch=record_epoch,
        )  # fmt: skip
        best = max(history, key=lambda record: record["val_acc"])
        best_val_acc, best_epoch = best["val_acc"], best["epoch"]
    else:
        fit_started = time.perf_counter()
        layer = fit_sklearn_head(
            head_name, codes.train_views, codes.train_labels,
            num_classes=len(splits.class_names), seed=config.seed,
        )  # fmt: skip
        best_val_acc, best_epoch = accuracy_on_codes(layer, codes.val, codes.val_labels), 1
        record_epoch(
            {"epoch": 1, "val_acc": best_val_acc, "seconds": time.perf_counter() - fit_started}
        )
    for record in [json.loads(line) for line in metrics_path.read_text().splitlines()]:
        log(
            f"epoch {record['epoch']:>3}  val acc {record['val_acc']:.4f}"
            + (f"  train acc {record['train_acc']:.4f}" if "train_acc" in record else "")
        )
    final: nn.Module
    if stage is None:
        install_head(model, backbone, layer)
        final = model
    else:
        final = StageClassifier.from_trained(backbone, stage, model, layer)
    return finish_run(
        config, splits, final.cpu(), backbone, weights, preprocessing, log,
        best_val_acc=best_val_acc, best_epoch=best_epoch,
        seconds=time.perf_counter() - started,
        skipped={Path(path) for path, *_ in codes.skipped},
        class_weights=class_weights, device=device, num_workers=num_workers,
        extra={"views": config.views, "head": head_name, "stage": stage},
    )  # fmt: skip


@torch.no_grad()
def accuracy_on_codes(layer: nn.Linear, codes: Any, labels: Any) -> float:
    predictions = layer(torch.tensor(np.array(codes), dtype=torch.float32)).argmax(dim=1)
    return float((predictions.numpy() == np.asarray(labels)).mean())
