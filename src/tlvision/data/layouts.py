"""Where a dataset's images are and which class each belongs to: the layouts, the splits.

DATA/train/<class>/*.jpg and DATA/val/<class>/*.jpg. Classes are matched by folder name across
splits, so a missing or extra folder on one side is an error rather than a silent label shift.
A flat DATA/<class>/*.jpg folder (no train/ or val/) is split here, seeded and stratified.

File names are kept as Python gives them (os.fsdecode): a byte that is not valid UTF-8, such as
0xff in a name written by an old camera, becomes a lone surrogate (U+DCFF), so every Path opens
the right file. JSON files hold these strings escaped as ASCII ("\\udcff", tlvision.jsonio),
which json.loads turns back into the same name; the CLI writes text to streams that cannot fail
on them (tlvision.cli.main).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tlvision.data.label_table import CSV_LAYOUT, has_label_tables, read_label_tables
from tlvision.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
PHASES = ("train", "val")


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


@dataclass(frozen=True)
class DatasetSplits:
    """The train and val splits of a dataset, with the class names they share."""

    root: Path
    class_names: tuple[str, ...]
    samples: dict[str, list[tuple[Path, int]]]  # phase -> [(path, class index)]
    val_split: float | None = None  # the fraction of train held out as val, when there is no val/
    layout: str = "split"  # "split" (train/ and val/ folders), "flat" (DATA/<class>/), "csv"
    broken_links: tuple[Path, ...] = ()  # image-named links to missing files, in no split
    # multi-label data (label tables): every table's rows' class indices, train's first; a
    # sample's integer is then its row here (unique across splits), not a class index. None:
    # one class per image.
    targets: tuple[tuple[int, ...], ...] | None = None

    @property
    def multi_label(self) -> bool:
        return self.targets is not None

    def class_counts(self, phase: str = "train") -> list[int]:
        """Images per class; multi-label: positive images per class."""
        counts = [0] * len(self.class_names)
        for _, label in self.samples[phase]:
            for class_index in self.classes_of(label):
                counts[class_index] += 1
        return counts

    def classes_of(self, label: int) -> tuple[int, ...]:
        """The class indices of a sample's integer (its class, or its row's labels)."""
        return (label,) if self.targets is None else self.targets[label]

    def target_matrix(self, labels: Sequence[int]) -> Any:
        """(N, classes) float32 0/1 targets of samples' integers (multi-hot; one-hot)."""
        import numpy as np

        matrix = np.zeros((len(labels), len(self.class_names)), dtype=np.float32)
        for row, label in enumerate(labels):
            matrix[row, list(self.classes_of(int(label)))] = 1.0
        return matrix


SPLIT_LAYOUT = "DATA/train/<class>/*.jpg and DATA/val/<class>/*.jpg"
FLAT_LAYOUT = "DATA/<class>/*.jpg"
LAYOUT = f"{SPLIT_LAYOUT}, or flat as {FLAT_LAYOUT}, or labels in {CSV_LAYOUT}"
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
    if has_label_tables(data_dir):
        return "csv"
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
    layout = dataset_layout(data_dir)
    if layout == "csv":
        return csv_note(data_dir)
    if layout != "flat":
        return None
    held_out = round(100 * (FLAT_VAL_SPLIT if val_split is None else val_split))
    return (
        f"{data_dir} has no train/ and val/: using a seeded stratified {100 - held_out}/"
        f"{held_out} split of its class folders (--val-split to change)"
    )


def csv_note(data_dir: Path) -> str:
    """The one line for a CSV dataset; its problems are reported where they stop the command
    (train: the first; check: every one)."""
    note = f"{data_dir} has train.csv: reading labels from its CSV tables"
    try:
        tables = read_label_tables(data_dir)
    except UserError:
        return note
    kind = "multi-label" if tables.multi_label else "single-label"
    return f"{note} ({kind}, {len(tables.class_names)} classes)"


def find_splits(data_dir: Path, *, val_split: float | None = None, seed: int = 0) -> DatasetSplits:
    """Check the dataset's layout and match classes by name across train and val.

    With `val_split` and no val/ folder, a stratified, seeded share of each train class is held
    out as val instead; a flat dataset (DATA/<class>/) is split so, FLAT_VAL_SPLIT by default.
    """
    require_fraction(val_split)
    layout = dataset_layout(data_dir)
    if layout == "csv":
        if val_split is not None:
            raise UserError(
                f"{data_dir / 'val.csv'}: a CSV dataset has its val table; drop --val-split"
            )
        return csv_splits(data_dir)
    if layout == "flat":
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


def csv_splits(data_dir: Path) -> DatasetSplits:
    """The splits of a CSV dataset: single-label when every row has one label."""
    tables = read_label_tables(data_dir)
    phases = tables.rows.keys()
    if not tables.multi_label:
        index = {name: position for position, name in enumerate(tables.class_names)}
        single = {
            phase: [(row.path, index[row.labels[0]]) for row in tables.rows[phase]]
            for phase in phases
        }
        return DatasetSplits(data_dir, tables.class_names, single, layout="csv")
    samples: dict[str, list[tuple[Path, int]]] = {}
    targets: list[tuple[int, ...]] = []
    for phase in phases:
        samples[phase] = [(row.path, len(targets) + n) for n, row in enumerate(tables.rows[phase])]
        targets += tables.targets(phase)
    return DatasetSplits(
        data_dir, tables.class_names, samples, layout="csv", targets=tuple(targets)
    )


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
