"""The dataset doctor behind ``tlvision check DATA``: find what would break or skew training.

Every candidate image (an extension in data.IMAGE_EXTENSIONS, not hidden) is read once and
decoded fully with images.decode_image_rgb; the same pass hashes its bytes (exact duplicates)
and computes a 64-bit dHash (near duplicates). Problems say what is wrong and how to fix it and
make the exit status 1; notes (mode conversions, EXIF rotation, stray non-image files) are
informational. Hidden and system files (.DS_Store, Thumbs.db, ._foo.jpg, __MACOSX) are ignored,
as training ignores them.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np
from PIL import Image

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

NEAR_DUPLICATE_MAX_DISTANCE = 4
"""Largest Hamming distance between 64-bit dHashes that counts as a near duplicate."""

NEAR_DUPLICATE_MIN_CONTRAST = 8
"""Images whose 9x8 grayscale thumbnail spans fewer grey levels are nearly flat: their dHash is
noise, so they are only compared exactly (otherwise every blank image matches every other)."""

IMBALANCE_RATIO = 3.0
"""Largest/smallest train class size at which class imbalance is reported."""

FLAT_SPLIT = "all"
"""The split name of a flat dataset's images: train holds out its val share from them itself."""

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
_TEXT_LINES_PER_KIND = 20


@dataclass(frozen=True)
class Problem:
    """One finding: ``path`` is the file or folder concerned, ``message`` says what to do."""

    kind: str
    path: str
    message: str


@dataclass(frozen=True)
class CheckReport:
    """What ``check_dataset`` found. ``exit_status`` is 0 when there are no problems, else 1."""

    data_dir: Path
    problems: list[Problem]
    notes: list[Problem]
    ignored: list[Path]
    class_counts: dict[str, dict[str, int]]
    """Per split, per class: the images that load (tiny ones included; broken ones not)."""
    suggested_class_weights: dict[str, float] | None
    """n_total / (n_classes * n_class) over train counts; None unless every class of at
    least two has a loadable train image."""
    images_checked: int = 0
    layout: str = "split"  # or "flat": one folder per class, checked as the split FLAT_SPLIT

    @property
    def exit_status(self) -> int:
        return 1 if self.problems else 0

    def problem_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for problem in self.problems:
            counts[problem.kind] = counts.get(problem.kind, 0) + 1
        return counts

    def to_json(self) -> dict[str, object]:
        return {
            "data_dir": str(self.data_dir),
            "layout": self.layout,
            "ok": not self.problems,
            "exit_status": self.exit_status,
            "images_checked": self.images_checked,
            "class_counts": self.class_counts,
            "suggested_class_weights": self.suggested_class_weights,
            "problem_counts": self.problem_counts(),
            "problems": [asdict(problem) for problem in self.problems],
            "notes": [asdict(note) for note in self.notes],
            "ignored": [str(path) for path in self.ignored],
        }

    def to_text(self) -> str:
        split_totals = ", ".join(
            f"{split} {sum(counts.values())}" for split, counts in self.class_counts.items()
        )
        lines = [
            f"Checked {self.images_checked} image files in {self.data_dir}"
            + (f" (loadable: {split_totals})" if split_totals else "")
        ]
        lines += _class_table(self.class_counts)
        if self.suggested_class_weights is not None:
            weights = ", ".join(f"{name}={w:g}" for name, w in self.suggested_class_weights.items())
            lines.append(f"Suggested class weights (--class-weights auto): {weights}")
        if self.problems:
            lines.append("")
            lines.append(f"Problems ({len(self.problems)}):")
            lines += _grouped(self.problems)
        if self.notes:
            lines.append("")
            lines.append(f"Notes ({len(self.notes)}, informational: nothing to fix):")
            lines += _grouped(self.notes)
        if self.ignored:
            shown = ", ".join(str(path) for path in self.ignored[:5])
            more = f" and {len(self.ignored) - 5} more" if len(self.ignored) > 5 else ""
            lines.append("")
            lines.append(
                f"Ignored {len(self.ignored)} hidden/system files and folders "
                f"(training skips them too): {shown}{more}"
            )
        lines.append("")
        if self.problems:
            kinds = ", ".join(f"{n} {kind}" for kind, n in self.problem_counts().items())
            lines.append(
                f"Result: {len(self.problems)} problems ({kinds}); fix them and run "
                "`tlvision check` again."
            )
        else:
            lines.append("Result: no problems found.")
        return "\n".join(lines)


@dataclass(frozen=True)
class _Image:
    split: str
    class_name: str
    path: Path
    sha256: str
    dhash: int | None


