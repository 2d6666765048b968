"""Datasets in the ImageFolder layout and the phase-keyed transforms that feed them.

DATA/train/<class>/*.jpg and DATA/val/<class>/*.jpg. Classes are matched by folder name across
splits, so a missing or extra folder on one side is an error rather than a silent label shift.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2 as transforms

from tlvision.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
PHASES = ("train", "val")


@dataclass(frozen=True)
class Preprocessing:
    """How images are turned into tensors: taken from the backbone's pretrained weights."""

    resize_size: int = 256
    crop_size: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"

    def to_json(self) -> dict[str, object]:
        return {
            "resize_size": self.resize_size,
            "crop_size": self.crop_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Preprocessing:
        mean = tuple(float(value) for value in data["mean"])  # type: ignore[attr-defined]
        std = tuple(float(value) for value in data["std"])  # type: ignore[attr-defined]
        return cls(
            resize_size=int(data["resize_size"]),  # type: ignore[call-overload]
            crop_size=int(data["crop_size"]),  # type: ignore[call-overload]
            mean=mean,  # type: ignore[arg-type]
            std=std,  # type: ignore[arg-type]
            interpolation=str(data["interpolation"]),
        )


def build_transforms(
    preprocessing: Preprocessing,
) -> dict[str, Callable[[Image.Image], torch.Tensor]]:
    """The phase-keyed transform set: augmentation for train, resize + centre crop for val."""
    interpolation = transforms.InterpolationMode(preprocessing.interpolation)
    to_normalized_tensor = [
        transforms.ToImage(),
        transforms.ToDtype(torch.float32, scale=True),
        transforms.Normalize(list(preprocessing.mean), list(preprocessing.std)),
    ]
    return {
        "train": transforms.Compose(
            [
                transforms.RandomResizedCrop(
                    preprocessing.crop_size, interpolation=interpolation, antialias=True
                ),
                transforms.RandomHorizontalFlip(),
                *to_normalized_tensor,
            ]
        ),
        "val": transforms.Compose(
            [
                transforms.Resize(
                    preprocessing.resize_size, interpolation=interpolation, antialias=True
                ),
                transforms.CenterCrop(preprocessing.crop_size),
                *to_normalized_tensor,
            ]
        ),
    }


def is_image_file(path: Path) -> bool:
    """Hidden and system files (.DS_Store, ._foo.jpg, Thumbs.db) are never images."""
    return not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def list_class_folders(split_dir: Path) -> list[str]:
    return sorted(
        entry.name
        for entry in split_dir.iterdir()
        if entry.is_dir() and not entry.name.startswith(".") and entry.name != "__MACOSX"
    )


def scan_split(split_dir: Path, class_names: Sequence[str]) -> list[tuple[Path, int]]:
    """All image files of a split as (path, class index), in a stable order."""
    samples: list[tuple[Path, int]] = []
    for class_index, class_name in enumerate(class_names):
        class_dir = split_dir / class_name
        files = sorted(
            path for path in class_dir.rglob("*") if path.is_file() and is_image_file(path)
        )
        if not files:
            raise UserError(
                f"{class_dir}: class folder has no images ({', '.join(IMAGE_EXTENSIONS)}); "
                "add images to it or remove the folder"
            )
        samples.extend((path, class_index) for path in files)
    return samples


def load_rgb_image(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


class ImageDataset(Dataset[tuple[torch.Tensor, int]]):
    """A list of (image path, class index) with a transform; images are decoded on demand."""

    def __init__(
        self,
        samples: Sequence[tuple[Path, int]],
        class_names: Sequence[str],
        transform: Callable[[Image.Image], torch.Tensor],
    ) -> None:
        self.samples = list(samples)
        self.class_names = list(class_names)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        return self.transform(load_rgb_image(path)), label


@dataclass(frozen=True)
class DatasetSplits:
    """The train and val splits of a dataset, with the class names they share."""

    root: Path
    class_names: tuple[str, ...]
    samples: dict[str, list[tuple[Path, int]]]


def find_splits(data_dir: Path) -> DatasetSplits:
    """Check the ImageFolder layout and match classes by name across train and val."""
    if not data_dir.exists():
        raise UserError(
            f"{data_dir}: no such directory; pass the folder that holds train/ and val/"
        )
    if not data_dir.is_dir():
        raise UserError(f"{data_dir}: not a directory; pass the folder that holds train/ and val/")
    missing = [phase for phase in PHASES if not (data_dir / phase).is_dir()]
    if missing:
        layout = "DATA/train/<class>/*.jpg and DATA/val/<class>/*.jpg"
        raise UserError(
            f"{data_dir / missing[0]}: no such folder; a dataset is laid out as {layout}"
        )
    classes_by_phase = {phase: list_class_folders(data_dir / phase) for phase in PHASES}
    for phase, names in classes_by_phase.items():
        if not names:
            raise UserError(
                f"{data_dir / phase}: no class folders; put each class's images in "
                f"{data_dir / phase}/<class name>/"
            )
    if classes_by_phase["train"] != classes_by_phase["val"]:
        train_names, val_names = classes_by_phase["train"], classes_by_phase["val"]
        only_train = sorted(set(train_names) - set(val_names))
        only_val = sorted(set(val_names) - set(train_names))
        raise UserError(
            f"{data_dir}: class folders differ between splits: train has {train_names}, "
            f"val has {val_names} (only in train: {only_train}, only in val: {only_val}); "
            "give both splits the same class folder names"
        )
    class_names = classes_by_phase["train"]
    if len(class_names) < 2:
        raise UserError(
            f"{data_dir / 'train'}: found one class ({class_names[0]}); a classifier needs "
            "at least two class folders"
        )
    samples = {phase: scan_split(data_dir / phase, class_names) for phase in PHASES}
    return DatasetSplits(root=data_dir, class_names=tuple(class_names), samples=samples)


def default_num_workers() -> int:
    """Loader processes: one per core, up to 8.

    Decoding JPEGs in the main process stalls the model. With OpenMP's passive wait policy
    (set in tlvision/__init__.py) the model's idle threads yield to the loaders, so one worker
    per core measured fastest on 2 cores: 9.6 s an epoch against 14.5 s with one worker.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(8, cores or 1))


def make_loader(
    dataset: Dataset[tuple[torch.Tensor, int]],
    *,
    batch_size: int,
    shuffle: bool,
    num_workers: int,
    seed: int,
    pin_memory: bool = False,
) -> DataLoader[tuple[torch.Tensor, int]]:
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        generator=generator,
        pin_memory=pin_memory,
    )


def reseed_loader(loader: DataLoader[tuple[torch.Tensor, int]], seed: int, epoch: int) -> None:
    """Make an epoch's shuffle order and augmentations depend only on (seed, epoch).

    Workers are started afresh each epoch and seeded from the loader's generator, so a run
    resumed at epoch N draws exactly what the uninterrupted run drew at epoch N.
    """
    if loader.generator is not None:
        loader.generator.manual_seed(seed * 100_003 + epoch)
