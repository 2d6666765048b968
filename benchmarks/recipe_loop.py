"""The classic recipe's own training loop, kept as the baseline our benchmarks measure against.

Written from the recipe's description (../shared/reference/transfer_learning_tutorial.txt):
ImageFolder with RandomResizedCrop(224) + flip for train and Resize(256) + CenterCrop(224) for
val, batch 4, SGD lr 0.001 momentum 0.9, StepLR every 7 epochs x0.1, 25 epochs, a train and a
val phase per epoch, the best val weights kept. The backbone is mobilenet_v2 with its ImageNet
weights (the recipe uses resnet18, whose weights no registry package ships). As in the recipe,
the "fixed feature extractor" mode calls model.train(), so its BatchNorm statistics still move.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision import datasets, transforms

from tlvision.models.backbone import get_backbone
from tlvision.models.weights import ensure_weights_file, load_state_dict_file

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def recipe_loaders(data_dir: Path, num_workers: int) -> dict[str, torch.utils.data.DataLoader]:
    phase_transforms = {
        "train": transforms.Compose(
            [
                transforms.RandomResizedCrop(224),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                transforms.Normalize(MEAN, STD),
            ]
        ),
        "val": transforms.Compose(
            [
                transforms.Resize(256),
                transforms.CenterCrop(224),
                transforms.ToTensor(),
                transforms.Normalize(MEAN, STD),
            ]
        ),
    }
    return {
        phase: torch.utils.data.DataLoader(
            datasets.ImageFolder(str(data_dir / phase), phase_transforms[phase]),
            batch_size=4,
            shuffle=True,
            num_workers=num_workers,
        )
        for phase in ("train", "val")
    }


def pretrained_mobilenet_v2(num_classes: int) -> nn.Module:
    model = torchvision.models.mobilenet_v2(weights=None)
    path = ensure_weights_file(get_backbone("mobilenet_v2").default_weights, log=False)
    model.load_state_dict(load_state_dict_file(path))
    model.classifier[1] = nn.Linear(model.last_channel, num_classes)
    return model


def run_recipe(
    data_dir: Path,
    *,
    fixed_features: bool,
    epochs: int = 25,
    num_workers: int = 2,
    seed: int = 0,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, float]:
    """Train as the recipe does; return seconds and best val accuracy.

    `on_epoch` receives each epoch's number, val accuracy, its seconds and the seconds since
    the start (for per-epoch timing; the loop itself is the recipe's)."""
    torch.manual_seed(seed)
    loaders = recipe_loaders(data_dir, num_workers)
    model = pretrained_mobilenet_v2(len(loaders["train"].dataset.classes))  # type: ignore[attr-defined]
    if fixed_features:
        for parameter in model.parameters():
            parameter.requires_grad = False
        for parameter in model.classifier[1].parameters():
            parameter.requires_grad = True
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.001, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.1)
    criterion = nn.CrossEntropyLoss()

    started = time.perf_counter()
    best_weights, best_acc = copy.deepcopy(model.state_dict()), 0.0
    for epoch in range(1, epochs + 1):
        epoch_started = time.perf_counter()
        for phase in ("train", "val"):
            model.train(phase == "train")
            corrects = 0
            for inputs, labels in loaders[phase]:
                optimizer.zero_grad()
                with torch.set_grad_enabled(phase == "train"):
                    outputs = model(inputs)
                    loss = criterion(outputs, labels)
                    if phase == "train":
                        loss.backward()
                        optimizer.step()
                corrects += int((outputs.argmax(1) == labels).sum())
            if phase == "train":
                scheduler.step()
            accuracy = corrects / len(loaders[phase].dataset)  # type: ignore[arg-type]
            if phase == "val" and accuracy > best_acc:
                best_acc, best_weights = accuracy, copy.deepcopy(model.state_dict())
        if on_epoch is not None:
            now = time.perf_counter()
            on_epoch(
                {
                    "epoch": epoch,
                    "val_acc": accuracy,
                    "seconds": now - epoch_started,
                    "elapsed": now - started,
                }
            )
    model.load_state_dict(best_weights)
    return {"seconds": time.perf_counter() - started, "best_val_acc": best_acc}
