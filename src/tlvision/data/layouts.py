"""Datasets in the ImageFolder layout and the phase-keyed transforms that feed them.

DATA/train/<class>/*.jpg and DATA/val/<class>/*.jpg. Classes are matched by folder name across
splits, so a missing or extra folder on one side is an error rather than a silent label shift.
A flat DATA/<class>/*.jpg folder (no train/ or val/) is split here, seeded and stratified.

File names are kept as Python gives them (os.fsdecode): a byte that is not valid UTF-8, such as
0xff in a name written by an old camera, becomes a lone surrogate (U+DCFF), so every Path opens
the right file. JSON files hold these strings escaped as ASCII ("\\udcff", checkpoint.json_text),
which json.loads turns back into the same name; the CLI writes text to streams that cannot fail
on them (see cli.main).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import v2 as transforms

from tlvision.data.images import BadImageError, load_rgb_image
from tlvision.errors import UserError
from tlvision.models.weights import Preprocessing

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
PHASES = ("train", "val")


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


def is_broken_link(path: Path) -> bool:
    """A symbolic link whose target is gone (or a link loop): neither a file nor a folder."""
    return path.is_symlink() and not path.exists()


def image_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """The image files under `folder` (recursively, sorted), and apart the broken links with an
    image name: `is_file()` is false for those, so without this they would vanish silently."""
    files: list[Path] = []
    broken: list[Path] = []
    for path in sorted(folder.rglob("*")):
        if not is_image_file(path):
            continue
        if path.is_file():
            files.append(path)
        elif is_broken_link(path):
            broken.append(path)
    return files, broken


def list_class_folders(split_dir: Path) -> list[str]:
    return sorted(
        entry.name
        for entry in split_dir.iterdir()
        if entry.is_dir() and not entry.name.startswith(".") and entry.name != "__MACOSX"
    )


def scan_split(
    split_dir: Path, class_names: Sequence[str]
) -> tuple[list[tuple[Path, int]], list[Path]]:
    """All image files of a split as (path, class index) in a stable order, and the broken
    links among them (left out of the samples: see `image_files`)."""
    samples: list[tuple[Path, int]] = []
    broken_links: list[Path] = []
    for class_index, class_name in enumerate(class_names):
        class_dir = split_dir / class_name
        files, broken = image_files(class_dir)
        if not files:
            raise UserError(
                f"{class_dir}: class folder has no images ({', '.join(IMAGE_EXTENSIONS)}); "
                "add images to it or remove the folder"
            )
        samples.extend((path, class_index) for path in files)
        broken_links.extend(broken)
    return samples, broken_links


UNREADABLE = -1  # the label ImageDataset gives a file it cannot decode (see collate_readable)


class ImageDataset(Dataset[tuple[torch.Tensor, int]]):
    """A list of (image path, class index) with a transform; images are decoded on demand.

    A file that cannot be decoded (truncated, not an image, a decompression bomb) yields an
    empty tensor and the label UNREADABLE - index - ... so that `collate_readable` can drop it
    from the batch and report which sample it was: one broken JPEG must not end a run.
    """

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
        try:
            image = load_rgb_image(path)
        except BadImageError:
            return torch.empty(0), UNREADABLE - index
        return self.transform(image), label


def collate_readable(
    batch: Sequence[tuple[torch.Tensor, int]],
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Stack the decodable samples; return (images, labels, dataset indices of unreadable ones)."""
    good = [(image, label) for image, label in batch if label > UNREADABLE]
    unreadable = [UNREADABLE - label for _, label in batch if label <= UNREADABLE]
    if not good:
        return torch.empty(0, 3, 1, 1), torch.empty(0, dtype=torch.long), unreadable
    images = torch.stack([image for image, _ in good])
    labels = torch.tensor([label for _, label in good], dtype=torch.long)
    return images, labels, unreadable


@dataclass(frozen=True)
class DatasetSplits:
    """The train and val splits of a dataset, with the class names they share."""

    root: Path
    class_names: tuple[str, ...]
    samples: dict[str, list[tuple[Path, int]]]  # phase -> [(path, class index)]
    val_split: float | None = None  # the fraction of train held out as val, when there is no val/
    layout: str = "split"  # "split" (train/ and val/ folders) or "flat" (DATA/<class>/)
    broken_links: tuple[Path, ...] = ()  # image-named links to missing files, in no split

    def class_counts(self, phase: str = "train") -> list[int]:
        counts = [0] * len(self.class_names)
        for _, label in self.samples[phase]:
            counts[label] += 1
        return counts


