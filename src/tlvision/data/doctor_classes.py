"""Class folders and class sizes for ``tlvision check``: missing, single, mismatched and empty
classes, the suggested class weights and the class-imbalance check (on train only)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from tlvision.data.doctor_report import IMBALANCE_RATIO, Problem
from tlvision.data.doctor_scan import TEST_SPLIT, Candidate
from tlvision.data.layouts import IMAGE_EXTENSIONS


def class_structure(
    data_dir: Path,
    split_dirs: dict[str, Path],
    training_split: str,
    classes_by_split: dict[str, list[str]],
) -> list[Problem]:
    """Splits without class folders, a single class, and val/ or test/ class folders that
    differ from train's."""
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
    if "train" not in classes_by_split:
        return problems
    # An empty test/ is reported as no-classes alone; val/ is compared with train/ regardless.
    for split, where in (("val", data_dir), (TEST_SPLIT, data_dir / TEST_SPLIT)):
        if classes_by_split.get(split) or (split == "val" and split in classes_by_split):
            mismatch = _class_mismatch(where, classes_by_split["train"], split, classes_by_split)
            problems += [mismatch] if mismatch is not None else []
    return problems


def _class_mismatch(
    where: Path, train: list[str], split: str, classes_by_split: dict[str, list[str]]
) -> Problem | None:
    """train/'s class folders against ``split``'s, both sides named."""
    other = classes_by_split[split]
    only_train = sorted(set(train) - set(other))
    only_other = sorted(set(other) - set(train))
    if not only_train and not only_other:
        return None
    unknown = (
        " (the test score stops at a class the model was not trained on)"
        if split == TEST_SPLIT and only_other
        else ""
    )
    return Problem(
        "class-mismatch",
        str(where),
        f"class folders differ between splits: only in train/: {only_train or 'none'}; "
        f"only in {split}/: {only_other or 'none'}{unknown}; classes are matched by folder "
        f"name, so give train/ and {split}/ the same class folders (rename the misspelt one, or "
        "add the missing one)",
    )


def empty_classes(
    split_dirs: dict[str, Path],
    candidates: list[Candidate],
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
            "it or remove the folder from every split",
        )
    if loadable == 0:
        return Problem(
            "empty-class",
            str(class_dir),
            f"none of the class's {candidates} image files loads (see the problems above); "
            "replace them or remove the folder from every split",
        )
    return None


def suggested_class_weights(train_counts: dict[str, int]) -> dict[str, float] | None:
    """scikit-learn's "balanced" class weights over the loadable train images, rounded to 3
    places; None with fewer than two classes or an empty one."""
    if len(train_counts) < 2 or min(train_counts.values()) == 0:
        return None
    from sklearn.utils.class_weight import compute_class_weight

    names = list(train_counts)
    labels = np.repeat(np.arange(len(names)), [train_counts[name] for name in names])
    weights = compute_class_weight("balanced", classes=np.arange(len(names)), y=labels)
    return {name: round(float(weight), 3) for name, weight in zip(names, weights, strict=True)}


def imbalance(
    train_dir: Path, train_counts: dict[str, int], weights: dict[str, float] | None
) -> Problem | None:
    """A problem when the largest train class is IMBALANCE_RATIO times the smallest or more."""
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
