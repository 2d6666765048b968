"""BatchNorm during fine-tuning: follow the data's batches, or keep ImageNet's statistics.

A BatchNorm layer in train mode normalises by each batch's statistics and moves its running
statistics towards them. That is what a network needs when the data looks unlike ImageNet to
that layer, and noise when it does not: on a small photo set, batches of 32 only blur
statistics that ImageNet's 1.2 million images already fixed. So `finetune` measures how far the
data sits from the running statistics of the layers it will train (the "shift", below) on a
seeded sample of train/ before anything trains, and picks:

- "train": the batches' statistics (the usual train mode), pretrained layers at 0.1 x --lr;
- "frozen": every BatchNorm in eval mode, its ImageNet statistics kept while its weight and bias
  train, at a 3x lower rate (0.03 x --lr): with frozen statistics the default rate was unstable.

Measured (README, "Fine-tuning fast"), the final val accuracy of the default `finetune`, train
against frozen, with the shift this module measures: ants/bees (0.13) 0.9412 against 0.9542 and,
seed 1, 0.9412 against 0.9608; textures (0.26) 0.7689 against 0.7733; stamps (0.41) 0.8692
against 0.8785; icons (0.31) 0.8088 against 0.7721; clip art (0.37) 0.8348 against 0.8168.
Keeping the statistics pays where the data looks like ImageNet to the trained layers and can
cost 10-12 val images where it does not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from tlvision.config import TrainConfig
from tlvision.data.layouts import DatasetSplits
from tlvision.data.loading import ImageDataset, collate_readable
from tlvision.data.preprocessing import Preprocessing
from tlvision.data.transforms import build_transforms
from tlvision.models.backbone import BackboneSpec
from tlvision.models.network import create_model
from tlvision.models.weights import IMAGENET_LIKE_SHIFT, WeightsChoice
from tlvision.training.freezing import frozen_stage

# --backbone-lr-mult's default in each mode: with ImageNet's statistics kept, the default rate
# was unstable and a 3x lower one was not.
BACKBONE_LR_MULT = {"train": 0.1, "frozen": 0.03}
SHIFT_SAMPLE_IMAGES = 64  # train images the shift is measured on: a seeded, fixed count


class BatchNormInputStatistics:
    """Per-channel running sums of every BatchNorm layer's input, gathered by forward hooks."""

    def __init__(self, model: nn.Module) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.squares: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.layers = {
            name: module
            for name, module in model.named_modules()
            if isinstance(module, nn.BatchNorm2d) and module.running_mean is not None
        }
        self.handles = [
            module.register_forward_hook(self._hook(name)) for name, module in self.layers.items()
        ]

    def _hook(self, name: str) -> Any:
        def record(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: Any) -> None:
            values = inputs[0].detach().float()
            self.sums[name] = self.sums.get(name, 0) + values.sum(dim=(0, 2, 3))
            self.squares[name] = self.squares.get(name, 0) + (values**2).sum(dim=(0, 2, 3))
            self.counts[name] = self.counts.get(name, 0) + values.numel() // values.shape[1]

        return record

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()

    def shift(self, name: str) -> float:
        """Mean over channels of |data mean - running mean| / running std."""
        layer = self.layers[name]
        assert layer.running_mean is not None and layer.running_var is not None
        count = self.counts[name]
        mean = self.sums[name].cpu() / count
        running_std = torch.sqrt(layer.running_var.float().cpu() + layer.eps)
        return float(((mean - layer.running_mean.float().cpu()).abs() / running_std).mean())

    def shift_by_stage(self, backbone: BackboneSpec) -> dict[str, float]:
        """Each stage's mean shift over its BatchNorm layers that saw data."""
        by_stage: dict[str, float] = {}
        for stage in backbone.stages:
            prefixes = tuple(f"{module}." for module in stage.modules) + stage.modules
            names = [
                name for name in self.layers if name in self.counts and name.startswith(prefixes)
            ]
            if names:
                by_stage[stage.name] = float(np.mean([self.shift(name) for name in names]))
        return by_stage


