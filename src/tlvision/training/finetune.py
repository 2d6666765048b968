"""Fine-tuning: epochs of a train phase and a val phase, a checkpoint after each, the best val
epoch's weights saved at the end. The loop is plain PyTorch on purpose; read it top to bottom.

Before the epochs: the pretrained layers up to --freeze-until are frozen, their outputs kept for
each image's views (tlvision.training.frozen_prefix) so an epoch runs only the stages after them,
and the new head starts trained on codes. Under torchrun `tlvision.compute.distributed` wraps the
model in DDP, shards the loaders and reduces the metrics; rank 0 alone writes the run directory.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from tlvision.compute import distributed
from tlvision.compute.devices import available_memory_bytes
from tlvision.compute.distributed import ShardSampler
from tlvision.config import TrainConfig
from tlvision.data.loading import ImageDataset, default_num_workers, make_loader, reseed_loader
from tlvision.data.transforms import build_transforms
from tlvision.errors import UserError
from tlvision.models.network import head_of
from tlvision.models.stages import stage_graph, stage_label
from tlvision.runs.layout import TRAINING_CHECKPOINT
from tlvision.training.batchnorm import backbone_lr_mult_of, resolve_batchnorm
from tlvision.training.checkpoint import TrainingCheckpoint, saved_epoch
from tlvision.training.finish import finish_run, record_epoch
from tlvision.training.freezing import (
    apply_finetuning,
    count_parameters,
    frozen_stage,
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
from tlvision.training.multilabel_loss import epoch_extras, multilabel_criterion
from tlvision.training.multilabel_route import (
    finetuned_multilabel_fields,
    start_multilabel_head_from_codes,
)
from tlvision.training.run_setup import Log, RunSetup
from tlvision.training.sampling import balanced_sampler, use_loader_generator
from tlvision.training.schedules import make_scheduler
from tlvision.training.state import Progress, restore, save_checkpoint, scaler_state
from tlvision.training.strategy import epochs_of, views_of

HEAD_START_EPOCHS = 25  # the head on codes before fine-tuning: feature-extract's epochs (seconds)
Loaders = dict[str, DataLoader[tuple[torch.Tensor, int]]]


def prepare_finetune(setup: RunSetup, log: Log, fresh: bool) -> RunSetup:
    """The BatchNorm mode (measured, unless given) and, for a fresh single-process run, the
    views whose frozen-prefix outputs fit in memory; a resumed run keeps what it recorded."""
    config = resolve_batchnorm(
        setup.config, setup.backbone, setup.weights, setup.splits, setup.preprocessing, log=log
    )
    if setup.distributed.active:
        config = _whole_network_views(config, fresh, log)
    elif fresh:
        counts = (len(setup.splits.samples["train"]), len(setup.splits.samples["val"]))
        config = fit_kept_views(
            config, setup.backbone, counts, setup.preprocessing.crop_size,
            available_memory_bytes(), log,
        )  # fmt: skip
    return replace(setup, config=config)


def _whole_network_views(config: TrainConfig, fresh: bool, log: Log) -> TrainConfig:
    """Several processes run the whole network each epoch (no kept prefix: see
    `keep_frozen_prefix`), which is --views 0; record that, so that a resume on any number of
    processes trains the same way. A run that kept views is resumed on one process."""
    if frozen_stage(config) is None or not views_of(config):
        return config
    if not fresh:
        raise UserError(
            f"{config.out_dir}: this run keeps the frozen stages' output for {views_of(config)} "
            "augmented views, which runs on one process; resume it without --nproc"
        )
    log(
        f"note: {config.strategy} on several processes runs the whole network each epoch "
        "(augmenting afresh), as --views 0 does; the run records views 0"
    )
    return replace(config, views=0)


@dataclass
class Trainer:
    """What the epochs of one fine-tuning run share. The loop trains through `network` (DDP
    under torchrun: gradients averaged over ranks) and scores through `scorer`; `model`, the
    same parameters unwrapped, is what is saved. With a kept frozen prefix, `network` and
    `scorer` are the model run from its first trainable stage on."""

    setup: RunSetup
    model: nn.Module
    network: nn.Module
    scorer: nn.Module
    loaders: Loaders
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    progress: Progress
    best_state: dict[str, torch.Tensor]  # the best val epoch's weights
    started: float
    log: Log


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
    kept = keep_frozen_prefix(setup, model, log)
    if kept is None:
        network = distributed.wrap_model(setup.distributed, model, device)
        scorer, loaders = model, make_loaders(setup)
    else:
        activations, network = kept
        scorer, loaders = network, prefix_loaders(activations, setup)
        if checkpoint is None and setup.splits.multi_label:  # sigmoid outputs: a BCE start
            start_multilabel_head_from_codes(
                setup, network, head_of(model, setup.backbone), activations,
                epochs=HEAD_START_EPOCHS, log=log,
            )  # fmt: skip
        elif checkpoint is None:
            start_head_from_codes(
                network, head_of(model, setup.backbone), activations,
                epochs=HEAD_START_EPOCHS, learning_rate=config.learning_rate,
                batch_size=config.batch_size, seed=config.seed,
                class_weights=setup.class_weights, log=log,
            )  # fmt: skip
    trainer = make_trainer(setup, (model, network, scorer), loaders, kept is not None, log)
    trainer.started = started
    if checkpoint is not None:
        trainer.progress, trainer.best_state = restore(
            checkpoint, setup, model, trainer.optimizer, trainer.scheduler, len(loaders["train"])
        )
        if trainer.scaler.is_enabled() and trainer.progress.scaler_state:
            trainer.scaler.load_state_dict(trainer.progress.scaler_state)
    trainer.progress.steps_per_epoch = len(loaders["train"])
    trainer.progress.skipped |= set(kept[0].skipped if kept is not None else ())
    run_epochs(trainer)
    if not setup.distributed.is_main:
        return {}
    model.load_state_dict(trainer.best_state)
    extra, model_info = finetuned_multilabel_fields(setup, model, log)
    return finish_run(
        setup, model.cpu(), log,
        seconds=trainer.progress.seconds_before + time.perf_counter() - started,
        skipped=trainer.progress.skipped,
        extra={"resumed_from_epoch": None if checkpoint is None else checkpoint.epoch, **extra},
        model_info=model_info,
    )  # fmt: skip


def make_trainer(
    setup: RunSetup,
    networks: tuple[nn.Module, nn.Module, nn.Module],
    loaders: Loaders,
    head_started: bool,
    log: Log,
) -> Trainer:
    """The optimizer, schedule, loss and scaler of a fresh run, and says what will train."""
    config, device = setup.config, setup.device
    model = networks[0]
    optimizer = make_optimizer(setup, model, head_started=head_started)
    scheduler = make_scheduler(
        optimizer, config.schedule, epochs=epochs_of(config),
        steps_per_epoch=len(loaders["train"]),
        step_epochs=config.step_epochs, step_gamma=config.step_gamma,
    )  # fmt: skip
    weight = setup.class_weights
    criterion: nn.Module = (
        multilabel_criterion(setup.splits, config.class_weights)
        if setup.splits.multi_label
        else nn.CrossEntropyLoss(weight=None if weight is None else torch.tensor(weight))
    )
    trainable, total = count_parameters(model)
    log(
        f"{config.strategy}: {setup.backbone.name} ({setup.weights.label}), "
        f"{len(setup.splits.class_names)} classes, {len(setup.splits.samples['train'])} train / "
        f"{len(setup.splits.samples['val'])} val images, {trainable:,} of {total:,} parameters "
        f"trainable, device {device}, precision {setup.precision}"
    )
    return Trainer(
        setup, model, networks[1], networks[2], loaders, criterion.to(device), optimizer,
        scheduler,
        # float16 gradients underflow without loss scaling; bf16 and float32 need none.
        torch.amp.GradScaler(device.type, enabled=setup.precision == "16"),
        Progress(), copy.deepcopy(model.state_dict()), time.perf_counter(), log,
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
        # forward passes alone, like code extraction: loader processes decode beside them
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


def prefix_loaders(activations: PrefixActivations, setup: RunSetup) -> Loaders:
    """Loaders over the kept activations: in memory, so no loader processes."""
    batch_size, seed = setup.config.batch_size, setup.config.seed
    loaders: Loaders = {
        "train": make_loader(
            PrefixViews(activations, seed), batch_size=batch_size, shuffle=True, num_workers=0,
            seed=seed, sampler=_train_order(setup, activations.train_labels.tolist()),
        ),
        "val": make_loader(
            PrefixVal(activations), batch_size=batch_size, shuffle=False, num_workers=0, seed=seed
        ),
    }  # fmt: skip
    use_loader_generator(loaders["train"])
    return loaders


def make_loaders(setup: RunSetup) -> Loaders:
    """Train and val loaders over images; under torchrun each rank's share (--batch-size is per
    process: N processes step on N x batch-size images)."""
    transforms = build_transforms(setup.preprocessing)
    job, loaders = setup.distributed, {}
    for phase in ("train", "val"):
        dataset = ImageDataset(
            setup.splits.samples[phase], setup.splits.class_names, transforms[phase]
        )
        sampler: Sampler[int] | None
        if phase == "train":
            labels = [label for _, label in setup.splits.samples["train"]]
            sampler = _train_order(setup, labels) or distributed.train_sampler(
                job, dataset, setup.config.seed
            )
        else:  # each val image scored once over all ranks
            sampler = ShardSampler(len(dataset), job.rank, job.world_size) if job.active else None
        loaders[phase] = make_loader(
            dataset, batch_size=setup.config.batch_size, shuffle=phase == "train",
            num_workers=setup.num_workers, seed=setup.config.seed,
            pin_memory=setup.device.type == "cuda", sampler=sampler,
        )  # fmt: skip
    for loader in loaders.values():
        use_loader_generator(loader)
    return loaders


def _train_order(setup: RunSetup, labels: list[int]) -> Sampler[int] | None:
    """--sampler balanced: classes drawn evenly (one process); None: the usual shuffle."""
    if setup.config.sampler != "balanced":
        return None
    if setup.distributed.active:
        raise UserError("--sampler balanced: runs in one process; drop torchrun or the sampler")
    return balanced_sampler(labels, setup.splits.multi_label)


def reseed(loaders: Loaders, rank: int, seed: int, epoch: int) -> None:
    """An epoch's order and augmentations from (seed, epoch, rank) alone, so resume is exact.

    Rank 0 draws what a single process draws; the other ranks their own augmentation streams.
    """
    for loader in loaders.values():
        reseed_loader(loader, seed + 1_000_003 * rank, epoch)
        if isinstance(loader.dataset, PrefixViews):
            loader.dataset.set_epoch(epoch)
        if isinstance(loader.sampler, DistributedSampler):
            loader.sampler.set_epoch(epoch)


def run_epochs(trainer: Trainer) -> None:
    """The epochs from `progress.first_epoch` on: train, validate, record, checkpoint. A loss
    that stops being finite ends the run before the bad step; Ctrl-C keeps the last epoch."""
    config = trainer.setup.config
    epoch = trainer.progress.first_epoch - 1
    try:
        for epoch in range(trainer.progress.first_epoch, epochs_of(config) + 1):
            run_epoch(trainer, epoch)
    except NonFiniteLoss as error:
        raise UserError(
            f"epoch {epoch}: the loss became {error.value}, so training stopped; lower --lr "
            f"(now {config.learning_rate}). {config.out_dir / TRAINING_CHECKPOINT} keeps the last "
            f"good epoch ({epoch - 1})"
        ) from error
    except KeyboardInterrupt:
        # What the file holds, read back: Ctrl-C may land after an epoch's checkpoint was
        # written and before the loop moved on. With none yet, fit says how to start again.
        saved = saved_epoch(config.out_dir) if trainer.setup.distributed.is_main else None
        if saved is not None:
            trainer.log(
                f"\ninterrupted in epoch {saved + 1}; {config.out_dir / TRAINING_CHECKPOINT} "
                f"holds epoch {saved}: continue with `tlvision train --resume {config.out_dir}`"
            )
        raise


def run_epoch(trainer: Trainer, epoch: int) -> None:
    """One epoch: a train phase, a val phase, then its record, its checkpoint and its line."""
    setup, progress = trainer.setup, trainer.progress
    config, device, job = setup.config, setup.device, setup.distributed
    started, learning_rate = time.perf_counter(), trainer.optimizer.param_groups[0]["lr"]
    reseed(trainer.loaders, job.rank, config.seed, epoch)
    title = f"epoch {epoch}/{epochs_of(config)}"
    train_loss, train_acc, unreadable_train = train_one_epoch(
        trainer.network, trainer.loaders["train"], trainer.criterion, trainer.optimizer,
        trainer.scheduler, device, description=f"{title} train", precision=setup.precision,
        scaler=trainer.scaler, job=job, keep_batchnorm_statistics=config.batchnorm == "frozen",
    )  # fmt: skip
    distributed.broadcast_buffers(job, trainer.model)
    val_loss, val_acc, unreadable_val = evaluate(
        trainer.scorer, trainer.loaders["val"], trainer.criterion, device,
        description=f"{title} val", precision=setup.precision, job=job,
    )  # fmt: skip
    if not math.isfinite(val_loss):
        raise NonFiniteLoss(val_loss, -1)
    progress.skipped |= {setup.splits.samples["train"][i][0] for i in unreadable_train}
    progress.skipped |= {setup.splits.samples["val"][i][0] for i in unreadable_val}
    improved = val_acc > progress.best_val_acc
    if improved:
        progress.best_val_acc, progress.best_epoch = val_acc, epoch
        trainer.best_state.update(copy.deepcopy(trainer.model.state_dict()))
    record = {
        "epoch": epoch, "train_loss": train_loss, "train_acc": train_acc,
        "val_loss": val_loss, "val_acc": val_acc, "lr": learning_rate,
        "seconds": time.perf_counter() - started, **epoch_extras(trainer.criterion),
    }  # fmt: skip
    progress.scaler_state = scaler_state(trainer.scaler)
    if job.is_main:  # the others go straight on: nothing of theirs waits for the files
        record_epoch(setup, record)
        save_checkpoint(
            setup, epoch, trainer.model, trainer.optimizer, trainer.scheduler, progress,
            trainer.best_state, trainer.started,
        )  # fmt: skip
    trainer.log(
        f"epoch {epoch:>3}/{epochs_of(config)}  train loss {train_loss:.4f} acc {train_acc:.4f}  "
        f"val loss {val_loss:.4f} acc {val_acc:.4f}  lr {learning_rate:.2e}  "
        f"{record['seconds']:.1f}s{'  best' if improved else ''}"
    )
