"""`tlvision add-labels CSV DATA`: the rows of label-next's CSV with a class filled in, copied
into DATA/train/<class>/. Copies, never moves; everything is checked before the first copy, so
a refused CSV changes nothing."""

from __future__ import annotations

import csv
import shutil
from dataclasses import dataclass
from pathlib import Path

from tlvision.data.label_table import has_label_tables
from tlvision.errors import UserError


@dataclass(frozen=True)
class Copy:
    source: Path
    target: Path


def _rows(csv_path: Path) -> list[dict[str, str]]:
    try:
        with csv_path.open(newline="", encoding="utf-8", errors="surrogateescape") as handle:
            rows = list(csv.DictReader(handle))
    except FileNotFoundError as error:
        raise UserError(f"{csv_path}: no such file; pass the CSV label-next wrote") from error
    if rows and not {"file", "class"} <= set(rows[0]):
        raise UserError(f"{csv_path}: needs 'file' and 'class' columns (label-next's CSV)")
    return rows


def planned_copies(csv_path: Path, data_dir: Path) -> list[Copy]:
    """What add-labels would copy; a UserError for an unknown class, a missing file or a name
    already in the class folder (or given twice)."""
    if has_label_tables(data_dir):
        raise UserError(
            f"{data_dir}: labels come from its CSV tables (train.csv), which add-labels does not "
            "edit; add the rows to train.csv yourself (file,labels)"
        )
    train = data_dir / "train"
    if not train.is_dir():
        raise UserError(f"{data_dir}: no train/ folder; pass a dataset with DATA/train/<class>/")
    classes = sorted(entry.name for entry in train.iterdir() if entry.is_dir())
    copies: list[Copy] = []
    for number, row in enumerate(_rows(csv_path), start=2):
        name = (row.get("class") or "").strip()
        if not name:
            continue
        if name not in classes:
            raise UserError(
                f"{csv_path}: line {number}: class {name!r} is not a folder of {train} "
                f"({', '.join(classes)}); correct it, or make the folder to add a class"
            )
        source = Path(row["file"])
        if not source.is_file():
            raise UserError(f"{csv_path}: line {number}: {source}: no such file")
        target = train / name / source.name
        if target.exists() or any(copy.target == target for copy in copies):
            raise UserError(
                f"{csv_path}: line {number}: {target} already exists; rename {source} first"
            )
        copies.append(Copy(source, target))
    return copies


def add_labels(csv_path: Path, data_dir: Path) -> list[Copy]:
    """Copy every labelled row's file into DATA/train/<class>/ (checked first, all or none)."""
    copies = planned_copies(csv_path, data_dir)
    for copy in copies:
        shutil.copy2(copy.source, copy.target)
    return copies
