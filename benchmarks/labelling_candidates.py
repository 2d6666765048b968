"""The other selections benchmarks/active_labelling.py measures label-next against (issue 25).

Each is a picker: (pool codes, the head's pool probabilities, labelled codes, count) -> pool
indices. None is shipped; they are here so that benchmarks/RESULTS.md's tables can be rerun.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.cluster import KMeans

from tlvision.labelling.selection import (
    DUPLICATE_DISTANCE,
    TYPICAL_NEIGHBOURS,
    margin_uncertainty,
    nearest_distance,
    neighbourhood,
    normalised,
)

Picker = Callable[[np.ndarray, np.ndarray, np.ndarray, int], list[int]]


def typicality(pool: np.ndarray, neighbours: int = TYPICAL_NEIGHBOURS) -> np.ndarray:
    return neighbourhood(pool, neighbours).typicality


def weighted_k_center(
    pool: np.ndarray, weight: np.ndarray, distance: np.ndarray, allowed: np.ndarray, count: int
) -> list[int]:
    """label-next's greedy loop with any weight and a restricted candidate set."""
    picks: list[int] = []
    allowed = allowed & (distance >= DUPLICATE_DISTANCE)
    while len(picks) < count and allowed.any():
        near = np.minimum(distance, 1.0)
        best = int(np.argmax(np.where(allowed, weight * near + 1e-9 * near, -np.inf)))
        picks.append(best)
        distance = np.minimum(distance, 1.0 - pool @ pool[best])
        allowed &= distance >= DUPLICATE_DISTANCE
        allowed[best] = False
    return picks