def check_dataset(data_dir: Path, *, progress: bool = True) -> CheckReport:
    """Scan DATA/train and DATA/val, or a flat DATA/<class>/, and report problems, notes and
    per-class counts. A flat dataset is checked as one split named FLAT_SPLIT.

    Raises UserError when ``data_dir`` is not a dataset at all (see data.dataset_layout).
    """
    data_dir = Path(data_dir)
    split_dirs = _split_dirs(data_dir)
    training_split = next(iter(split_dirs))  # train/, or the flat pool train splits itself
    problems: list[Problem] = []
    notes: list[Problem] = []
    ignored: list[Path] = []
    classes_by_split: dict[str, list[str]] = {}
    candidates: list[tuple[str, str, Path]] = []
    for split, split_dir in split_dirs.items():
        if not split_dir.is_dir():
            problems.append(_missing_split(data_dir, split))
            continue
        classes_by_split[split] = list_class_folders(split_dir)
        _scan_split_root(split_dir, problems, notes, ignored)
        for class_name in classes_by_split[split]:
            found = _scan_class_dir(split_dir / class_name, problems, notes, ignored)
            candidates.extend((split, class_name, path) for path in found)
    problems += _class_structure(data_dir, split_dirs, training_split, classes_by_split)

    class_counts = {split: dict.fromkeys(classes, 0) for split, classes in classes_by_split.items()}
    images: list[_Image] = []
    scan = progress_bar(
        candidates,
        desc=f"checking {data_dir}",
        unit="image",
        disable=None if progress else True,
        leave=False,
    )
    for split, class_name, path in scan:
        image = _check_image(split, class_name, path, problems, notes)
        if image is not None:
            class_counts[split][class_name] += 1
            images.append(image)

    problems += _empty_classes(split_dirs, candidates, class_counts)
    problems += _exact_duplicates(images)
    problems += _near_duplicates(images)
    weights = _suggested_class_weights(class_counts.get(training_split, {}))
    imbalance = _imbalance(
        split_dirs[training_split], class_counts.get(training_split, {}), weights
    )
    if imbalance is not None:
        problems.append(imbalance)
    return CheckReport(
        data_dir=data_dir,
        problems=problems,
        notes=notes,
        ignored=ignored,
        class_counts=class_counts,
        suggested_class_weights=weights,
        images_checked=len(candidates),
        layout="flat" if FLAT_SPLIT in split_dirs else "split",
    )


def _split_dirs(data_dir: Path) -> dict[str, Path]:
    """The folders to scan, by split name: train/ and val/, or the flat dataset itself."""
    if dataset_layout(data_dir) == "flat":
        return {FLAT_SPLIT: data_dir}
    return {split: data_dir / split for split in PHASES}


def _missing_split(data_dir: Path, split: str) -> Problem:
    return Problem(
        "missing-split",
        str(data_dir / split),
        f"no {split}/ folder: training needs a validation split; create "
        f"{data_dir / split}/<class>/ with some held-out images of each class, or pass "
        "--val-split 0.2 to hold out 20% of train",
    )


def _class_structure(
    data_dir: Path,
    split_dirs: dict[str, Path],
    training_split: str,
    classes_by_split: dict[str, list[str]],
) -> list[Problem]:
    """Splits without class folders, a single class, and class folders that differ by split."""
    problems = [
        Problem(
            "no-classes",
            str(split_dirs[split]),
            f"no class folders; put each class's images in {split_dirs[split]}/<class name>/",
        )
        for split, classes in classes_by_split.items()
        if not classes
    ]
    training_classes = classes_by_split.get(training_split, [])
    if len(training_classes) == 1:
        problems.append(
            Problem(
                "single-class",
                str(split_dirs[training_split]),
                f"only one class folder ({training_classes[0]}); a classifier needs at least two",
            )
        )
    if "train" in classes_by_split and "val" in classes_by_split:
        mismatch = _class_mismatch(data_dir, classes_by_split["train"], classes_by_split["val"])
        problems += [mismatch] if mismatch is not None else []
    return problems


def _is_system_name(name: str) -> bool:
    return name.startswith(".") or name.lower() in SYSTEM_FILE_NAMES or name in SYSTEM_DIR_NAMES


def _scan_split_root(
    split_dir: Path, problems: list[Problem], notes: list[Problem], ignored: list[Path]
) -> None:
    """Entries directly in train/ or val/ that are not class folders."""
    for entry in sorted(split_dir.iterdir()):
        if _is_system_name(entry.name):
            ignored.append(entry)
        elif entry.is_dir():
            continue  # a class folder
        elif is_image_file(entry):
            problems.append(
                Problem(
                    "loose-file",
                    str(entry),
                    f"image directly in {split_dir.name}/, outside any class folder, so training "
                    f"ignores it; move it into {split_dir}/<class name>/",
                )
            )
        else:
            notes.append(_non_image_note(entry))


