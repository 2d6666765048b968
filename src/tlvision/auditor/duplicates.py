"""Duplicates and leakage: the same bytes, and near copies whose codes' cosine similarity passes
a threshold calibrated on known transforms (tlvision.auditor.transforms), grouped. The search
goes block by block of rows against all, so memory stays at `BLOCK_ELEMENTS` similarities
whatever the number of images (100,000 images: 100,000 x 160 per block, about 64 MB), and each
image keeps at most its `nearest_limit` most similar images above the threshold, so the pairs
stay within `PAIR_BUDGET` too (look-alike images can put most pairs above it: n^2 / 2 pairs).

A pair is a near copy when any signal says so: the codes, or another `Signal` searched the same
way with its own calibrated threshold (the thumbnails', tlvision.auditor.thumbnails). Pairs and
groups are ranked by `distinctness` (how much closer the two images are to each other than to
any third one), which is comparable between signals as raw similarities are not, and which
puts a copy before a pair of look-alikes among many (Fashion-MNIST's garments: their codes
similarity can be higher than a halved copy's, their distinctness is not)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
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
    positives = [value for values in copies.values() for value in values]
    return Calibration(threshold_from(positives, nearest), dict(copies), nearest)


def threshold_from(copies: Sequence[float], nearest_others: Sequence[float]) -> float:
    """The 5th percentile of the copies' similarities, raised halfway to the upper quartile of
    the nearest others' when that is higher; at most 0.999."""
    low_copy = float(np.quantile(np.asarray(copies), 0.05))
    high_other = float(np.quantile(nearest_others, 0.75)) if len(nearest_others) else -1.0
    threshold = low_copy if high_other < low_copy else (low_copy + high_other) / 2
    return min(threshold, 0.999)


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
    return blocked_search(lambda rows: unit[rows] @ unit.T, len(unit), threshold, nearest)[0]


@dataclass(frozen=True)
class Neighbours:
    """Each image's NEIGHBOURS most similar other images (`index`, `similarity`, most similar
    first): what tells a copy apart from an image in a crowd of look-alikes."""

    index: np.ndarray
    similarity: np.ndarray


NEIGHBOURS = 9  # MAX_GROUP + 1: a full group's members and the nearest image outside it


