"""The audit's duplicate search at scale: peak memory and time on synthetic codes.

    python benchmarks/audit_duplicates_scale.py [--images 100000] [--dim 1280] [--check 4000]
    python benchmarks/audit_duplicates_scale.py --pixels [--images 100000]

Synthetic codes stand in for a dataset's (the search only sees codes): `--images` rows of
`--dim` float32, ReLU'd like a CNN's pooled features, drawn around one centre per 50 images so
that look-alikes crowd each other above the threshold (cosine ~0.95 within a centre, ~0.34
across; `--threshold` 0.9, as Fashion-MNIST's look-alike garments lie above its calibrated
threshold), with `--planted` near copies (a row times 1 + 2% noise) put at random rows.
Printed: the similarity block, the neighbour limit, the seconds of `duplicate_groups`, the peak
memory traced during it (tracemalloc, numpy's arrays included) beside the codes' own size and
what an n x n similarity matrix would take, the process's peak RSS, and the planted copies found
in one group with their original. `--check N` first compares the blocked search with the plain
n x n one on the first N rows (no neighbour limit).

`--pixels`: the pixel signal's search instead (tlvision.auditor.thumbnails.pixel_signal), on
`--images` synthetic standardised thumbnails (VIEWS views of SIZE x SIZE random numbers each),
`--planted` of them copies of others with 5% noise; printed: its seconds, peak traced memory,
peak RSS and the planted copies among its pairs, at threshold 0.98.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
import tracemalloc

import numpy as np

from tlvision.auditor import duplicates
from tlvision.auditor.duplicates import duplicate_groups, nearest_limit, similar_pairs, unit_rows
from tlvision.auditor.thumbnails import SIZE, VIEWS, pixel_signal

PER_CENTRE = 50
SPREAD = 0.3


def synthetic_codes(images: int, dim: int, planted: int, seed: int) -> tuple[np.ndarray, dict]:
    """Codes around images / PER_CENTRE centres, and {copy row: original row} of the planted
    near copies."""
    rng = np.random.default_rng(seed)
    centres = rng.gamma(0.5, 1.0, size=(max(1, images // PER_CENTRE), dim)).astype(np.float32)
    codes = np.empty((images, dim), dtype=np.float32)
    step = 10_000
    for start in range(0, images, step):
        stop = min(images, start + step)
        which = rng.integers(0, len(centres), size=stop - start)
        noise = rng.gamma(0.5, 1.0, size=(stop - start, dim)).astype(np.float32)
        codes[start:stop] = np.maximum(centres[which] + SPREAD * (noise - 0.5), 0.0)
    rows = rng.choice(images, size=2 * planted, replace=False)
    originals, copies = rows[:planted], rows[planted:]
    jitter = rng.normal(0.0, 0.02, size=(planted, dim)).astype(np.float32)
    codes[copies] = np.maximum(codes[originals] * (1.0 + jitter), 0.0)
    return codes, dict(zip(copies.tolist(), originals.tolist(), strict=True))


def check_against_plain(unit: np.ndarray, threshold: float) -> bool:
    """The blocked search gives the plain n x n search's pairs when no image is cut."""
    plain = unit @ unit.T
    first, second = np.nonzero(np.triu(plain >= threshold, k=1))
    blocked = similar_pairs(unit, threshold, nearest=len(unit))
    return bool(
        np.array_equal(blocked.first, first)
        and np.array_equal(blocked.second, second)
        and np.allclose(blocked.similarity, plain[first, second])
    )


def standardised(rows: np.ndarray) -> np.ndarray:
    rows = rows - rows.mean(axis=-1, keepdims=True)
    return (rows / np.linalg.norm(rows, axis=-1, keepdims=True)).astype(np.float32)


def pixel_search(images: int, planted: int) -> None:
    """The pixel signal's blocked search on synthetic thumbnails: time, memory, copies found."""
    rng = np.random.default_rng(0)
    views = np.empty((images, VIEWS, SIZE * SIZE), dtype=np.float32)
    for start in range(0, images, 10_000):
        stop = min(images, start + 10_000)
        views[start:stop] = standardised(rng.normal(size=(stop - start, VIEWS, SIZE * SIZE)))
    rows = rng.choice(images, size=2 * planted, replace=False)
    originals, copies = rows[:planted], rows[planted:]
    noise = rng.normal(0.0, 0.05 / SIZE, size=(planted, VIEWS, SIZE * SIZE))
    views[copies] = standardised(views[originals] + noise)
    print(f"{images} x {VIEWS} x {SIZE * SIZE} thumbnails ({views.nbytes / 2**20:.0f} MiB); an "
          f"n x n float32 matrix would take {images * images * 4 / 2**30:.1f} GiB")  # fmt: skip
    tracemalloc.start()
    started = time.perf_counter()
    signal = pixel_signal(views, 0.98)
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    pairs = set(zip(signal.pairs.first.tolist(), signal.pairs.second.tolist(), strict=True))
    found = sum(
        1 for copy, original in zip(copies.tolist(), originals.tolist(), strict=True)
        if (min(copy, original), max(copy, original)) in pairs
    )  # fmt: skip
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    print(f"pixel_signal: {seconds:.1f} s, peak traced {peak / 2**20:.0f} MiB beside the "
          f"thumbnails, process peak RSS {rss:.0f} MiB; {len(pairs)} pairs; planted copies found "
          f"{found}/{planted}; load average {os.getloadavg()}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--planted", type=int, default=200)
    parser.add_argument("--check", type=int, default=4000)
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--pixels", action="store_true", help="the pixel signal's search")
    arguments = parser.parse_args()
    print(f"load average {os.getloadavg()}")
    if arguments.pixels:
        pixel_search(arguments.images, arguments.planted)
        return
    codes, planted = synthetic_codes(arguments.images, arguments.dim, arguments.planted, 0)
    unit = unit_rows(codes)
    del codes
    threshold = arguments.threshold
    if arguments.check:
        equal = check_against_plain(unit[: arguments.check], threshold)
        print(f"blocked == plain on the first {arguments.check} rows: {equal}")
    count = len(unit)
    block = max(1, duplicates.BLOCK_ELEMENTS // count)
    print(
        f"{count} x {arguments.dim} codes ({unit.nbytes / 2**20:.0f} MiB), threshold "
        f"{threshold:.3f}, blocks of {block} rows, each image keeps <= {nearest_limit(count)} "
        f"near images; an n x n float32 matrix would take {count * count * 4 / 2**30:.1f} GiB"
    )
    digests = [str(row) for row in range(count)]
    splits = ["train"] * count
    tracemalloc.start()
    started = time.perf_counter()
    groups = duplicate_groups(unit, digests, threshold, splits)
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    group_of = {row: number for number, group in enumerate(groups) for row in group.rows}
    found = sum(
        1 for copy, original in planted.items()
        if copy in group_of and group_of.get(original) == group_of[copy]
    )  # fmt: skip
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    print(
        f"duplicate_groups: {seconds:.1f} s, peak traced {peak / 2**20:.0f} MiB beside the codes, "
        f"process peak RSS {rss:.0f} MiB; {len(groups)} groups (largest "
        f"{max((len(g.rows) for g in groups), default=0)}); planted copies found "
        f"{found}/{len(planted)}; load average {os.getloadavg()}"
    )


if __name__ == "__main__":
    main()
