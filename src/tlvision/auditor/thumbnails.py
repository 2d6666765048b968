"""The pixel signal for near duplicates: a small grayscale thumbnail of each image, standardised
(zero mean, unit length: brightness and contrast do not count), compared with the views of the
other images that the known transforms make: mirrored, and with 10% cropped off two sides at
each corner. The CNN codes of a low-resolution image move a lot when it is halved (a 28 px
garment halved lies as far from itself as from another garment), its thumbnail barely does.

Its threshold is calibrated as the codes' is, on the known-transform copies of the dataset's own
images (tlvision.auditor.transforms). The search goes block by block as the codes' does
(tlvision.auditor.duplicates.blocked_search): SIZE x SIZE numbers per view, VIEWS views.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from tlvision.auditor.duplicates import (
    Calibration,
    Signal,
    blocked_search,
)
from tlvision.codes.cache import CodesGroup, FeatureCache
from tlvision.codes.shards import Shard, ShardWriter, shard_name

SIZE = 12
"""Thumbnail side in pixels: small enough that a halved or recompressed copy looks the same,
large enough that different garments or letters do not (measured against 10 and 16 on
Fashion-MNIST, glyphs and digits: benchmarks/RESULTS.md)."""
CROP = 10  # a crop view cuts width // CROP and height // CROP off two sides, as the transform
VIEWS = 7  # the image, mirrored, halved, and cropped at its four corners


def _views(image: Image.Image) -> list[Image.Image]:
    width, height = image.size
    dx, dy = width // CROP, height // CROP
    boxes = [(dx, dy, width, height), (0, dy, width - dx, height),
             (dx, 0, width, height - dy), (0, 0, width - dx, height - dy)]  # fmt: skip
    halved = image.resize((max(1, width // 2), max(1, height // 2)), Image.Resampling.BILINEAR)
    return [image, ImageOps.mirror(image), halved, *(image.crop(box) for box in boxes)]


def _standardised(pixels: np.ndarray) -> np.ndarray:
    rows = pixels.reshape(len(pixels), -1).astype(np.float32)
    rows -= rows.mean(axis=1, keepdims=True)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-6)


def thumbnail_views(path: Path) -> np.ndarray:
    """(VIEWS, SIZE * SIZE) standardised thumbnails of the image's views (zeros when it cannot
    be read: the audit lists it as unreadable). The file is only read."""
    try:
        with Image.open(path) as opened:
            opened.draft("L", (4 * SIZE, 4 * SIZE))  # JPEG: decode at a fraction of the size
            image = ImageOps.exif_transpose(opened).convert("L")
    except (OSError, ValueError, Image.DecompressionBombError):
        return np.zeros((VIEWS, SIZE * SIZE), dtype=np.float32)
    if image.width < CROP or image.height < CROP:
        image = image.resize((max(CROP, image.width), max(CROP, image.height)))
    small = [
        np.asarray(view.resize((SIZE, SIZE), Image.Resampling.BILINEAR), dtype=np.float32)
        for view in _views(image)
    ]
    return _standardised(np.stack(small))


def thumbnails_of(files: Sequence[Path], cache: FeatureCache | None = None) -> np.ndarray:
    """(len(files), VIEWS, SIZE * SIZE) float32; with a cache, the thumbnails of images seen
    before (the same bytes) are read back and the new ones stored."""
    if not files:
        return np.zeros((0, VIEWS, SIZE * SIZE), dtype=np.float32)
    if cache is None:
        return np.stack([thumbnail_views(path) for path in files])
    keys = [bytes.fromhex(digest) for digest in cache.image_hashes(files)]
    group = cache.named_group("thumbnails", _identity())
    group.load_index()
    missing = group.resolve(keys)
    rows = np.zeros((len(files), VIEWS * SIZE * SIZE), dtype=np.float32)
    fresh: dict[bytes, np.ndarray] = {}
    for position, key in enumerate(keys):
        if key in missing:
            if key not in fresh:
                fresh[key] = thumbnail_views(files[position]).reshape(-1)
            rows[position] = fresh[key]
    _read_back(group, keys, missing, rows)
    readable = [key for key, row in fresh.items() if row.any()]  # unreadable ones: zeros
    if readable:
        _store(group, readable, np.stack([fresh[key] for key in readable]))
    return rows.reshape(len(files), VIEWS, SIZE * SIZE)


def _identity() -> dict[str, str]:
    """What a stored thumbnail depends on: its size, views and this module's code."""
    code = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
    return {"size": str(SIZE), "views": str(VIEWS), "crop": str(CROP), "code": code}


