"""Training: resolve the run, then either the frozen routes on cached codes or fine-tuning.

`fit` reads top to bottom: set the run up (data, weights, device, run directory), hand the
frozen routes to `codes_training`, else fine-tune: epochs of a train phase and a val phase, a
checkpoint after each, the best val weights restored and saved at the end. The loop is plain
PyTorch on purpose. The epoch passes are in `epochs`, the checkpoint's contents in
`training_state`; under torchrun `distributed` joins the process group, wraps the model in DDP,
shards the loaders and reduces the metrics, and rank 0 alone writes the run directory.
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from tlvision.compute import distributed
from tlvision.compute.devices import available_memory_bytes, resolve_device, resolve_precision
from tlvision.compute.distributed import Distributed, ShardSampler
from tlvision.config import (
    CODES_STRATEGIES,
    TrainConfig,
    backbone_lr_mult_of,
    epochs_of,
    frozen_stage,
    validate_config,
    views_of,
    with_strategy_defaults,
)
from tlvision.data.layouts import (
    ImageDataset,
    build_transforms,
    default_num_workers,
    find_splits,
    inverse_frequency_weights,
    make_loader,
    reseed_loader,
)
from tlvision.errors import UserError
from tlvision.models.backbones import (
    choose_weights,
    create_model,
    get_backbone,
    head_of,
    preprocessing_for,
)
from tlvision.models.stages import stage_graph, stage_label
from tlvision.runs.checkpoint import (
    TRAINING_CHECKPOINT,
    TrainingCheckpoint,
    load_training_checkpoint,
)
from tlvision.training.batchnorm import resolve_batchnorm
from tlvision.training.codes_route import fit_on_codes
from tlvision.training.freezing import (
    apply_finetuning,
    count_parameters,
    parameter_groups,
)
from tlvision.training.frozen_prefix import (
    PrefixActivations,
    PrefixVal,
    PrefixViews,
    SkipPrefix,
    compute_prefix,
    fit_kept_views,
    prefix_modules,
    start_head_from_codes,
)
from tlvision.training.loop import NonFiniteLoss, evaluate, train_one_epoch
from tlvision.training.run_dir import (
    CODES_RUN_CONFIG,
    SUMMARY_FILE,
    Log,
    RunSetup,
    finish_run,
    prepare_run_dir,
    record_epoch,
    refuse_to_overwrite,
    write_val_split,
)
from tlvision.training.schedules import make_scheduler
from tlvision.training.state import Progress, restore, save_checkpoint, scaler_state
from tlvision.training.tracking import Tracker, write_config_toml

HEAD_START_EPOCHS = 25  # the head on codes before fine-tuning: feature-extract's epochs (seconds)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def fit(
    config: TrainConfig, *, log: Log = print, checkpoint: TrainingCheckpoint | None = None
) -> dict[str, Any]:
    """Train a classifier as `config` says and leave a complete run directory behind.

    With `checkpoint` (see `resume`), carry on from the end of its epoch instead of starting.
    Under torchrun every rank calls this; rank 0 alone logs, writes the run directory and
    returns the summary (the others return an empty dict: the run directory need not be on a
    filesystem they share).
    """
    validate_config(config)
    setup = set_up(config, log, fresh=checkpoint is None)
    try:
        log = log if setup.distributed.is_main else _silent
        model = create_model(setup.backbone, len(setup.splits.class_names), setup.weights)
        if config.strategy in CODES_STRATEGIES:
            summary = fit_on_codes(setup, model, log)
        else:
            summary = finetune(setup, model, log, checkpoint)
        distributed.barrier(setup.distributed)  # the others wait for rank 0's files
        return summary
    finally:
        distributed.stop(setup.distributed)


def _silent(message: str) -> None:
    """The log of ranks other than 0: one process speaks for the run."""


def set_up(config: TrainConfig, log: Log, *, fresh: bool) -> RunSetup:
    """Resolve the data, backbone, weights, preprocessing and device; make the run directory.

    The run's config is `config` with its strategy's defaults filled in (what it records)."""
    config = with_strategy_defaults(config)
    splits = find_splits(config.data_dir, val_split=config.val_split, seed=config.seed)
    backbone = get_backbone(config.backbone)
    for stage_name in (frozen_stage(config), config.stage):
        if stage_name is not None:
            backbone.stage(stage_name)  # an unknown name is a clear error before any work
    job, device = distributed.start(resolve_device(config.device))
    log = log if job.is_main else _silent
    if fresh and not config.overwrite:  # every rank stops with the same clear error (rank 0
        refuse_to_overwrite(config.out_dir, overwrite=False)  # alone deletes, with --overwrite)
    if fresh and job.is_main:
        prepare_run_dir(config.out_dir, overwrite=config.overwrite)
    distributed.barrier(job)  # the run directory exists (or rank 0 failed) before anyone goes on
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
    preprocessing = preprocessing_for(backbone, weights, input_size=config.input_size)
    if config.strategy == "finetune":
        config = resolve_batchnorm(config, backbone, weights, splits, preprocessing, log=log)
        if fresh and not job.active:  # a resumed run keeps the views it recorded
            counts = (len(splits.samples["train"]), len(splits.samples["val"]))
            config = fit_kept_views(
                config, backbone, counts, preprocessing.crop_size, available_memory_bytes(), log
            )
    setup = RunSetup(
        config=config,
        splits=splits,
        backbone=backbone,
        weights=weights,
        preprocessing=preprocessing,
        device=device,
        num_workers=_default_workers(config, device)
        if config.num_workers is None
        else config.num_workers,
        class_weights=class_weights,
        precision=resolve_precision(config.precision, device),
        distributed=job,
        tracker=Tracker(config.out_dir) if job.is_main and config.tensorboard else None,
    )
    seed_everything(config.seed)
    if job.is_main:
        write_val_split(setup)
        write_config_toml(config, log)
    if job.active:
        log(
            f"distributed: {job.world_size} process(es), backend "
            f"{torch.distributed.get_backend()}, device {device}; each epoch shared among them"
        )
    return setup


def _default_workers(config: TrainConfig, device: torch.device) -> int:
    """Loader processes when --workers is not given.

    Fine-tuning on the CPU decodes in the main process: the model's backward pass keeps every
    core busy, and loader processes beside it only oversubscribe them (a reference-set epoch,
    2 cores: 20.0 s with 2 workers, 8.8 s with none; 64-px digits: 12.6 s against 3.6 s).
    """
    if config.strategy == "finetune" and device.type == "cpu":
        return 0
    return default_num_workers()


def finetune(
    setup: RunSetup, model: nn.Module, log: Log, checkpoint: TrainingCheckpoint | None
) -> dict[str, Any]:
    """Fine-tune every trainable layer, a checkpoint after each epoch; save the best epoch's."""
    started = time.perf_counter()
    config, device = setup.config, setup.device
    apply_finetuning(
        model, setup.backbone,
        freeze_until=frozen_stage(config), backbone_lr_mult=backbone_lr_mult_of(config),
    )  # fmt: skip
    # channels_last: the convolutions' fast layout (about 2x faster forward on CPU, measured).
    model.to(device).to(memory_format=torch.channels_last)
    # The loop trains through `network` (DDP under torchrun: gradients averaged over ranks) and
    # scores through `scorer`; `model`, the same parameters unwrapped, is what is saved. With a
    # kept frozen prefix both are the model run from its first trainable stage on.
    kept = keep_frozen_prefix(setup, model, log)
    if kept is None:
        network = distributed.wrap_model(setup.distributed, model, device)
        scorer, loaders = model, make_loaders(setup)
    else:
        activations, network = kept
        scorer, loaders = network, prefix_loaders(activations, config)
        if checkpoint is None:
            start_head_from_codes(
                network, head_of(model, setup.backbone), activations,
                epochs=HEAD_START_EPOCHS, learning_rate=config.learning_rate,
                batch_size=config.batch_size, seed=config.seed,
                class_weights=setup.class_weights, log=log,
            )  # fmt: skip
    optimizer = make_optimizer(setup, model, head_started=kept is not None)
    scheduler = make_scheduler(
        optimizer, config.schedule, epochs=epochs_of(config),
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
        f"trainable, device {device}, precision {setup.precision}"
    )
    progress, best_state = Progress(), copy.deepcopy(model.state_dict())
    if checkpoint is not None:
        progress, best_state = restore(
            checkpoint, setup, model, optimizer, scheduler, len(loaders["train"])
        )
    progress.steps_per_epoch = len(loaders["train"])
    progress.skipped |= set(kept[0].skipped if kept is not None else ())
    _run_epochs(
        setup, (model, network, scorer), loaders, criterion, optimizer, scheduler, progress,
        best_state, log, started,
    )  # fmt: skip
    if not setup.distributed.is_main:
        return {}
    model.load_state_dict(best_state)
    return finish_run(
        setup, model.cpu(), log,
        seconds=progress.seconds_before + time.perf_counter() - started,
        skipped=progress.skipped,
        extra={"resumed_from_epoch": None if checkpoint is None else checkpoint.epoch},
    )  # fmt: skip