def prepared(
    codes: np.ndarray, probabilities: np.ndarray, labelled: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(normalised pool, margin uncertainty, distance to the nearest labelled)"""
    pool = normalised(codes)
    return pool, margin_uncertainty(probabilities), nearest_distance(pool, normalised(labelled))


def previous(codes: np.ndarray, p: np.ndarray, labelled: np.ndarray, count: int) -> list[int]:
    """label-next before typicality: uncertainty x distance, weighted k-center."""
    pool, uncertainty, distance = prepared(codes, p, labelled)
    return weighted_k_center(pool, uncertainty, distance, np.ones(len(pool), bool), count)


def top_uncertain(share: float, weighted: bool = True) -> Picker:
    """(weighted) k-center among the share x count most uncertain images only."""

    def pick(codes: np.ndarray, p: np.ndarray, labelled: np.ndarray, count: int) -> list[int]:
        pool, uncertainty, distance = prepared(codes, p, labelled)
        ranked = np.where(distance >= DUPLICATE_DISTANCE, uncertainty, -np.inf)
        allowed = np.zeros(len(pool), bool)
        allowed[np.argsort(-ranked, kind="stable")[: int(share * count)]] = True
        weight = uncertainty if weighted else np.ones(len(pool))
        return weighted_k_center(pool, weight, distance, allowed, count)

    return pick


def typical_uncertain(power: float = 1.0, neighbours: int = 20, near: float = 1.0) -> Picker:
    """Weighted k-center, weight uncertainty x typicality^power, distance^near."""

    def pick(codes: np.ndarray, p: np.ndarray, labelled: np.ndarray, count: int) -> list[int]:
        pool, uncertainty, distance = prepared(codes, p, labelled)
        weight = uncertainty * typicality(pool, neighbours) ** power
        if near == 1.0:
            return weighted_k_center(pool, weight, distance, np.ones(len(pool), bool), count)
        picks: list[int] = []
        allowed = distance >= DUPLICATE_DISTANCE
        while len(picks) < count and allowed.any():
            spread = np.clip(distance, 0.0, 1.0) ** near
            best = int(np.argmax(np.where(allowed, weight * spread + 1e-9 * spread, -np.inf)))
            picks.append(best)
            distance = np.minimum(distance, 1.0 - pool @ pool[best])
            allowed &= distance >= DUPLICATE_DISTANCE
            allowed[best] = False
        return picks

    return pick


def other_uncertainty(probabilities: np.ndarray, kind: str) -> np.ndarray:
    if kind == "entropy":
        logs = np.log(np.clip(probabilities, 1e-12, 1.0))
        return np.asarray(-(probabilities * logs).sum(axis=1) / np.log(probabilities.shape[1]))
    if kind == "least confidence":
        return np.asarray(1.0 - probabilities.max(axis=1))
    return margin_uncertainty(probabilities)


def typical_variant(kind: str = "margin", cap: float | None = None) -> Picker:
    """label-next with another uncertainty, or at most cap x count / classes picks per predicted
    class (the cap lifted when nothing else is left)."""

    def pick(codes: np.ndarray, p: np.ndarray, labelled: np.ndarray, count: int) -> list[int]:
        pool, _margin, distance = prepared(codes, p, labelled)
        weight = other_uncertainty(p, kind) * typicality(pool)
        return capped_k_center(pool, weight, distance, p, cap, count)

    return pick


def capped_k_center(
    pool: np.ndarray,
    weight: np.ndarray,
    distance: np.ndarray,
    p: np.ndarray,
    cap: float | None,
    count: int,
) -> list[int]:
    """Weighted k-center with at most cap x count / classes picks per predicted class."""
    predicted, used = p.argmax(axis=1), np.zeros(p.shape[1], int)
    limit = int(np.ceil(cap * count / p.shape[1])) if cap else count
    picks: list[int] = []
    allowed = distance >= DUPLICATE_DISTANCE
    while len(picks) < count and allowed.any():
        near = np.minimum(distance, 1.0)
        worth = weight * near + 1e-9 * near
        open_class = allowed & (used[predicted] < limit)
        among = open_class if open_class.any() else allowed
        best = int(np.argmax(np.where(among, worth, -np.inf)))
        picks.append(best)
        used[predicted[best]] += 1
        distance = np.minimum(distance, 1.0 - pool @ pool[best])
        allowed &= distance >= DUPLICATE_DISTANCE
        allowed[best] = False
    return picks


def typiclust(codes: np.ndarray, p: np.ndarray, labelled: np.ndarray, count: int) -> list[int]:
    """TypiClust (Hacohen et al. 2022): k-means into labelled + count clusters; the most typical
    image of each of the largest clusters holding no labelled image."""
    pool, known = normalised(codes), normalised(labelled)
    clusters = len(known) + count
    found = KMeans(clusters, n_init=1, random_state=0).fit(np.concatenate([known, pool])).labels_
    covered, in_pool = set(found[: len(known)].tolist()), found[len(known) :]
    sizes = np.bincount(in_pool, minlength=clusters)
    order = sorted(range(clusters), key=lambda c: (c in covered, -sizes[c]))
    picks: list[int] = []
    for cluster in order:
        members = np.flatnonzero(in_pool == cluster)
        if len(picks) == count:
            break
        if len(members):
            picks.append(int(members[np.argmax(typicality(pool[members]))]))
    return picks


def phased(switch: float) -> Picker:
    """TypiClust below `switch` labelled per class, then top_uncertain(2)."""
    later = top_uncertain(2)

    def pick(codes: np.ndarray, p: np.ndarray, labelled: np.ndarray, count: int) -> list[int]:
        early = len(labelled) / p.shape[1] < switch
        return (typiclust if early else later)(codes, p, labelled, count)

    return pick


def cluster_margin(share: int) -> Picker:
    """Cluster-margin-like: k-means of the share x count most uncertain into count clusters,
    the most uncertain of each."""

    def pick(codes: np.ndarray, p: np.ndarray, labelled: np.ndarray, count: int) -> list[int]:
        pool, uncertainty, distance = prepared(codes, p, labelled)
        ranked = np.where(distance >= DUPLICATE_DISTANCE, uncertainty, -1.0)
        candidates = np.argsort(-ranked, kind="stable")[: share * count]
        found = KMeans(count, n_init=1, random_state=0).fit(pool[candidates]).labels_
        picks = []
        for cluster in range(count):
            members = candidates[found == cluster]
            if len(members):
                picks.append(int(members[np.argmax(ranked[members])]))
        return picks

    return pick


def prob_cover(radius: float) -> Picker:
    """ProbCover (Yehuda et al. 2022): greedily the image whose cosine ball of `radius` covers
    the most images not yet within `radius` of a labelled or picked one."""

    def pick(codes: np.ndarray, p: np.ndarray, labelled: np.ndarray, count: int) -> list[int]:
        pool = normalised(codes)
        ball = 1.0 - pool @ pool.T < radius
        distance = nearest_distance(pool, normalised(labelled))
        covered, allowed = distance < radius, distance >= DUPLICATE_DISTANCE
        picks: list[int] = []
        for _ in range(count):
            gain = np.where(allowed, (ball & ~covered[None, :]).sum(axis=1), -1)
            best = int(np.argmax(gain))
            picks.append(best)
            covered |= ball[best]
            allowed[best] = False
        return picks

    return pick


def class_typical(codes: np.ndarray, p: np.ndarray, labelled: np.ndarray, count: int) -> list[int]:
    """label-next with each image's typicality divided by the largest among the images of its
    predicted class: a small class's typical images weigh as much as a large one's."""
    pool, uncertainty, distance = prepared(codes, p, labelled)
    typical, predicted = typicality(pool), p.argmax(axis=1)
    largest = np.zeros(p.shape[1])
    np.maximum.at(largest, predicted, typical)
    typical = typical / np.maximum(largest[predicted], 1e-12)
    return weighted_k_center(pool, uncertainty * typical, distance, np.ones(len(pool), bool), count)


def flat_uncertainty(
    codes: np.ndarray, p: np.ndarray, labelled: np.ndarray, count: int
) -> list[int]:
    """label-next with the square root of the margin uncertainty (a head fit on few labels is
    sure of most images: the root spreads the low end)."""
    pool, uncertainty, distance = prepared(codes, p, labelled)
    weight = np.sqrt(uncertainty) * typicality(pool)
    return weighted_k_center(pool, weight, distance, np.ones(len(pool), bool), count)


def badge(greedy: bool = False, typical_weight: bool = False) -> Picker:
    """BADGE (Ash et al. 2020) for the linear head: each image's loss gradient for the last layer
    under its predicted label, (p - onehot(predicted)) x code, then k-means++ seeding over those
    (D^2 sampling, seeded; `greedy`: the farthest each time). Distances between two gradients
    come from (a_i . a_j)(x_i . x_j), so the class x code vectors are never built.
    `typical_weight`: D^2 times typicality."""

    def pick(codes: np.ndarray, p: np.ndarray, labelled: np.ndarray, count: int) -> list[int]:
        pool = normalised(codes)
        allowed = nearest_distance(pool, normalised(labelled)) >= DUPLICATE_DISTANCE
        residual = p.copy()
        residual[np.arange(len(p)), p.argmax(axis=1)] -= 1.0
        norms = (residual**2).sum(axis=1)  # |gradient|^2, the codes having unit length
        weight = typicality(pool) if typical_weight else np.ones(len(pool))
        rng = np.random.default_rng(len(labelled))
        nearest = norms.copy()  # squared distance to the nearest chosen gradient (none: to 0)
        picks: list[int] = []
        while len(picks) < count and allowed.any():
            score = np.where(allowed, np.maximum(nearest, 0.0) * weight, 0.0)
            if greedy or not picks or score.sum() <= 0:
                best = int(np.argmax(np.where(allowed, score, -np.inf)))
            else:
                best = int(rng.choice(len(pool), p=score / score.sum()))
            picks.append(best)
            between = norms + norms[best] - 2.0 * (residual @ residual[best]) * (pool @ pool[best])
            nearest = np.minimum(nearest, between)
            allowed &= 1.0 - pool @ pool[best] >= DUPLICATE_DISTANCE
            allowed[best] = False
        return picks

    return pick


def uncertain_neighbourhood(mode: str, neighbours: int = 20, cap: float | None = None) -> Picker:
    """label-next with the uncertainty of the image's neighbourhood (its `neighbours` nearest pool
    images and itself, mean): a label there teaches the head about many uncertain images.
    mode "smoothed": that mean in place of the image's own; "times": both multiplied;
    "geometric": the square root of that product. `cap`: as typical_variant's."""

    def pick(codes: np.ndarray, p: np.ndarray, labelled: np.ndarray, count: int) -> list[int]:
        pool, uncertainty, distance = prepared(codes, p, labelled)
        similarity = pool @ pool.T
        nearest = np.argpartition(-similarity, neighbours, axis=1)[:, : neighbours + 1]
        around = uncertainty[nearest].mean(axis=1)
        own = {"smoothed": around, "times": uncertainty * around}
        weight = own.get(mode, np.sqrt(uncertainty * around)) * typicality(pool)
        return capped_k_center(pool, weight, distance, p, cap, count)

    return pick


