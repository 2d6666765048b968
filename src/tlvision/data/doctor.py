"""The dataset doctor behind ``tlvision check DATA``: find what would break or skew training.

Scans DATA/train, DATA/val and, when there is one, DATA/test (or a flat DATA/<class>/). The
work is split by job:

- doctor_scan: the folders and files, each candidate image decoded once and hashed;
- doctor_classes: class folders compared across splits, empty classes, class weights and
  imbalance (train only);
- doctor_duplicates: the same or nearly the same image in val and train, test and train, or
  test and val (leakage), and one file under two classes;
- doctor_report: Problem, CheckReport and its text and JSON.

Problems say what is wrong and how to fix it and make the exit status 1; notes (mode
conversions, EXIF rotation, stray non-image files) are informational. Hidden and system files
(.DS_Store, Thumbs.db, ._foo.jpg, __MACOSX) are ignored, as training ignores them. A missing
test/ is normal: it is optional.
"""

from __future__ import annotations

from pathlib import Path

from tlvision.data.doctor_classes import (
    IMBALANCE_RATIO,
    class_structure,
    empty_classes,
    imbalance,
    suggested_class_weights,
)
from tlvision.data.doctor_duplicates import (
    LEAKAGE_PAIRS,
    NEAR_DUPLICATE_MAX_DISTANCE,
    exact_duplicates,
    near_duplicates,
)
from tlvision.data.doctor_report import CheckReport, Findings, Problem
from tlvision.data.doctor_scan import (
    FLAT_SPLIT,
    MIN_SIDE,
    NEAR_DUPLICATE_MIN_CONTRAST,
    SYSTEM_DIR_NAMES,
    SYSTEM_FILE_NAMES,
    TEST_SPLIT,
    UNSUPPORTED_IMAGE_EXTENSIONS,
    decode_candidates,
    scan_folders,
    split_folders,
)
from tlvision.data.doctor_tables import check_label_tables
from tlvision.data.layouts import dataset_layout

__all__ = [
    "FLAT_SPLIT",
    "IMBALANCE_RATIO",
    "LEAKAGE_PAIRS",
    "MIN_SIDE",
    "NEAR_DUPLICATE_MAX_DISTANCE",
    "NEAR_DUPLICATE_MIN_CONTRAST",
    "SYSTEM_DIR_NAMES",
    "SYSTEM_FILE_NAMES",
    "TEST_SPLIT",
    "UNSUPPORTED_IMAGE_EXTENSIONS",
    "CheckReport",
    "Problem",
    "check_dataset",
]


def check_dataset(data_dir: Path, *, progress: bool = True) -> CheckReport:
    """Scan DATA/train, DATA/val and DATA/test when it exists, or a flat DATA/<class>/, and
    report problems, notes and per-class counts. A flat dataset is checked as one split named
    FLAT_SPLIT.

    Raises UserError when ``data_dir`` is not a dataset at all (see data.dataset_layout).
    """
    data_dir = Path(data_dir)
    if dataset_layout(data_dir) == "csv":
        return check_label_tables(data_dir)
    split_dirs = split_folders(data_dir)
    training_split = next(iter(split_dirs))  # train/, or the flat pool train splits itself
    findings = Findings()
    scan = scan_folders(data_dir, split_dirs, findings)
    findings.problems += class_structure(
        data_dir, split_dirs, training_split, scan.classes_by_split
    )
    class_counts, images = decode_candidates(data_dir, scan, findings, progress=progress)
    findings.problems += empty_classes(split_dirs, scan.candidates, class_counts)
    findings.problems += exact_duplicates(images)
    findings.problems += near_duplicates(images)
    train_counts = class_counts.get(training_split, {})
    weights = suggested_class_weights(train_counts)
    skew = imbalance(split_dirs[training_split], train_counts, weights)
    if skew is not None:
        findings.problems.append(skew)
    return CheckReport(
        data_dir=data_dir,
        problems=findings.problems,
        notes=findings.notes,
        ignored=findings.ignored,
        class_counts=class_counts,
        suggested_class_weights=weights,
        images_checked=len(scan.candidates),
        layout="flat" if FLAT_SPLIT in split_dirs else "split",
    )