def make_optimizer(setup: RunSetup, model: nn.Module, *, head_started: bool) -> torch.optim.SGD:
    """SGD with the new head at --lr and the pretrained layers at --backbone-lr-mult times it.

    A head started on codes goes on at the body's gentler rate: at the new head's rate it
    jumped away from that solution in the first epoch (reference set: val acc 0.9673 after the
    head start, 0.8889 in epoch 2 with the head at 10x the body's rate).
    """
    config = setup.config
    groups = parameter_groups(
        model, setup.backbone,
        learning_rate=config.learning_rate, backbone_lr_mult=backbone_lr_mult_of(config),
    )  # fmt: skip
    if head_started:
        groups[0]["lr"] = config.learning_rate * backbone_lr_mult_of(config)
    return torch.optim.SGD(
        groups, lr=config.learning_rate, momentum=config.momentum,
        weight_decay=config.weight_decay,
    )  # fmt: skip


def keep_frozen_prefix(
    setup: RunSetup, model: nn.Module, log: Log
) -> tuple[PrefixActivations, SkipPrefix] | None:
    """The frozen prefix's outputs for the kept views, and the model run above them; None when
    the run does not keep them (no frozen stage, --views 0, several processes, or a model that
    is not a plain sequence of its stages: the whole model then runs every epoch)."""
    config, stage = setup.config, frozen_stage(setup.config)
    if stage is None or not views_of(config) or setup.distributed.active:
        return None
    prefix = stage_graph(model, setup.backbone, [stage])
    network = SkipPrefix(model, prefix_modules(setup.backbone, stage, prefix))
    if not network.matches(prefix, stage_label(stage), setup.preprocessing.crop_size):
        log(f"note: {setup.backbone.name} cannot run from after {stage}; the whole model trains")
        return None
    started = time.perf_counter()
    activations = compute_prefix(
        prefix, stage_label(stage), setup.splits.samples, build_transforms(setup.preprocessing),
        views=views_of(config), seed=config.seed, batch_size=config.batch_size,
        num_workers=default_num_workers() if config.num_workers is None else config.num_workers,
        device=setup.device,
    )  # fmt: skip
    log(
        f"frozen prefix (up to {stage}) run once for the centre crop and {views_of(config)} "
        f"augmented views of {len(activations.train_labels)} train and "
        f"{len(activations.val_labels)} val images: "
        f"{time.perf_counter() - started:.1f}s, {activations.megabytes:.0f} MB kept; each epoch "
        "runs the stages after it"
    )
    return activations, network


