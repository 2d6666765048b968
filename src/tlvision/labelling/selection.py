"""Which pool images to label next: uncertain, typical ones, spread over code space, no duplicates.

Pure numpy on codes and class probabilities, so the benchmark (benchmarks/active_labelling.py)
runs exactly what `tlvision label-next` runs. Each image's worth is

    sqrt(uncertainty x its neighbourhood's uncertainty) x typicality x distance

- uncertainty: one minus the margin between its two most likely classes;
- its neighbourhood's: the mean uncertainty of the image and its TYPICAL_NEIGHBOURS nearest pool
  images (an uncertain image among sure ones is usually an odd case; one in an uncertain region
  stands for many images the head gets wrong, so its label moves the head where it matters); the
  square root of the product keeps the scale of the margin;
- typicality: how dense the pool is around it (the inverse of its mean cosine distance to those
  neighbours, scaled to at most 1), so an odd one out is worth little;
- distance: its cosine distance to the nearest labelled or already picked image.

The picks are made greedily (k-center greedy, weighted), so a pick lowers the worth of the images
near it. An image within DUPLICATE_DISTANCE of a train image or of an earlier pick is never
picked. Typicality, and then the neighbourhood's uncertainty, won over uncertainty x distance
alone, a candidate set of the most uncertain, cluster-margin, TypiClust, ProbCover and BADGE
on both benchmark sets (benchmarks/RESULTS.md, "Active labelling").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DUPLICATE_DISTANCE = 0.02  # cosine distance below which two codes are the same picture
CHUNK = 4096  # pool rows per matrix product: memory stays small for any pool
TYPICAL_NEIGHBOURS = 20  # the nearest pool images an image's typicality is measured on
TYPICAL_SAMPLE = 4096  # larger pools: typicality against this many of them (seeded), not all


@dataclass(frozen=True)
class Pick:
    index: int  # into the pool
    score: float  # its worth when picked (the module's docstring)
    uncertainty: float
    neighbourhood_uncertainty: float
    typicality: float  # 1 for the pool's densest image
    distance: float  # cosine distance to the nearest labelled or earlier-picked image


def normalised(codes: np.ndarray) -> np.ndarray:
    values = np.asarray(codes, dtype=np.float32)
    norms = np.linalg.norm(values, axis=1, keepdims=True)
    return values / np.maximum(norms, 1e-12)


def margin_uncertainty(probabilities: np.ndarray) -> np.ndarray:
    """1 - (p1 - p2): 1 when the two most likely classes tie, 0 when one is certain."""
    if probabilities.shape[1] < 2:
        return np.zeros(len(probabilities))
    top_two = -np.sort(-probabilities, axis=1)[:, :2]
    return np.asarray(1.0 - (top_two[:, 0] - top_two[:, 1]), dtype=np.float64)


def nearest_distance(pool: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Each normalised pool code's cosine distance to its nearest reference code (2 if none)."""
    if len(reference) == 0:
        return np.full(len(pool), 2.0)
    nearest = np.empty(len(pool))
    for start in range(0, len(pool), CHUNK):
        similarity = pool[start : start + CHUNK] @ reference.T
        nearest[start : start + CHUNK] = 1.0 - similarity.max(axis=1)
    return nearest


@dataclass(frozen=True)
class Neighbourhood:
    """What the pool's own layout says about each image; depends on the pool's codes only, so
    label-next keeps it per pool (labelling/next.py)."""

    typicality: np.ndarray  # (images,) 1 for the pool's densest image
    nearest: np.ndarray  # (images, neighbours) pool rows of each image's nearest, itself left out


def neighbourhood(
    pool: np.ndarray, neighbours: int = TYPICAL_NEIGHBOURS, sample: int = TYPICAL_SAMPLE
) -> Neighbourhood:
    """Each normalised pool code's `neighbours` nearest pool codes (the nearest, itself, left
    out) and its typicality: 1 / their mean cosine distance, scaled so the largest is 1. Pools
    over `sample` are measured against a seeded sample of that many of their codes."""
    rows = np.arange(len(pool))
    if len(pool) > sample:
        rows = np.sort(np.random.default_rng(0).choice(len(pool), sample, replace=False))
    reference = pool[rows]
    neighbours = min(neighbours, len(reference) - 1)
    if neighbours < 1:
        return Neighbourhood(np.ones(len(pool)), np.zeros((len(pool), 0), dtype=np.int64))
    mean = np.empty(len(pool))
    nearest = np.empty((len(pool), neighbours), dtype=np.int64)
    for start in range(0, len(pool), CHUNK):
        distance = 1.0 - pool[start : start + CHUNK] @ reference.T
        closest = np.argpartition(distance, neighbours, axis=1)[:, : neighbours + 1]
        closest_distance = np.take_along_axis(distance, closest, axis=1)
        order = np.argsort(closest_distance, axis=1, kind="stable")
        closest = np.take_along_axis(closest, order, axis=1)
        closest_distance = np.take_along_axis(closest_distance, order, axis=1)
        mean[start : start + CHUNK] = closest_distance[:, 1:].mean(axis=1)
        nearest[start : start + CHUNK] = rows[closest[:, 1:]]
    inverse = 1.0 / (mean + 1e-6)
    return Neighbourhood(np.asarray(inverse / inverse.max(), dtype=np.float64), nearest)


def neighbourhood_uncertainty(uncertainty: np.ndarray, nearest: np.ndarray) -> np.ndarray:
    """The mean uncertainty of each image and its nearest pool images."""
    total = uncertainty + uncertainty[nearest].sum(axis=1)
    return np.asarray(total / (1 + nearest.shape[1]), dtype=np.float64)


def select(
    pool_codes: np.ndarray,
    probabilities: np.ndarray,
    labelled_codes: np.ndarray,
    count: int,
    *,
    diversity: bool = True,
    around: Neighbourhood | None = None,
) -> list[Pick]:
    """Up to `count` picks, best first; fewer when the rest are near-duplicates.
    diversity False: uncertainty alone (the benchmark's comparison), duplicates still skipped.
    `around`: the pool's neighbourhood when already known (label-next keeps it per pool)."""
    pool = normalised(pool_codes)
    distance = nearest_distance(pool, normalised(labelled_codes))
    uncertainty = margin_uncertainty(probabilities)
    if diversity:
        around = around or neighbourhood(pool)
        typical = around.typicality
        regional = neighbourhood_uncertainty(uncertainty, around.nearest)
        weight = np.sqrt(uncertainty * regional) * typical
    else:
        typical, regional, weight = np.ones(len(pool)), uncertainty, uncertainty
    available = distance >= DUPLICATE_DISTANCE
    picks: list[Pick] = []
    while len(picks) < count and available.any():
        spread = np.minimum(distance, 1.0)
        worth = weight * spread if diversity else weight.copy()
        worth = worth + 1e-9 * spread  # ties (certain images): spread out
        worth[~available] = -np.inf
        best = int(np.argmax(worth))
        picks.append(
            Pick(
                best,
                float(worth[best]),
                float(uncertainty[best]),
                float(regional[best]),
                float(typical[best]),
                float(distance[best]),
            )
        )
        distance = np.minimum(distance, 1.0 - pool @ pool[best])
        available &= distance >= DUPLICATE_DISTANCE
        available[best] = False
    return picks