def _read_back(group: CodesGroup, keys: list[bytes], missing: set[bytes], rows: np.ndarray) -> None:
    """Fill `rows` for the keys the group holds, shard by shard (rows checked by resolve)."""
    by_shard: dict[int, tuple[Shard, list[int], list[int]]] = {}
    for position, key in enumerate(keys):
        if key not in missing:
            shard, row = group.index[key]
            entry = by_shard.setdefault(id(shard), (shard, [], []))
            entry[1].append(position)
            entry[2].append(row)
    for shard, positions, shard_rows in by_shard.values():
        rows[np.asarray(positions)] = shard.codes[np.asarray(shard_rows)]


def _store(group: CodesGroup, keys: list[bytes], values: np.ndarray) -> None:
    group.ensure_dir()
    writer = ShardWriter(group.dir, group.digest, keys, values.shape[1])
    try:
        writer.set_rows(np.arange(len(keys)), values)
        group.add(writer.commit(shard_name("chunk", group.digest, keys)))
    except BaseException:
        writer.abort()
        raise


def pixel_similarity(views_a: np.ndarray, views_b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)): the best of each image's views against the other's plain thumbnail,
    both ways (symmetric). Views by view first: (VIEWS, images, SIZE * SIZE)."""
    best = views_a[0] @ views_b[0].T
    for view in range(1, len(views_a)):
        np.maximum(best, views_a[view] @ views_b[0].T, out=best)
        np.maximum(best, views_a[0] @ views_b[view].T, out=best)
    return best


def by_view(views: np.ndarray) -> np.ndarray:
    """(images, VIEWS, d) as (VIEWS, images, d), each view's rows contiguous for the products."""
    return np.ascontiguousarray(np.asarray(views, dtype=np.float32).transpose(1, 0, 2))


def calibrate_pixels(
    views: np.ndarray,
    digests: Sequence[str],
    calibration: Sequence[tuple[int, str]],
    copy_views: np.ndarray | None,
    fallback: float = 0.99,
) -> Calibration:
    """The pixel threshold: the lowest similarity of a known-transform copy to its original
    (the copies of the dataset's own images), at most 0.999. Lower than the codes' rule (the
    5th percentile, raised toward the nearest others'): which transform is hardest depends on
    the images (halving for thin strokes, JPEG for flat grey areas, over a sample of 24), and
    the groups are listed most distinct first, so the pairs a low threshold lets in come last.
    The originals' nearest other images are recorded beside it."""
    if copy_views is None or not len(calibration) or not len(copy_views):
        return Calibration(fallback, {}, [])
    copies: dict[str, list[float]] = {}
    rows = np.asarray([row for row, _name in calibration])
    to_copies = pixel_similarity(by_view(views[rows]), by_view(copy_views))
    for number, (_row, name) in enumerate(calibration):
        copies.setdefault(name, []).append(float(to_copies[number, number]))
    originals = sorted(set(rows.tolist()))
    digest_array = np.asarray(digests)
    nearest = []
    everyone = by_view(views)
    near = pixel_similarity(everyone[:, originals], everyone)
    for row, similarity in zip(originals, near, strict=True):
        similarity[digest_array == digests[row]] = -1.0  # itself and exact copies
        nearest.append(float(similarity.max()))
    lowest = min(min(values) for values in copies.values())
    return Calibration(min(lowest, 0.999), copies, nearest)


def pixel_signal(views: np.ndarray, threshold: float, nearest: int | None = None) -> Signal:
    """Pairs whose thumbnails are at least `threshold` alike, block by block of rows."""
    everyone = by_view(views)
    search = blocked_search(
        lambda rows: pixel_similarity(everyone[:, rows], everyone), len(views), threshold, nearest
    )
    return Signal("pixels", *search)