def _scan_class_dir(
    class_dir: Path, problems: list[Problem], notes: list[Problem], ignored: list[Path]
) -> list[Path]:
    """The candidate images of a class, broken links included (data.image_files, as training
    finds them); sorts out the other files."""
    files, broken_links = image_files(class_dir)
    for path in sorted(p for p in class_dir.rglob("*") if p.is_file() and not is_image_file(p)):
        if any(_is_system_name(part) for part in path.relative_to(class_dir).parts):
            ignored.append(path)
        elif path.suffix.lower() in UNSUPPORTED_IMAGE_EXTENSIONS:
            problems.append(
                Problem(
                    "unsupported-format",
                    str(path),
                    f"{path.suffix} images are not loaded by training (supported: "
                    f"{', '.join(IMAGE_EXTENSIONS)}); convert it to JPEG or PNG",
                )
            )
        else:
            notes.append(_non_image_note(path))
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
    split: str, class_name: str, path: Path, problems: list[Problem], notes: list[Problem]
) -> _Image | None:
    """Decode one file; record its problems and notes; its hashes if it loads."""
    try:
        data = read_image_bytes(path)
        image, image_notes = decode_image_rgb(data, path)
    except BadImageError as error:
        fix = _BAD_IMAGE_FIXES.get(error.kind, _BAD_IMAGE_FIXES["corrupt"])
        problems.append(Problem(error.kind, str(path), f"{error.reason}; {fix}"))
        return None
    for note in image_notes:
        notes.append(Problem(_note_kind(note), str(path), note))
    width, height = image.size
    if min(width, height) < MIN_SIDE:
        problems.append(
            Problem(
                "tiny-image",
                str(path),
                f"{width}x{height} pixels, under {MIN_SIDE} px on a side: upscaled to the "
                "model's input it is mostly blur; replace it with a larger image or delete it",
            )
        )
    return _Image(split, class_name, path, hashlib.sha256(data).hexdigest(), _dhash(image))


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


def _class_mismatch(data_dir: Path, train: list[str], val: list[str]) -> Problem | None:
    only_train = sorted(set(train) - set(val))
    only_val = sorted(set(val) - set(train))
    if not only_train and not only_val:
        return None
    return Problem(
        "class-mismatch",
        str(data_dir),
        f"class folders differ between splits: only in train/: {only_train or 'none'}; "
        f"only in val/: {only_val or 'none'}; classes are matched by folder name, so give "
        "both splits the same class folders (rename the misspelt one, or add the missing one)",
    )


def _empty_classes(
    split_dirs: dict[str, Path],
    candidates: list[tuple[str, str, Path]],
    class_counts: dict[str, dict[str, int]],
) -> list[Problem]:
    """Class folders without image files, or whose image files all fail to load."""
    found = Counter((split, class_name) for split, class_name, _ in candidates)
    problems = [
        _empty_class(split_dirs[split] / name, found[(split, name)], loadable)
        for split, counts in class_counts.items()
        for name, loadable in counts.items()
    ]
    return [problem for problem in problems if problem is not None]


def _empty_class(class_dir: Path, candidates: int, loadable: int) -> Problem | None:
    if candidates == 0:
        return Problem(
            "empty-class",
            str(class_dir),
            f"class folder has no image files ({', '.join(IMAGE_EXTENSIONS)}); add images to "
            "it or remove the folder from both splits",
        )
    if loadable == 0:
        return Problem(
            "empty-class",
            str(class_dir),
            f"none of the class's {candidates} image files loads (see the problems above); "
            "replace them or remove the folder from both splits",
        )
    return None


def _describe_others(others: list[Path]) -> str:
    more = f" (and {len(others) - 1} more copies)" if len(others) > 1 else ""
    return f"{others[0]}{more}"


def _exact_duplicates(images: list[_Image]) -> list[Problem]:
    """Same bytes in train and val (leakage), and same bytes under two classes of a split."""
    by_content: dict[str, list[_Image]] = defaultdict(list)
    for image in images:
        by_content[image.sha256].append(image)
    problems: list[Problem] = []
    for group in by_content.values():
        if len(group) < 2:
            continue
        train = [image.path for image in group if image.split == "train"]
        for image in group:
            if image.split == "val" and train:
                problems.append(
                    Problem(
                        "duplicate-across-splits",
                        str(image.path),
                        f"same file content as {_describe_others(train)} in train/: val scores "
                        "are inflated by images the model trained on; delete the val copy",
                    )
                )
        for split in sorted({image.split for image in group}):
            in_split = [image for image in group if image.split == split]
            if len({image.class_name for image in in_split}) > 1:
                listed = ", ".join(f"{image.path} ({image.class_name})" for image in in_split)
                problems.append(
                    Problem(
                        "duplicate-across-classes",
                        str(in_split[0].path),
                        f"the same image is labelled as different classes in {split}/: "
                        f"{listed}; keep it only in the class it belongs to",
                    )
                )
    problems.sort(key=lambda problem: (problem.kind, problem.path))
    return problems