def prefix_loaders(
    activations: PrefixActivations, config: TrainConfig
) -> dict[str, DataLoader[tuple[torch.Tensor, int]]]:
    """Loaders over the kept activations: in memory, so no loader processes."""
    return {
        "train": make_loader(
            PrefixViews(activations, config.seed), batch_size=config.batch_size, shuffle=True,
            num_workers=0, seed=config.seed,
        ),
        "val": make_loader(
            PrefixVal(activations), batch_size=config.batch_size, shuffle=False, num_workers=0,
            seed=config.seed,
        ),
    }  # fmt: skip


def make_loaders(setup: RunSetup) -> dict[str, DataLoader[tuple[torch.Tensor, int]]]:
    """Train and val loaders; under torchrun each rank's share (see tlvision.compute.distributed).

    --batch-size is per process: N processes step on N x batch-size images.
    """
    transforms = build_transforms(setup.preprocessing)
    job, loaders = setup.distributed, {}
    for phase in ("train", "val"):
        dataset = ImageDataset(
            setup.splits.samples[phase], setup.splits.class_names, transforms[phase]
        )
        sampler = (
            distributed.train_sampler(job, dataset, setup.config.seed)
            if phase == "train"
            else ShardSampler(len(dataset), job.rank, job.world_size)
            if job.active
            else None
        )
        loaders[phase] = make_loader(
            dataset,
            batch_size=setup.config.batch_size,
            shuffle=phase == "train",
            num_workers=setup.num_workers,
            seed=setup.config.seed,
            pin_memory=setup.device.type == "cuda",
            sampler=sampler,
        )
    return loaders


