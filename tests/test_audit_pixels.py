"""The audit's pixel duplicate signal (tlvision.auditor.thumbnails): near copies of low-resolution
images (halved, recompressed, mirrored, cropped) put into another split are found, distinct
images are not grouped by it, and the dataset's bytes are the same after an audit."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

import tlvision
from tlvision.auditor import thumbnails
from tlvision.auditor.thumbnails import (
    SIZE,
    VIEWS,
    by_view,
    pixel_signal,
    pixel_similarity,
    thumbnail_views,
    thumbnails_of,
)
from tlvision.codes.cache import FeatureCache

SMALL = 28  # pixels a side, as Fashion-MNIST


def _contents(root: Path) -> dict[str, str]:
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _small_reference(reference: Path, root: Path, train: int = 20, val: int = 6) -> None:
    """The first ants and bees photos, shrunk to SMALL px grayscale PNGs: real low-res images."""
    for split, count in (("train", train), ("val", val)):
        for name in ("ants", "bees"):
            (root / split / name).mkdir(parents=True)
            for path in sorted((reference / split / name).glob("*.jpg"))[:count]:
                image = Image.open(path).convert("L").resize((SMALL, SMALL))
                image.save(root / split / name / f"{path.stem}.png")


def _copy(image: Image.Image, kind: str) -> Image.Image:
    width, height = image.size
    if kind == "halved":
        return image.resize((width // 2, height // 2))
    if kind == "mirrored":
        return ImageOps.mirror(image)
    if kind == "cropped":
        return image.crop((width // 10, height // 10, width, height))
    return image  # recompressed: saved at JPEG quality 40


def _plant_copies(root: Path) -> list[tuple[str, str]]:
    """A near copy of four val images in train, each made another way: (val, copy) pairs."""
    pairs = []
    for number, kind in enumerate(("halved", "recompressed", "mirrored", "cropped")):
        name = ("ants", "bees")[number % 2]
        original = sorted((root / "val" / name).glob("*.png"))[number // 2]
        copy = root / "train" / name / f"copy_{kind}.jpg"
        _copy(Image.open(original), kind).save(copy, quality=40 if kind == "recompressed" else 90)
        pairs.append((original.relative_to(root).as_posix(), copy.relative_to(root).as_posix()))
    return pairs


def _shapes(tmp_path: Path, count: int) -> list[Path]:
    """Distinct small grayscale images: smooth random blots (7 x 7 noise scaled up)."""
    rng = np.random.default_rng(0)
    paths = []
    for number in range(count):
        noise = rng.uniform(0, 255, size=(7, 7)).astype(np.uint8)
        path = tmp_path / f"shape_{number}.png"
        Image.fromarray(noise).resize((SMALL, SMALL), Image.Resampling.BICUBIC).save(path)
        paths.append(path)
    return paths


def test_thumbnails_of_a_copy_match_its_original_and_not_the_others(tmp_path: Path) -> None:
    shapes = _shapes(tmp_path, 12)
    original = Image.open(shapes[0])
    copies = []
    for kind in ("halved", "recompressed", "mirrored", "cropped"):
        path = tmp_path / f"copy_{kind}.jpg"
        _copy(original, kind).save(path, quality=40 if kind == "recompressed" else 90)
        copies.append(path)
    views = thumbnails_of([*shapes, *copies])
    assert views.shape == (len(shapes) + len(copies), VIEWS, SIZE * SIZE)
    similarity = pixel_similarity(by_view(views), by_view(views))
    assert np.allclose(similarity, similarity.T, atol=1e-5)  # symmetric
    copy_rows = range(len(shapes), len(shapes) + len(copies))
    for row in copy_rows:  # each copy is nearest to its original, far above the other shapes
        assert similarity[row, 0] > 0.97
        assert similarity[row, 0] > similarity[row, 1 : len(shapes)].max() + 0.02
    signal = pixel_signal(views, threshold=0.97)
    found = set(zip(signal.pairs.first.tolist(), signal.pairs.second.tolist(), strict=True))
    distinct = {(a, b) for a, b in found if b < len(shapes)}
    assert not distinct, distinct  # no two distinct shapes are paired
    assert {(0, row) for row in copy_rows} <= found


def test_unreadable_file_has_a_blank_thumbnail(tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    assert not thumbnail_views(broken).any()


def test_audit_finds_low_resolution_copies_across_splits(
    tmp_path: Path, reference_data: Path
) -> None:
    data = tmp_path / "data"
    _small_reference(reference_data, data)
    planted = _plant_copies(data)
    before = _contents(data)
    report = tlvision.audit(data, out=tmp_path / "audit", input_size=96, device="cpu")
    assert _contents(data) == before  # not a byte, not a file name changed
    groups = report.duplicates
    first = [set(group["files"]) for group in groups[: len(planted)]]
    for pair in planted:  # every copy in one of the first groups, beside its original
        assert any(set(pair) <= group for group in first), (pair, groups[:6])
    for group in groups[: len(planted)]:
        assert group["across_splits"] and "pixels" in group["found_by"]
        assert {"files", "splits", "similarity"} <= set(group)
    calibration = report.details["calibration"]["pixels"]
    assert 0.9 < calibration["threshold"] <= 0.999


@pytest.mark.parametrize("kind", ["halved", "mirrored"])
def test_a_copy_of_a_blank_or_tiny_image_does_not_break_the_thumbnails(
    tmp_path: Path, kind: str
) -> None:
    blank = tmp_path / "blank.png"
    Image.new("L", (6, 6), 128).save(blank)
    copy = tmp_path / "copy.png"
    _copy(Image.open(blank), kind).save(copy)
    views = thumbnails_of([blank, copy])
    assert np.isfinite(views).all()
    assert np.isfinite(pixel_similarity(by_view(views), by_view(views))).all()


def test_thumbnails_are_read_back_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shapes = _shapes(tmp_path, 6)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    cache = FeatureCache(tmp_path / "cache")
    first = thumbnails_of([*shapes, broken], cache)
    assert np.array_equal(first, thumbnails_of([*shapes, broken]))  # as without a cache
    stored = list((tmp_path / "cache").rglob("*.codes"))
    assert len(stored) == 1  # one shard of the six readable images, none for the broken one
    computed: list[Path] = []

    def counted(path: Path) -> np.ndarray:
        computed.append(path)
        return thumbnail_views(path)

    monkeypatch.setattr(thumbnails, "thumbnail_views", counted)
    again = thumbnails_of([shapes[2], *shapes, broken, shapes[0]], FeatureCache(tmp_path / "cache"))
    assert computed == [broken]  # only the one that could not be stored is made again
    assert np.array_equal(again[1:-1], first)
    assert np.array_equal(again[0], first[2]) and np.array_equal(again[-1], first[0])
