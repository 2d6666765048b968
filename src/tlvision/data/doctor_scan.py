"""Scanning and decoding for ``tlvision check``: which folders and files a dataset has, and
what each candidate image is when decoded (its problems, notes and hashes).

Every candidate image (an extension in IMAGE_EXTENSIONS, not hidden) is read once and decoded
fully with images.decode_image_rgb; the same pass hashes its bytes (exact duplicates) and
computes a 64-bit dHash (near duplicates).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from tlvision.data.doctor_report import Findings, Problem
from tlvision.data.images import BadImageError, decode_image_rgb, read_image_bytes
from tlvision.data.layouts import (
    IMAGE_EXTENSIONS,
    PHASES,
    dataset_layout,
    image_files,
    is_image_file,
    list_class_folders,
)
from tlvision.progress import progress_bar

MIN_SIDE = 32
"""Images with a side shorter than this (in pixels, after EXIF rotation) are reported."""

NEAR_DUPLICATE_MIN_CONTRAST = 8
"""Images whose 9x8 grayscale thumbnail spans fewer grey levels are nearly flat: their dHash is
noise, so they are only compared exactly (otherwise every blank image matches every other)."""

FLAT_SPLIT = "all"
"""The split name of a flat dataset's images: train holds out its val share from them itself."""

TEST_SPLIT = "test"
"""The optional held-out split of a split dataset, scored once at the end of training."""

SYSTEM_FILE_NAMES = frozenset({"thumbs.db", "ehthumbs.db", "desktop.ini", "icon\r"})
SYSTEM_DIR_NAMES = frozenset({"__MACOSX"})

UNSUPPORTED_IMAGE_EXTENSIONS = frozenset({
    ".heic", ".heif", ".avif", ".jxl", ".jfif", ".jpe", ".jp2", ".j2k", ".svg", ".ico",
    ".psd", ".pgm", ".pbm", ".pnm", ".dng", ".cr2", ".nef", ".arw", ".raw",
})  # fmt: skip
"""Image formats people keep in datasets that training does not load (not in IMAGE_EXTENSIONS)."""

_BAD_IMAGE_FIXES = {
    "zero-byte": "an interrupted copy or download? re-copy the file or delete it",
    "truncated": "an interrupted copy or download? re-copy or re-export the file, or delete it",
    "not-an-image": "delete it, or replace it with the image it was meant to be",
    "decompression-bomb": "downscale it (a few thousand pixels a side is plenty) or delete it",
    "too-elongated": "crop it to a less extreme shape (64:1 at most) or delete it",
    "corrupt": "re-export the file from its source, or delete it",
    "unreadable": "fix the file's permissions, or delete it",
    "broken-link": "restore the file it points to, or delete the link",
}

Candidate = tuple[str, str, Path]
"""(split, class name, path) of one file that training (or test scoring) would try to load."""


@dataclass(frozen=True)
class ScannedImage:
    """An image that loads: where it is, the SHA-256 of its bytes and its dHash (None if flat)."""

    split: str
    class_name: str
    path: Path
    sha256: str
    dhash: int | None


@dataclass(frozen=True)
class Scan:
    """The folder pass: class folders by split and the candidate image files in them."""

    classes_by_split: dict[str, list[str]]
    candidates: list[Candidate]


def split_folders(data_dir: Path) -> dict[str, Path]:
    """The folders to scan, by split name: train/ and val/ (and test/ when it is a folder), or
    the flat dataset itself. The first is the split training learns from."""
    if dataset_layout(data_dir) == "flat":
        return {FLAT_SPLIT: data_dir}
    splits = {split: data_dir / split for split in PHASES}
    if (data_dir / TEST_SPLIT).is_dir():
        splits[TEST_SPLIT] = data_dir / TEST_SPLIT
    return splits


def scan_folders(data_dir: Path, split_dirs: dict[str, Path], findings: Findings) -> Scan:
    """Every split's class folders and candidate files; stray, unsupported and system files
    are sorted out on the way, and a missing train/ or val/ is a problem."""
    classes_by_split: dict[str, list[str]] = {}
    candidates: list[Candidate] = []
    for split, split_dir in split_dirs.items():
        if not split_dir.is_dir():
            findings.problems.append(_missing_split(data_dir, split))
            continue
        classes_by_split[split] = list_class_folders(split_dir)
        _scan_split_root(split, split_dir, findings)
        for class_name in classes_by_split[split]:
            found = _scan_class_dir(split_dir / class_name, findings)
            candidates.extend((split, class_name, path) for path in found)
    return Scan(classes_by_split, candidates)