def blocked_search(
    block_of: Callable[[slice], np.ndarray], count: int, threshold: float, nearest: int | None
) -> tuple[Pairs, Neighbours]:
    """`similar_pairs` for any symmetric similarity: `block_of(rows)` gives rows' similarities
    to every image, (rows, count); also each image's nearest neighbours."""
    limit = max(1, nearest_limit(count) if nearest is None else nearest)
    block = max(1, BLOCK_ELEMENTS // max(1, count))
    crowded = np.zeros(count, dtype=bool)  # rows whose neighbours were cut to `limit`
    upper: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    lower: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    keep = max(0, min(NEIGHBOURS, count - 1))
    neighbours = Neighbours(
        np.zeros((count, keep), dtype=np.int32), np.zeros((count, keep), dtype=np.float32)
    )
    for start in range(0, count, block):
        similarity = block_of(slice(start, start + block))
        _nearest_others(similarity, start, neighbours)
        near = _kept_neighbours(similarity, start, threshold, limit, crowded)
        rows, columns = np.nonzero(near)
        here = rows + start
        values = similarity[rows, columns]
        above = here < columns
        upper.append((here[above], columns[above], values[above]))
        # a pair below the diagonal counts only when the other image's own list was cut
        below = ~above & crowded[columns]
        lower.append((columns[below], here[below], values[below]))
    return _unique_pairs(upper + lower, count), neighbours


def _nearest_others(similarity: np.ndarray, start: int, neighbours: Neighbours) -> None:
    """Fills the block's rows of `neighbours`: their most similar other images, most first."""
    keep = neighbours.index.shape[1]
    if keep < 1:
        return
    for chunk in np.array_split(np.arange(len(similarity)), -(-len(similarity) // CUT_ROWS)):
        ranked = -similarity[chunk]  # a few rows at a time: argpartition's indices are int64
        ranked[np.arange(len(chunk)), chunk + start] = np.inf  # itself last
        top = np.argpartition(ranked, keep - 1, axis=1)[:, :keep]
        values = np.take_along_axis(similarity[chunk], top, axis=1)
        order = np.argsort(-values, axis=1, kind="stable")
        neighbours.index[chunk + start] = np.take_along_axis(top, order, axis=1)
        neighbours.similarity[chunk + start] = np.take_along_axis(values, order, axis=1)


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


@dataclass(frozen=True)
class Signal:
    """One way of finding near copies: its pairs above its own calibrated threshold and each
    image's nearest others by the same similarity ("codes": the CNN codes' cosine; "pixels":
    small thumbnails', tlvision.auditor.thumbnails)."""

    name: str
    pairs: Pairs
    neighbours: Neighbours


def distinctness(signal: Signal, group_of: np.ndarray | None = None) -> np.ndarray:
    """Per pair, how much closer its two images are to each other than to anything else:
    1 - distance / distance to the nearest other image of either (outside their group when
    `group_of` is given), distance = 1 - similarity. 1: the same; 0: no closer than the next
    image; negative: a crowd of look-alikes. Comparable between signals, as raw similarities
    are not."""
    first, second = signal.pairs.first, signal.pairs.second
    outside = np.full(len(first), -1.0)
    for row, other in ((first, second), (second, first)):
        index, values = signal.neighbours.index[row], signal.neighbours.similarity[row]
        others = index != other[:, None]
        if group_of is not None:
            others &= group_of[index] != group_of[row][:, None]
        outside = np.maximum(outside, np.where(others, values, -1.0).max(axis=1, initial=-1.0))
    distance = np.maximum(1.0 - signal.pairs.similarity.astype(np.float64), 0.0)
    return 1.0 - distance / np.maximum(1.0 - outside, 1e-6)


def _groups(
    count: int, exact: Sequence[tuple[int, int]], signals: Sequence[Signal]
) -> list[list[int]]:
    """Groups: exact copies first, then near pairs of every signal most distinct first (ties
    in pair order), each merge kept only while the merged group has at most MAX_GROUP images."""
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
    first = np.concatenate([signal.pairs.first for signal in signals])
    second = np.concatenate([signal.pairs.second for signal in signals])
    order = np.argsort(-np.concatenate([distinctness(signal) for signal in signals]), kind="stable")
    for a, b in zip(first[order].tolist(), second[order].tolist(), strict=True):
        join(a, b, MAX_GROUP)
    members: dict[int, list[int]] = defaultdict(list)
    for item in range(count):
        members[root(item)].append(item)
    return [sorted(group) for group in members.values() if len(group) > 1]


@dataclass(frozen=True)
class DuplicateGroup:
    rows: tuple[int, ...]
    similarity: float  # the lowest codes similarity within the group's links (1.0: same bytes)
    exact: bool
    strength: float = 1.0  # the most distinct link's `distinctness` (1.0: same bytes)
    found_by: tuple[str, ...] = ()  # "bytes" and the signals whose pairs link the group

    def spans_splits(self, splits: Sequence[str]) -> bool:
        return len({splits[row] for row in self.rows}) > 1


def duplicate_groups(
    unit: np.ndarray,
    digests: Sequence[str],
    threshold: float,
    splits: Sequence[str],
    extra: Sequence[Signal] = (),
) -> list[DuplicateGroup]:
    """Groups of images with the same bytes, codes at least `threshold` alike, or near by an
    `extra` signal (a pair is a duplicate when any signal says so); groups that span splits
    first (they inflate val or test accuracy), then the most distinct (`distinctness`)."""
    by_digest: dict[str, list[int]] = defaultdict(list)
    for row, digest in enumerate(digests):
        by_digest[digest].append(row)
    exact_edges = [(rows[0], other) for rows in by_digest.values() for other in rows[1:]]
    codes = Signal("codes", *blocked_search(lambda rows: unit[rows] @ unit.T, len(unit),
                                            threshold, None))  # fmt: skip
    signals = [codes, *extra]
    groups = _groups(len(unit), exact_edges, signals)
    group_of = np.full(len(unit), -1, dtype=np.int64)
    for number, group in enumerate(groups):
        group_of[group] = number
    links = _GroupLinks(len(groups))
    for signal in signals:
        links.add(signal, group_of, unit)
    result = [
        DuplicateGroup(
            rows=tuple(sorted(group, key=lambda row: (SPLIT_ORDER.get(splits[row], 3), row))),
            similarity=min(1.0, float(links.weakest[number])),
            exact=len({digests[row] for row in group}) == 1,
            strength=1.0 if links.same_bytes(group, digests) else float(links.strength[number]),
            found_by=links.names(number, group, digests),
        )
        for number, group in enumerate(groups)
    ]
    result.sort(key=lambda g: (not g.spans_splits(splits), -g.strength, -g.similarity))
    return result


class _GroupLinks:
    """Per group: the lowest codes similarity of its links, the most distinct link, and which
    signals link it."""

    def __init__(self, count: int) -> None:
        self.weakest = np.ones(count, dtype=np.float64)
        self.strength = np.full(count, -np.inf)
        self.found: list[set[str]] = [set() for _ in range(count)]

    def add(self, signal: Signal, group_of: np.ndarray, unit: np.ndarray) -> None:
        pairs = signal.pairs
        inside = (group_of[pairs.first] >= 0) & (group_of[pairs.first] == group_of[pairs.second])
        number = group_of[pairs.first[inside]]
        codes = np.einsum("ij,ij->i", unit[pairs.first[inside]], unit[pairs.second[inside]])
        np.minimum.at(self.weakest, number, codes)
        np.maximum.at(self.strength, number, distinctness(signal)[inside])
        for each in set(number.tolist()):
            self.found[each].add(signal.name)

    @staticmethod
    def same_bytes(group: Sequence[int], digests: Sequence[str]) -> bool:
        return len({digests[row] for row in group}) < len(group)

    def names(self, number: int, group: Sequence[int], digests: Sequence[str]) -> tuple[str, ...]:
        bytes_ = ("bytes",) if self.same_bytes(group, digests) else ()
        return bytes_ + tuple(sorted(self.found[number]))