CANDIDATES: dict[str, Picker] = {
    "uncertainty x typicality (label-next before)": typical_uncertain(),
    "uncertainty x distance (label-next before typicality)": previous,
    "top 1.5K uncertain, then weighted k-center": top_uncertain(1.5),
    "top 2K uncertain, then weighted k-center": top_uncertain(2),
    "top 2K uncertain, then plain k-center": top_uncertain(2, weighted=False),
    "typicality^0.5 x uncertainty": typical_uncertain(0.5),
    "typicality^2 x uncertainty": typical_uncertain(2.0),
    "typicality^3 x uncertainty": typical_uncertain(3.0),
    "typicality^0.7 x uncertainty": typical_uncertain(0.7),
    "typicality^1.5 x uncertainty": typical_uncertain(1.5),
    "typicality (10 neighbours) x uncertainty": typical_uncertain(1.0, 10),
    "typicality (15 neighbours) x uncertainty": typical_uncertain(1.0, 15),
    "typicality (30 neighbours) x uncertainty": typical_uncertain(1.0, 30),
    "typicality (50 neighbours) x uncertainty": typical_uncertain(1.0, 50),
    "typicality x entropy": typical_variant("entropy"),
    "typicality x least confidence": typical_variant("least confidence"),
    "label-next, <= 1.5 x K/classes per predicted class": typical_variant(cap=1.5),
    "label-next, <= 2 x K/classes per predicted class": typical_variant(cap=2.0),
    "typicality x uncertainty x distance^2": typical_uncertain(1.0, 20, 2.0),
    "typicality x uncertainty x distance^0.5": typical_uncertain(1.0, 20, 0.5),
    "TypiClust": typiclust,
    "TypiClust below 8/class, then top 2K": phased(8),
    "cluster-margin, 3K candidates": cluster_margin(3),
    "cluster-margin, 5K candidates": cluster_margin(5),
    "ProbCover, radius 0.2": prob_cover(0.2),
    "ProbCover, radius 0.3": prob_cover(0.3),
    "typicality normalised per predicted class": class_typical,
    "sqrt(uncertainty) x typicality": flat_uncertainty,
    "BADGE": badge(),
    "BADGE, greedy": badge(greedy=True),
    "BADGE x typicality": badge(typical_weight=True),
    "BADGE x typicality, greedy": badge(greedy=True, typical_weight=True),
    "neighbourhood uncertainty x typicality": uncertain_neighbourhood("smoothed"),
    "uncertainty x neighbourhood uncertainty x typicality": uncertain_neighbourhood("times"),
    "sqrt(uncertainty x neighbourhood's) x typicality, <= 1.5 x K/classes": (
        uncertain_neighbourhood("geometric", cap=1.5)
    ),
    "sqrt(uncertainty x neighbourhood's) x typicality, 10 neighbours": (
        uncertain_neighbourhood("geometric", 10)
    ),
    "sqrt(uncertainty x neighbourhood's) x typicality, 40 neighbours": (
        uncertain_neighbourhood("geometric", 40)
    ),
}