@torch.inference_mode()
def measure_shift(
    model: nn.Module,
    backbone: BackboneSpec,
    samples: Sequence[tuple[Path, int]],
    transform: Any,
    *,
    seed: int,
) -> dict[str, float]:
    """The BatchNorm shift by stage of the pretrained `model` (eval mode) over a seeded sample
    of SHIFT_SAMPLE_IMAGES of `samples`, at the run's own eval transform."""
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(samples), generator=generator)[:SHIFT_SAMPLE_IMAGES].tolist()
    loader = DataLoader(
        ImageDataset([samples[index] for index in sorted(chosen)], [], transform),
        batch_size=32,
        collate_fn=collate_readable,
    )
    was_training = model.training
    model.eval()
    statistics = BatchNormInputStatistics(model)
    try:
        for images, labels, _unreadable in loader:
            if len(labels):
                model(images.contiguous(memory_format=torch.channels_last))
    finally:
        statistics.remove()
        model.train(was_training)
    return statistics.shift_by_stage(backbone)


def choose_batchnorm(shift_by_stage: dict[str, float], trained_stages: Sequence[str]) -> str:
    """ "frozen" when the stages that train sit within IMAGENET_LIKE_SHIFT of ImageNet's
    statistics on average, else "train" (pure: the measuring is `measure_shift`)."""
    shifts = [shift_by_stage[stage] for stage in trained_stages if stage in shift_by_stage]
    if not shifts:
        return "train"
    return "frozen" if float(np.mean(shifts)) <= IMAGENET_LIKE_SHIFT else "train"


def resolve_batchnorm(
    config: TrainConfig,
    backbone: BackboneSpec,
    weights: WeightsChoice,
    splits: DatasetSplits,
    preprocessing: Preprocessing,
    *,
    log: Callable[[str], None],
) -> TrainConfig:
    """`config` with its BatchNorm mode and --backbone-lr-mult filled in where it left them
    unset, the mode measured on the pretrained network (a resumed run recorded both)."""
    mode = config.batchnorm
    if mode is None and not weights.pretrained:
        mode = "train"  # random weights: there are no ImageNet statistics to keep
    if mode is None:
        model = create_model(backbone, len(splits.class_names), weights)
        shift = measure_shift(
            model.to(memory_format=torch.channels_last), backbone, splits.samples["train"],
            build_transforms(preprocessing)["val"], seed=config.seed,
        )  # fmt: skip
        trained = trained_stages(backbone, frozen_stage(config))
        mode = choose_batchnorm(shift, trained)
        log(batchnorm_line(mode, [shift[stage] for stage in trained if stage in shift]))
    resolved = replace(config, batchnorm=mode)  # backbone_lr_mult_of reads the mode
    return replace(resolved, backbone_lr_mult=backbone_lr_mult_of(resolved))


def backbone_lr_mult_of(config: TrainConfig) -> float:
    """--backbone-lr-mult, or its default for the run's BatchNorm mode."""
    if config.backbone_lr_mult is not None:
        return config.backbone_lr_mult
    return BACKBONE_LR_MULT[config.batchnorm or "train"]


def batchnorm_line(mode: str, shifts: Sequence[float]) -> str:
    """What the run logs about its BatchNorm mode and why."""
    kept = "ImageNet's statistics kept" if mode == "frozen" else "the batches' statistics"
    if not shifts:  # LayerNorm backbones, or no readable image in the sample
        return f"BatchNorm: {mode} ({kept}): no BatchNorm layer in the trained stages measured"
    return (
        f"BatchNorm: {mode} ({kept}): the trained stages' mean shift from ImageNet's statistics "
        f"is {float(np.mean(shifts)):.2f} ({'<=' if mode == 'frozen' else '>'} "
        f"{IMAGENET_LIKE_SHIFT}, {SHIFT_SAMPLE_IMAGES} train images)"
    )


def trained_stages(backbone: BackboneSpec, freeze_until: str | None) -> list[str]:
    """The stages after `freeze_until` (every stage when None)."""
    names = [stage.name for stage in backbone.stages]
    return names if freeze_until is None else names[names.index(freeze_until) + 1 :]