def _reseed(
    loaders: dict[str, DataLoader[tuple[torch.Tensor, int]]],
    job: Distributed,
    seed: int,
    epoch: int,
) -> None:
    """An epoch's order and augmentations from (seed, epoch, rank) alone, so resume is exact.

    Rank 0 draws what a single process draws; the other ranks their own augmentation streams.
    """
    for loader in loaders.values():
        reseed_loader(loader, seed + 1_000_003 * job.rank, epoch)
        if isinstance(loader.dataset, PrefixViews):
            loader.dataset.set_epoch(epoch)
        if isinstance(loader.sampler, DistributedSampler):
            loader.sampler.set_epoch(epoch)


def _run_epochs(
    setup: RunSetup,
    models: tuple[nn.Module, nn.Module, nn.Module],
    loaders: dict[str, DataLoader[tuple[torch.Tensor, int]]],
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    progress: Progress,
    best_state: dict[str, torch.Tensor],
    log: Log,
    started: float,
) -> None:
    """The epochs from `progress.first_epoch` on: train, validate, record, checkpoint.

    `models` is (the model, the network that trains it: the model, its DDP wrapper or the model
    above a kept prefix; the network that scores it: the model or the model above the prefix).
    `progress` and `best_state` (the best val epoch's weights) are updated in place.
    """
    config, device, job = setup.config, setup.device, setup.distributed
    model, network, scorer = models
    # float16 gradients underflow without loss scaling; bf16 and float32 need none.
    scaler = torch.amp.GradScaler(device.type, enabled=setup.precision == "16")
    if scaler.is_enabled() and progress.scaler_state:
        scaler.load_state_dict(progress.scaler_state)
    skipped = progress.skipped
    epoch = progress.first_epoch - 1
    try:
        for epoch in range(progress.first_epoch, epochs_of(config) + 1):
            epoch_started = time.perf_counter()
            learning_rate = optimizer.param_groups[0]["lr"]
            _reseed(loaders, job, config.seed, epoch)
            train_loss, train_acc, unreadable_train = train_one_epoch(
                network, loaders["train"], criterion, optimizer, scheduler, device,
                description=f"epoch {epoch}/{epochs_of(config)} train", precision=setup.precision,
                scaler=scaler, job=job, keep_batchnorm_statistics=config.batchnorm == "frozen",
            )  # fmt: skip
            distributed.broadcast_buffers(job, model)
            val_loss, val_acc, unreadable_val = evaluate(
                scorer, loaders["val"], criterion, device,
                description=f"epoch {epoch}/{epochs_of(config)} val", precision=setup.precision,
                job=job,
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
            progress.scaler_state = scaler_state(scaler)
            if job.is_main:  # the others go straight on: nothing of theirs waits for the files
                record_epoch(setup, record)
                save_checkpoint(
                    setup, epoch, model, optimizer, scheduler, progress, best_state, started
                )
            log(
                f"epoch {epoch:>3}/{epochs_of(config)}  "
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
    recorded = checkpoint.info["config"]
    config = replace(TrainConfig.from_json(recorded), out_dir=run_dir)
    if "batchnorm" not in recorded:  # recorded before the mode was chosen: it trained them
        config = replace(config, batchnorm="train")
    if checkpoint.epoch >= epochs_of(config):
        raise UserError(
            f"{run_dir}: this run already finished all {epochs_of(config)} epochs; its model is "
            "model.safetensors (train again with a new --out to go further)"
        )
    log(f"resuming {run_dir} after epoch {checkpoint.epoch} of {epochs_of(config)}")
    return fit(config, log=log, checkpoint=checkpoint)
