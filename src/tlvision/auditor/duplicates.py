"""Duplicates and leakage: the same bytes, and near copies whose codes' cosine similarity passes
a threshold calibrated on known transforms (tlvision.auditor.transforms), grouped. The search
goes block by block of rows against all, so memory stays at `BLOCK_ELEMENTS` similarities
whatever the number of images (100,000 images: 100,000 x 160 per block, about 64 MB)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BLOCK_ELEMENTS = 1 << 24
SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}


def unit_rows(codes: np.ndarray) -> np.ndarray:
    rows = np.asarray(codes, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.maximum(norms, 1e-12)


@dataclass(frozen=True)
class Calibration:
    """The threshold and what set it: the similarity of each known-transform copy to its
    original (`copies`, by transform), and of sampled images to their nearest other image."""

    threshold: float
    copies: dict[str, list[float]]
    nearest_others: list[float]

    def to_json(self) -> dict[str, object]:
        return {
            "threshold": self.threshold,
            "copies_min": {name: min(values) for name, values in self.copies.items() if values},
            "copies_median": {
                name: float(np.median(values)) for name, values in self.copies.items() if values
            },
            "nearest_others_median": float(np.median(self.nearest_others))
            if self.nearest_others
            else None,
        }


def calibrate(
    unit: np.ndarray,
    digests: Sequence[str],
    calibration: Sequence[tuple[int, str]],
    copy_codes: np.ndarray | None,
    fallback: float = 0.95,
) -> Calibration:
    """Threshold: the 5th percentile of the copies' similarities to their originals (95% of
    such copies pass), raised halfway to the upper quartile of the originals' similarity to
    their nearest other image when that is higher (a set whose distinct images are nearly
    alike); a quartile, not the top, since a sampled image may itself have a copy in the
    dataset. `fallback` when there are no copies (a tiny dataset)."""
    if copy_codes is None or not len(calibration):
        return Calibration(fallback, {}, [])
    copies_unit = unit_rows(copy_codes)
    copies: dict[str, list[float]] = defaultdict(list)
    for (row, name), code in zip(calibration, copies_unit, strict=True):
        copies[name].append(float(unit[row] @ code))
    originals = sorted({row for row, _name in calibration})
    nearest = []
    for row in originals:
        similarity = unit @ unit[row]
        same = np.asarray([digest == digests[row] for digest in digests])
        similarity[same] = -1.0  # itself and exact copies
        nearest.append(float(similarity.max()))
    positives = np.asarray([value for values in copies.values() for value in values])
    low_copy = float(np.quantile(positives, 0.05))
    high_other = float(np.quantile(nearest, 0.75)) if nearest else -1.0
    threshold = low_copy if high_other < low_copy else (low_copy + high_other) / 2
    return Calibration(min(threshold, 0.999), dict(copies), nearest)


def similar_pairs(unit: np.ndarray, threshold: float) -> list[tuple[int, int, float]]:
    """(i, j, similarity) with i < j and similarity >= threshold, block by block."""
    count = len(unit)
    block = max(1, BLOCK_ELEMENTS // max(1, count))
    pairs: list[tuple[int, int, float]] = []
    for start in range(0, count, block):
        similarity = unit[start : start + block] @ unit.T
        rows, columns = np.nonzero(similarity >= threshold)
        for row, column in zip(rows.tolist(), columns.tolist(), strict=True):
            if start + row < column:
                pairs.append((start + row, column, float(similarity[row, column])))
    return pairs


MAX_GROUP = 8
"""Near copies join a group only while it stays this small: linking every pair above the
threshold chains a set of look-alike images (Fashion-MNIST at 224 px) into one group of
thousands. Exact copies always join."""


def _groups(
    count: int, exact: Sequence[tuple[int, int]], near: Sequence[tuple[int, int, float]]
) -> list[list[int]]:
    """Groups: exact copies first, then near pairs most alike first, each merge kept only
    while the merged group has at most MAX_GROUP images."""
    parent = list(range(count))
    size = [1] * count

    def root(item: int) -> int:
        while parent[item] != item:
            parent[item] = parent[parent[item]]
            item = parent[item]
        return item

    def join(a: int, b: int, limit: int | None) -> None:
        ra, rb = root(a), root(b)
        if ra != rb and (limit is None or size[ra] + size[rb] <= limit):
            parent[ra] = rb
            size[rb] += size[ra]

    for a, b in exact:
        join(a, b, None)
    for a, b, _similarity in sorted(near, key=lambda pair: -pair[2]):
        join(a, b, MAX_GROUP)
    members: dict[int, list[int]] = defaultdict(list)
    for item in range(count):
        members[root(item)].append(item)
    return [sorted(group) for group in members.values() if len(group) > 1]


@dataclass(frozen=True)
class DuplicateGroup:
    rows: tuple[int, ...]
    similarity: float  # the lowest similarity that joins the group (1.0: same bytes)
    exact: bool

    def spans_splits(self, splits: Sequence[str]) -> bool:
        return len({splits[row] for row in self.rows}) > 1


def duplicate_groups(
    unit: np.ndarray, digests: Sequence[str], threshold: float, splits: Sequence[str]
) -> list[DuplicateGroup]:
    """Groups of images with the same bytes or codes at least `threshold` alike; groups that
    span splits first (they inflate val or test accuracy), then by similarity."""
    by_digest: dict[str, list[int]] = defaultdict(list)
    for row, digest in enumerate(digests):
        by_digest[digest].append(row)
    exact_edges = [(rows[0], other) for rows in by_digest.values() for other in rows[1:]]
    pairs = similar_pairs(unit, threshold)
    weakest: dict[int, float] = {}
    groups = _groups(len(unit), exact_edges, pairs)
    group_of = {row: number for number, group in enumerate(groups) for row in group}
    for a, b, similarity in pairs:
        number = group_of.get(a)
        if number is not None and group_of.get(b) == number:
            weakest[number] = min(weakest.get(number, 1.0), similarity)
    result = [
        DuplicateGroup(
            rows=tuple(sorted(group, key=lambda row: (SPLIT_ORDER.get(splits[row], 3), row))),
            similarity=min(1.0, weakest.get(number, 1.0)),
            exact=len({digests[row] for row in group}) == 1,
        )
        for number, group in enumerate(groups)
    ]
    result.sort(key=lambda group: (not group.spans_splits(splits), -group.similarity))
    return result