SPLIT_LAYOUT = "DATA/train/<class>/*.jpg and DATA/val/<class>/*.jpg"
FLAT_LAYOUT = "DATA/<class>/*.jpg"
LAYOUT = f"{SPLIT_LAYOUT}, or flat as {FLAT_LAYOUT}"
FLAT_VAL_SPLIT = 0.2
"""The share of each class held out as val when a flat dataset is given without --val-split."""


def require_directory(data_dir: Path) -> None:
    """A clear error when the dataset path is missing or is a file."""
    if not data_dir.exists():
        raise UserError(f"{data_dir}: no such directory; pass the dataset folder ({LAYOUT})")
    if not data_dir.is_dir():
        raise UserError(f"{data_dir}: not a directory; pass the dataset folder ({LAYOUT})")


def dataset_layout(data_dir: Path) -> str:
    """The layout of DATA: "split" with a train/ folder, "flat" with only class folders.

    The one place that decides how a dataset folder is read (train, check, probe and advise
    all come here); anything else is a UserError that names the folder and the fix.
    """
    require_directory(data_dir)
    if (data_dir / "train").is_dir():
        return "split"
    if (data_dir / "val").is_dir():
        raise UserError(f"{data_dir / 'train'}: no such folder; a dataset is laid out as {LAYOUT}")
    if data_dir.name in PHASES and (data_dir.parent / "train").is_dir():
        raise UserError(
            f"{data_dir}: a split of a dataset, not a dataset (did you mean {data_dir.parent}?); "
            f"pass the folder laid out as {LAYOUT}"
        )
    if not list_class_folders(data_dir):
        raise UserError(
            f"{data_dir}: no train/ folder and no class folders, so not a dataset; pass the "
            f"folder laid out as {LAYOUT}"
        )
    return "flat"


def require_fraction(val_split: float | None) -> None:
    if val_split is not None and not 0 < val_split < 1:
        raise UserError(f"--val-split {val_split}: give a fraction between 0 and 1, e.g. 0.2")


def layout_note(data_dir: Path, val_split: float | None) -> str | None:
    """The one line that tells the user a flat dataset is split for them (None otherwise)."""
    require_fraction(val_split)
    if dataset_layout(data_dir) != "flat":
        return None
    held_out = round(100 * (FLAT_VAL_SPLIT if val_split is None else val_split))
    return (
        f"{data_dir} has no train/ and val/: using a seeded stratified {100 - held_out}/"
        f"{held_out} split of its class folders (--val-split to change)"
    )


def find_splits(data_dir: Path, *, val_split: float | None = None, seed: int = 0) -> DatasetSplits:
    """Check the dataset's layout and match classes by name across train and val.

    With `val_split` and no val/ folder, a stratified, seeded share of each train class is held
    out as val instead; a flat dataset (DATA/<class>/) is split so, FLAT_VAL_SPLIT by default.
    """
    require_fraction(val_split)
    if dataset_layout(data_dir) == "flat":
        fraction = FLAT_VAL_SPLIT if val_split is None else val_split
        return _held_out_splits(data_dir, data_dir, fraction, seed, layout="flat")
    has_val = (data_dir / "val").is_dir()
    if val_split is not None:
        if has_val:
            raise UserError(
                f"{data_dir / 'val'}: exists, so --val-split would ignore it; drop --val-split "
                "or move that folder away"
            )
        return _held_out_splits(data_dir, data_dir / "train", val_split, seed, layout="split")
    if not has_val:
        raise UserError(
            f"{data_dir / 'val'}: no such folder; a dataset is laid out as {LAYOUT}, or pass "
            "--val-split 0.2 to hold out a fifth of train/ for validation"
        )
    class_names = _matched_class_names(data_dir)
    scans = {phase: scan_split(data_dir / phase, class_names) for phase in PHASES}
    samples = {phase: scans[phase][0] for phase in PHASES}
    broken = tuple(path for phase in PHASES for path in scans[phase][1])
    return DatasetSplits(data_dir, tuple(class_names), samples, broken_links=broken)


def _held_out_splits(
    data_dir: Path, pool_dir: Path, fraction: float, seed: int, *, layout: str
) -> DatasetSplits:
    """Train and val both drawn from the class folders of `pool_dir`."""
    class_names = _class_names(pool_dir)
    pool, broken = scan_split(pool_dir, class_names)
    samples = stratified_split(pool, fraction, seed)
    return DatasetSplits(
        data_dir, tuple(class_names), samples, fraction, layout=layout, broken_links=tuple(broken)
    )


