"""Duplicates and leakage for ``tlvision check``: the same file (SHA-256 of its bytes) or nearly
the same picture (64-bit dHash) in a held-out split and a split it must not overlap, and the
same file labelled as two classes of one split."""

from __future__ import annotations

from collections import defaultdict
from itertools import pairwise

from tlvision.data.doctor_report import Problem
from tlvision.data.doctor_scan import TEST_SPLIT, ScannedImage

NEAR_DUPLICATE_MAX_DISTANCE = 4
"""Largest Hamming distance between 64-bit dHashes that counts as a near duplicate."""

LEAKAGE_PAIRS = (("val", "train"), (TEST_SPLIT, "train"), (TEST_SPLIT, "val"))
"""(held-out split, split it must not share images with): val is scored on images the model
did not train on, test on images that neither trained it nor chose it (val picks the epoch)."""


def _inflated(held_out: str, seen: str) -> str:
    """Why a copy in ``held_out`` of an image in ``seen`` matters."""
    scores = "val scores are" if held_out == "val" else f"the {held_out} score is"
    if seen == "train":
        return f"{scores} inflated by images the model trained on"
    return (
        f"{scores} inflated by images the model was selected on ({seen} picks the epoch whose "
        "weights are saved)"
    )


def _describe_others(others: list[ScannedImage]) -> str:
    more = f" (and {len(others) - 1} more copies)" if len(others) > 1 else ""
    return f"{others[0].path}{more}"


def exact_duplicates(images: list[ScannedImage]) -> list[Problem]:
    """Same bytes in a held-out split and a split it must not overlap (leakage: see
    LEAKAGE_PAIRS), and same bytes under two classes of a split."""
    by_content: dict[str, list[ScannedImage]] = defaultdict(list)
    for image in images:
        by_content[image.sha256].append(image)
    problems: list[Problem] = []
    for group in by_content.values():
        if len(group) > 1:
            problems += _exact_leaks(group) + _class_conflicts(group)
    problems.sort(key=lambda problem: (problem.kind, problem.path))
    return problems


def _exact_leaks(group: list[ScannedImage]) -> list[Problem]:
    """One problem per held-out copy and split it leaks from, naming the first such copy."""
    problems: list[Problem] = []
    for held_out, seen in LEAKAGE_PAIRS:
        seen_copies = [image for image in group if image.split == seen]
        if not seen_copies:
            continue
        problems += [
            Problem(
                "duplicate-across-splits",
                str(image.path),
                f"same file content as {_describe_others(seen_copies)} in {seen}/: "
                f"{_inflated(held_out, seen)}; delete the {held_out} copy",
            )
            for image in group
            if image.split == held_out
        ]
    return problems


def _class_conflicts(group: list[ScannedImage]) -> list[Problem]:
    """The same bytes under two or more classes of one split: a label conflict."""
    problems: list[Problem] = []
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
    return problems


def _hash_blocks(max_distance: int) -> tuple[tuple[int, int], ...]:
    """max_distance + 1 bit ranges (shift, width) covering the 64-bit hash: by pigeonhole, two
    hashes within max_distance of each other agree exactly on at least one of them."""
    count = max_distance + 1
    bounds = [round(64 * i / count) for i in range(count + 1)]
    return tuple((low, high - low) for low, high in pairwise(bounds))


_HASH_BLOCKS = _hash_blocks(NEAR_DUPLICATE_MAX_DISTANCE)


def _block_keys(dhash: int) -> list[tuple[int, int]]:
    return [
        (block, (dhash >> shift) & ((1 << width) - 1))
        for block, (shift, width) in enumerate(_HASH_BLOCKS)
    ]


class _HashIndex:
    """The dHashes of one split's images, looked up by any of their blocks (_hash_blocks)."""

    def __init__(self, images: list[ScannedImage], split: str) -> None:
        self.hashed = [
            (image.dhash, image.path)
            for image in images
            if image.split == split and image.dhash is not None
        ]
        self.contents = {image.sha256 for image in images if image.split == split}
        self.blocks: dict[tuple[int, int], list[int]] = defaultdict(list)
        for position, (dhash, _) in enumerate(self.hashed):
            for key in _block_keys(dhash):
                self.blocks[key].append(position)

    def matches(self, dhash: int) -> list[tuple[int, str]]:
        """(distance, path) of the images within NEAR_DUPLICATE_MAX_DISTANCE, nearest first."""
        candidates: set[int] = set()
        for key in _block_keys(dhash):
            candidates.update(self.blocks.get(key, []))
        found = sorted(
            ((dhash ^ self.hashed[p][0]).bit_count(), str(self.hashed[p][1])) for p in candidates
        )
        return [match for match in found if match[0] <= NEAR_DUPLICATE_MAX_DISTANCE]


def near_duplicates(images: list[ScannedImage]) -> list[Problem]:
    """Held-out images within NEAR_DUPLICATE_MAX_DISTANCE of an image of a split they must not
    overlap (LEAKAGE_PAIRS); exact copies of that split's files are left to exact_duplicates."""
    assert len(_HASH_BLOCKS) > NEAR_DUPLICATE_MAX_DISTANCE
    indexes: dict[str, _HashIndex] = {}
    problems: list[Problem] = []
    for held_out, seen in LEAKAGE_PAIRS:
        index = indexes.setdefault(seen, _HashIndex(images, seen))
        for image in images:
            if image.split != held_out or image.dhash is None or image.sha256 in index.contents:
                continue
            matches = index.matches(image.dhash)
            if matches:
                problems.append(_near_duplicate(image, held_out, seen, matches))
    return problems


def _near_duplicate(
    image: ScannedImage, held_out: str, seen: str, matches: list[tuple[int, str]]
) -> Problem:
    distance, nearest = matches[0]
    more = f" (and {len(matches) - 1} more)" if len(matches) > 1 else ""
    return Problem(
        "near-duplicate-across-splits",
        str(image.path),
        f"nearly the same picture as {nearest} in {seen}/{more} (dHash distance "
        f"{distance} of 64): {_inflated(held_out, seen)}; delete the {held_out} copy if it is "
        "the same shot",
    )