def decode_candidates(
    data_dir: Path, scan: Scan, findings: Findings, *, progress: bool
) -> tuple[dict[str, dict[str, int]], list[ScannedImage]]:
    """Decode every candidate once: the loadable images per split and class, and their hashes."""
    class_counts = {
        split: dict.fromkeys(names, 0) for split, names in scan.classes_by_split.items()
    }
    images: list[ScannedImage] = []
    bar = progress_bar(
        scan.candidates,
        desc=f"checking {data_dir}",
        unit="image",
        disable=None if progress else True,
        leave=False,
    )
    for split, class_name, path in bar:
        image = _check_image(split, class_name, path, findings)
        if image is not None:
            class_counts[split][class_name] += 1
            images.append(image)
    return class_counts, images


def _missing_split(data_dir: Path, split: str) -> Problem:
    return Problem(
        "missing-split",
        str(data_dir / split),
        f"no {split}/ folder: training needs a validation split; create "
        f"{data_dir / split}/<class>/ with some held-out images of each class, or pass "
        "--val-split 0.2 to hold out 20% of train",
    )


def _is_system_name(name: str) -> bool:
    return name.startswith(".") or name.lower() in SYSTEM_FILE_NAMES or name in SYSTEM_DIR_NAMES


def _scan_split_root(split: str, split_dir: Path, findings: Findings) -> None:
    """Entries directly in train/, val/ or test/ that are not class folders."""
    reader = "the test score" if split == TEST_SPLIT else "training"
    for entry in sorted(split_dir.iterdir()):
        if _is_system_name(entry.name):
            findings.ignored.append(entry)
        elif entry.is_dir():
            continue  # a class folder
        elif is_image_file(entry):
            findings.problems.append(
                Problem(
                    "loose-file",
                    str(entry),
                    f"image directly in {split_dir.name}/, outside any class folder, so {reader} "
                    f"ignores it; move it into {split_dir}/<class name>/",
                )
            )
        else:
            findings.notes.append(_non_image_note(entry))


def _scan_class_dir(class_dir: Path, findings: Findings) -> list[Path]:
    """The candidate images of a class, broken links included (data.image_files, as training
    finds them); sorts out the other files."""
    files, broken_links = image_files(class_dir)
    for path in sorted(p for p in class_dir.rglob("*") if p.is_file() and not is_image_file(p)):
        if any(_is_system_name(part) for part in path.relative_to(class_dir).parts):
            findings.ignored.append(path)
        elif path.suffix.lower() in UNSUPPORTED_IMAGE_EXTENSIONS:
            findings.problems.append(
                Problem(
                    "unsupported-format",
                    str(path),
                    f"{path.suffix} images are not loaded by training (supported: "
                    f"{', '.join(IMAGE_EXTENSIONS)}); convert it to JPEG or PNG",
                )
            )
        else:
            findings.notes.append(_non_image_note(path))
    return sorted(files + broken_links)


def _non_image_note(path: Path) -> Problem:
    suffix = path.suffix or "no extension"
    return Problem(
        "non-image-file",
        str(path),
        f"not an image file ({suffix}); training ignores it, move it out of the dataset if "
        "it is clutter",
    )


def _check_image(
    split: str, class_name: str, path: Path, findings: Findings
) -> ScannedImage | None:
    """Decode one file; record its problems and notes; its hashes if it loads."""
    try:
        data = read_image_bytes(path)
        image, image_notes = decode_image_rgb(data, path)
    except BadImageError as error:
        fix = _BAD_IMAGE_FIXES.get(error.kind, _BAD_IMAGE_FIXES["corrupt"])
        findings.problems.append(Problem(error.kind, str(path), f"{error.reason}; {fix}"))
        return None
    for note in image_notes:
        findings.notes.append(Problem(_note_kind(note), str(path), note))
    width, height = image.size
    if min(width, height) < MIN_SIDE:
        findings.problems.append(
            Problem(
                "tiny-image",
                str(path),
                f"{width}x{height} pixels, under {MIN_SIDE} px on a side: upscaled to the "
                "model's input it is mostly blur; replace it with a larger image or delete it",
            )
        )
    return ScannedImage(split, class_name, path, hashlib.sha256(data).hexdigest(), _dhash(image))


def _note_kind(note: str) -> str:
    if note.startswith("EXIF orientation"):
        return "exif-orientation"
    if note.startswith("EXIF data unreadable"):
        return "exif-unreadable"
    if note.startswith("decoder warning"):
        return "decoder-warning"
    return "converted"


def _dhash(image: Image.Image) -> int | None:
    """64-bit difference hash: is each pixel of a 9x8 grayscale thumbnail brighter than its
    left neighbour. None for nearly flat images, whose hash would be noise."""
    thumbnail = image.convert("L").resize((9, 8), Image.Resampling.BOX)
    pixels = np.asarray(thumbnail, dtype=np.int16)
    if int(pixels.max()) - int(pixels.min()) < NEAR_DUPLICATE_MIN_CONTRAST:
        return None
    bits = (pixels[:, 1:] > pixels[:, :-1]).flatten()
    return int("".join("1" if bit else "0" for bit in bits), 2)
