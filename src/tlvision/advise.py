"""The advisor: measure the dataset on the recipe's two axes and recommend a strategy.

The classic recipe's rules of thumb: small and similar to the pretraining data, a linear
classifier on the top CNN codes; large and similar, fine-tune; small and different, a linear
classifier on codes from an earlier stage; large and different, fine-tune the whole network from
its pretrained weights. Nobody tells users which quadrant they are in. This module measures it:

size          images per class and in total, imbalance, native resolution (from file headers)
similarity    three measured signals, each of which falls as data moves away from ImageNet:
              - how confidently the pretrained 1000-class ImageNet head answers (mean top-1
                softmax probability): photos of ImageNet-like things get confident answers,
                digits, textures and scans get a spread-out guess;
              - how far the data's activations sit from the pretrained BatchNorm statistics
                (mean |batch mean - running mean| / running std over channels, per stage): the
                running statistics are ImageNet's, so the distance is a direct measure of shift;
              - how probe accuracy changes from earlier stages to the top: when the top codes beat
                earlier ones, the ImageNet-specific features are useful; when an earlier stage
                wins, they are too specific for this data.
capacity      a learning curve: probe accuracy on growing subsets of train. Still rising at the
              full set means more data or more trainable capacity can pay off (fine-tuning);
              flat means the frozen features already give what the data can.

Everything is measured on a seeded sample, so the same data and seed give the same advice.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from tlvision.backbones import BackboneSpec
from tlvision.data import DatasetSplits, ImageDataset, collate_readable

Sample = tuple[Path, int]


@dataclass(frozen=True)
class SizeEvidence:
    train_images: int
    val_images: int
    classes: int
    per_class_min: int
    per_class_median: float
    per_class_max: int
    imbalance_ratio: float  # largest / smallest train class
    native_short_side: int  # median of min(width, height) over a sample of files

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def native_short_side(paths: Sequence[Path], *, limit: int = 400) -> int:
    """Median short side, read from headers only (PIL opens lazily): cheap even for large sets."""
    sides = []
    for path in paths[:limit]:
        try:
            with Image.open(path) as image:
                sides.append(min(image.size))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            continue
    return int(statistics.median(sides)) if sides else 0


def sample_per_class(
    samples: Sequence[Sample], per_class: int, seed: int
) -> list[Sample]:
    """At most `per_class` samples of each class, drawn with a seeded generator, in file order."""
    generator = torch.Generator().manual_seed(seed)
    chosen: list[Sample] = []
    for label in sorted({label for _, label in samples}):
        members = [sample for sample in samples if sample[1] == label]
        if len(members) > per_class:
            keep = sorted(torch.randperm(len(members), generator=generator)[:per_class].tolist())
            members = [members[index] for index in keep]
        chosen.extend(members)
    return chosen


def measure_size(splits: DatasetSplits, *, seed: int) -> SizeEvidence:
    counts = splits.class_counts("train")
    spread = sample_per_class(splits.samples["train"], 40, seed)
    return SizeEvidence(
        train_images=len(splits.samples["train"]),
        val_images=len(splits.samples["val"]),
        classes=len(splits.class_names),
        per_class_min=min(counts),
        per_class_median=float(statistics.median(counts)),
        per_class_max=max(counts),
        imbalance_ratio=max(counts) / max(1, min(counts)),
        native_short_side=native_short_side([path for path, _ in spread]),
    )


@dataclass(frozen=True)
class PretrainedFit:
    """How the data looks to the pretrained network with its own ImageNet head."""

    imagenet_confidence: float  # mean top-1 softmax probability of the 1000-class head
    batchnorm_shift: dict[str, float]  # stage -> mean over its BN layers of the channel shift
    images: int

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class _BatchNormInputStatistics:
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


@torch.inference_mode()
def measure_pretrained_fit(
    model: nn.Module,
    backbone: BackboneSpec,
    samples: Sequence[Sample],
    transform: Any,
    *,
    batch_size: int = 32,
    num_workers: int = 0,
) -> PretrainedFit:
    """One pass of the pretrained network, with its original ImageNet head, over `samples`."""
    model.eval()
    statistics_hooks = _BatchNormInputStatistics(model)
    loader = DataLoader(
        ImageDataset(samples, [], transform),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_readable,
    )
    confidences: list[torch.Tensor] = []
    try:
        for images, labels, _unreadable in loader:
            if len(labels) == 0:
                continue
            logits = model(images.contiguous(memory_format=torch.channels_last))
            confidences.append(torch.softmax(logits.float(), dim=1).max(dim=1).values)
    finally:
        statistics_hooks.remove()
    shift_by_stage: dict[str, float] = {}
    for stage in backbone.stages:
        prefixes = tuple(f"{module}." for module in stage.modules) + stage.modules
        names = [
            name
            for name in statistics_hooks.layers
            if name in statistics_hooks.counts and name.startswith(prefixes)
        ]
        if names:
            shift_by_stage[stage.name] = float(np.mean([statistics_hooks.shift(n) for n in names]))
    confidence = float(torch.cat(confidences).mean()) if confidences else math.nan
    return PretrainedFit(
        imagenet_confidence=confidence,
        batchnorm_shift=shift_by_stage,
        images=sum(len(c) for c in confidences),
    )


def elapsed(started: float) -> float:
    return time.perf_counter() - started