def _class_names(split_dir: Path) -> list[str]:
    """The class folders of a split: at least two, or a UserError."""
    names = list_class_folders(split_dir)
    _require_classes(split_dir, names, at_least=2)
    return names


def _require_classes(split_dir: Path, names: Sequence[str], *, at_least: int) -> None:
    if not names:
        raise UserError(
            f"{split_dir}: no class folders; put each class's images in {split_dir}/<class name>/"
        )
    if len(names) < at_least:
        raise UserError(
            f"{split_dir}: found one class ({names[0]}); a classifier needs at least two class "
            "folders"
        )


def _matched_class_names(data_dir: Path) -> list[str]:
    """train/'s class folders, which val/ must match by name (no silent label shift)."""
    names = {phase: list_class_folders(data_dir / phase) for phase in PHASES}
    for phase in PHASES:
        _require_classes(data_dir / phase, names[phase], at_least=1)
    if names["train"] != names["val"]:
        only_train = sorted(set(names["train"]) - set(names["val"]))
        only_val = sorted(set(names["val"]) - set(names["train"]))
        raise UserError(
            f"{data_dir}: class folders differ between splits: train has {names['train']}, "
            f"val has {names['val']} (only in train: {only_train}, only in val: {only_val}); "
            "give both splits the same class folder names"
        )
    _require_classes(data_dir / "train", names["train"], at_least=2)
    return names["train"]


def stratified_split(
    samples: Sequence[tuple[Path, int]], fraction: float, seed: int
) -> dict[str, list[tuple[Path, int]]]:
    """Hold out `fraction` of each class (at least one image) as val, the same for a seed."""
    generator = torch.Generator().manual_seed(seed)
    split: dict[str, list[tuple[Path, int]]] = {"train": [], "val": []}
    for label in sorted({label for _, label in samples}):
        members = [sample for sample in samples if sample[1] == label]
        if len(members) < 2:
            raise UserError(
                f"{members[0][0].parent}: one image cannot be split between train and val; "
                "add images or make a val/ folder"
            )
        order = torch.randperm(len(members), generator=generator).tolist()
        held_out = min(len(members) - 1, max(1, round(len(members) * fraction)))
        split["val"].extend(members[index] for index in sorted(order[:held_out]))
        split["train"].extend(members[index] for index in sorted(order[held_out:]))
    return split


def default_num_workers() -> int:
    """Loader processes (and predict's decoding threads): one per core, up to 8.

    For predict, 2 decoding threads beside ONNX Runtime's 2 measured 98 img/s against 64 with
    one (benchmarks/RESULTS.md, streaming predict): the forward's threads leave gaps to fill.

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
    sampler: Sampler[int] | None = None,
) -> DataLoader[tuple[torch.Tensor, int]]:
    """`sampler` (a rank's share, see tlvision.compute.distributed) replaces the shuffle when given."""
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=num_workers,
        generator=generator,
        pin_memory=pin_memory,
        collate_fn=collate_readable,
    )


def reseed_loader(loader: DataLoader[tuple[torch.Tensor, int]], seed: int, epoch: int) -> None:
    """Make an epoch's shuffle order and augmentations depend only on (seed, epoch).

    Workers are started afresh each epoch and seeded from the loader's generator, so a run
    resumed at epoch N draws exactly what the uninterrupted run drew at epoch N.
    """
    if loader.generator is not None:
        loader.generator.manual_seed(seed * 100_003 + epoch)


def inverse_frequency_weights(counts: list[int]) -> list[float]:
    """n_total / (n_classes * n_class), scikit-learn's "balanced" class weights: each class
    contributes equally to the loss. A class with no images (a train split never has one:
    scan_split and the held-out split refuse it) weighs as if it had one, n_total / n_classes."""
    from sklearn.utils.class_weight import compute_class_weight

    labels = np.arange(len(counts))
    present = labels[np.asarray(counts, dtype=np.int64) > 0]
    weights = np.full(len(counts), sum(counts) / max(1, len(counts)))
    if len(present) > 0:
        y = np.repeat(labels, counts)
        weights[present] = compute_class_weight("balanced", classes=present, y=y)
        if len(present) < len(counts):  # "balanced" divides by the classes present, not all
            weights[present] *= len(present) / len(counts)
    return [float(weight) for weight in weights]
