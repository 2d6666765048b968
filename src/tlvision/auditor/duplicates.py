"""Duplicates and leakage: the same bytes, and near copies whose codes' cosine similarity passes
a threshold calibrated on known transforms (tlvision.auditor.transforms), grouped. The search
goes block by block of rows against all, so memory stays at `BLOCK_ELEMENTS` similarities
whatever the number of images (100,000 images: 100,000 x 160 per block, about 64 MB), and each
image keeps at most its `nearest_limit` most similar images above the threshold, so the pairs
stay within `PAIR_BUDGET` too (look-alike images can put most pairs above it: n^2 / 2 pairs)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BLOCK_ELEMENTS = 1 << 24
PAIR_BUDGET = 1 << 22
"""Near pairs kept at most (about 4 million, 80 MB as arrays): each image keeps its
`nearest_limit` most similar images above the threshold, PAIR_BUDGET / N and at least
MIN_NEAREST. Under a few thousand images that is every pair (the search is exact)."""
MIN_NEAREST = 32
CUT_ROWS = 16  # rows ranked at once when their neighbours are cut
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
    digest_array = np.asarray(digests)
    nearest = []
    for row in originals:
        similarity = unit @ unit[row]
        similarity[digest_array == digests[row]] = -1.0  # itself and exact copies
        nearest.append(float(similarity.max()))
    positives = np.asarray([value for values in copies.values() for value in values])
    low_copy = float(np.quantile(positives, 0.05))
    high_other = float(np.quantile(nearest, 0.75)) if nearest else -1.0
    threshold = low_copy if high_other < low_copy else (low_copy + high_other) / 2
    return Calibration(min(threshold, 0.999), dict(copies), nearest)


@dataclass(frozen=True)
class Pairs:
    """Near pairs: rows `first[i] < second[i]` at cosine similarity `similarity[i]`, ordered by
    (first, second)."""

    first: np.ndarray
    second: np.ndarray
    similarity: np.ndarray

    def __len__(self) -> int:
        return len(self.first)

    def as_tuples(self) -> list[tuple[int, int, float]]:
        values = (self.first.tolist(), self.second.tolist(), self.similarity.tolist())
        return list(zip(*values, strict=True))


def nearest_limit(count: int) -> int:
    """How many near images above the threshold each of `count` images keeps at most."""
    return max(MIN_NEAREST, PAIR_BUDGET // max(1, count))


def similar_pairs(unit: np.ndarray, threshold: float, nearest: int | None = None) -> Pairs:
    """Pairs at similarity >= threshold, block by block of rows against all (memory: one block
    of BLOCK_ELEMENTS similarities). An image with more than `nearest` (default
    `nearest_limit`) such neighbours keeps its `nearest` most similar; a pair is kept when
    either image keeps it. With no image over the limit this is every pair (the plain search).
    A pair's similarity is the one computed in the row of its first image."""
    count = len(unit)
    limit = max(1, nearest_limit(count) if nearest is None else nearest)
    block = max(1, BLOCK_ELEMENTS // max(1, count))
    crowded = np.zeros(count, dtype=bool)  # rows whose neighbours were cut to `limit`
    upper: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    lower: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for start in range(0, count, block):
        similarity = unit[start : start + block] @ unit.T
        near = _kept_neighbours(similarity, start, threshold, limit, crowded)
        rows, columns = np.nonzero(near)
        here = rows + start
        values = similarity[rows, columns]
        above = here < columns
        upper.append((here[above], columns[above], values[above]))
        # a pair below the diagonal counts only when the other image's own list was cut
        below = ~above & crowded[columns]
        lower.append((columns[below], here[below], values[below]))
    return _unique_pairs(upper + lower, count)


def _kept_neighbours(
    similarity: np.ndarray, start: int, threshold: float, limit: int, crowded: np.ndarray
) -> np.ndarray:
    """(block, N) mask of each row's neighbours at >= threshold, itself left out, at most
    `limit` a row (the most similar); marks the cut rows in `crowded`."""
    rows = np.arange(len(similarity))
    near = similarity >= threshold
    near[rows, rows + start] = False
    cut = np.flatnonzero(near.sum(axis=1) > limit)
    crowded[cut + start] = True
    for chunk in np.array_split(cut, -(-len(cut) // CUT_ROWS)) if len(cut) else []:
        ranked = -similarity[chunk]  # a few rows at a time: argpartition's indices are int64
        ranked[np.arange(len(chunk)), chunk + start] = np.inf
        top = np.argpartition(ranked, limit - 1, axis=1)[:, :limit]
        near[chunk] = False
        near[chunk[:, None], top] = True
    return near


def _unique_pairs(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]], count: int) -> Pairs:
    """The pairs once each (the first listed wins), ordered by (first, second)."""
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return Pairs(empty, empty, np.zeros(0, dtype=np.float32))
    first = np.concatenate([part[0] for part in parts]).astype(np.int64)
    second = np.concatenate([part[1] for part in parts]).astype(np.int64)
    values = np.concatenate([part[2] for part in parts])
    _keys, index = np.unique(first * count + second, return_index=True)
    return Pairs(first[index], second[index], values[index])


MAX_GROUP = 8
"""Near copies join a group only while it stays this small: linking every pair above the
threshold chains a set of look-alike images (Fashion-MNIST at 224 px) into one group of
thousands. Exact copies always join."""


def _groups(count: int, exact: Sequence[tuple[int, int]], near: Pairs) -> list[list[int]]:
    """Groups: exact copies first, then near pairs most alike first (ties in pair order), each
    merge kept only while the merged group has at most MAX_GROUP images."""
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
    order = np.argsort(-near.similarity, kind="stable")
    for a, b in zip(near.first[order].tolist(), near.second[order].tolist(), strict=True):
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
    groups = _groups(len(unit), exact_edges, pairs)
    group_of = np.full(len(unit), -1, dtype=np.int64)
    for number, group in enumerate(groups):
        group_of[group] = number
    inside = (group_of[pairs.first] >= 0) & (group_of[pairs.first] == group_of[pairs.second])
    weakest = np.ones(len(groups), dtype=np.float64)
    np.minimum.at(weakest, group_of[pairs.first[inside]], pairs.similarity[inside])
    result = [
        DuplicateGroup(
            rows=tuple(sorted(group, key=lambda row: (SPLIT_ORDER.get(splits[row], 3), row))),
            similarity=min(1.0, float(weakest[number])),
            exact=len({digests[row] for row in group}) == 1,
        )
        for number, group in enumerate(groups)
    ]
    result.sort(key=lambda group: (not group.spans_splits(splits), -group.similarity))
    return result