def _hash_blocks(max_distance: int) -> tuple[tuple[int, int], ...]:
    """max_distance + 1 bit ranges (shift, width) covering the 64-bit hash: by pigeonhole, two
    hashes within max_distance of each other agree exactly on at least one of them."""
    count = max_distance + 1
    bounds = [round(64 * i / count) for i in range(count + 1)]
    return tuple((low, high - low) for low, high in pairwise(bounds))


_HASH_BLOCKS = _hash_blocks(NEAR_DUPLICATE_MAX_DISTANCE)


def _near_duplicates(images: list[_Image]) -> list[Problem]:
    """Val images within NEAR_DUPLICATE_MAX_DISTANCE of a train image (exact copies excluded)."""
    assert len(_HASH_BLOCKS) > NEAR_DUPLICATE_MAX_DISTANCE
    train = [
        (image.dhash, image.path)
        for image in images
        if image.split == "train" and image.dhash is not None
    ]
    train_contents = {image.sha256 for image in images if image.split == "train"}
    index: dict[tuple[int, int], list[int]] = defaultdict(list)
    for position, (train_hash, _) in enumerate(train):
        for block, (shift, width) in enumerate(_HASH_BLOCKS):
            index[(block, (train_hash >> shift) & ((1 << width) - 1))].append(position)
    problems: list[Problem] = []
    for image in images:
        if image.split != "val" or image.dhash is None or image.sha256 in train_contents:
            continue
        val_hash = image.dhash
        candidates: set[int] = set()
        for block, (shift, width) in enumerate(_HASH_BLOCKS):
            candidates.update(index.get((block, (val_hash >> shift) & ((1 << width) - 1)), []))
        matches = sorted(
            ((val_hash ^ train[p][0]).bit_count(), str(train[p][1])) for p in candidates
        )
        matches = [match for match in matches if match[0] <= NEAR_DUPLICATE_MAX_DISTANCE]
        if not matches:
            continue
        distance, nearest = matches[0]
        more = f" (and {len(matches) - 1} more)" if len(matches) > 1 else ""
        problems.append(
            Problem(
                "near-duplicate-across-splits",
                str(image.path),
                f"nearly the same picture as {nearest} in train/{more} (dHash distance "
                f"{distance} of 64): val scores are inflated by images the model trained on; "
                "delete the val copy if it is the same shot",
            )
        )
    return problems


def _suggested_class_weights(train_counts: dict[str, int]) -> dict[str, float] | None:
    if len(train_counts) < 2 or min(train_counts.values()) == 0:
        return None
    total = sum(train_counts.values())
    return {
        name: round(total / (len(train_counts) * count), 3) for name, count in train_counts.items()
    }


def _imbalance(
    train_dir: Path, train_counts: dict[str, int], weights: dict[str, float] | None
) -> Problem | None:
    if weights is None:
        return None
    largest = max(train_counts, key=lambda name: train_counts[name])
    smallest = min(train_counts, key=lambda name: train_counts[name])
    ratio = train_counts[largest] / train_counts[smallest]
    if ratio < IMBALANCE_RATIO:
        return None
    listed = ", ".join(f"{name}={weight:g}" for name, weight in weights.items())
    return Problem(
        "class-imbalance",
        str(train_dir),
        f"train classes are imbalanced: {largest} has {train_counts[largest]} images, "
        f"{smallest} has {train_counts[smallest]} ({ratio:.1f}x); pass --class-weights auto "
        f"to weight the loss (suggested weights: {listed}), or add images to the small classes",
    )


def _class_table(class_counts: dict[str, dict[str, int]]) -> list[str]:
    names = sorted({name for counts in class_counts.values() for name in counts})
    if not names:
        return []
    splits = list(class_counts)
    width = max(len("class"), *(len(name) for name in names))
    lines = ["", "  " + "class".ljust(width) + "".join(f"  {split:>7}" for split in splits)]
    for name in names:
        cells = "".join(f"  {class_counts[split].get(name, '-')!s:>7}" for split in splits)
        lines.append("  " + name.ljust(width) + cells)
    return lines


def _grouped(findings: list[Problem]) -> list[str]:
    by_kind: dict[str, list[Problem]] = {}
    for finding in findings:
        by_kind.setdefault(finding.kind, []).append(finding)
    lines: list[str] = []
    for kind, group in by_kind.items():
        lines.append(f"  {kind} ({len(group)}):")
        for finding in group[:_TEXT_LINES_PER_KIND]:
            lines.append(f"    {finding.path}: {finding.message}")
        if len(group) > _TEXT_LINES_PER_KIND:
            lines.append(
                f"    ... and {len(group) - _TEXT_LINES_PER_KIND} more (--json lists them all)"
            )
    return lines
