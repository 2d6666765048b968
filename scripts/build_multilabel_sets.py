"""Build the multi-label acceptance sets of issue 27, labels in DATA/train.csv and DATA/val.csv.

``emoji-tags``
    Google's Noto emoji (npm ``emoji-datasource-google`` 16.0.0, the registry's tarball, SHA-256
    checked; images Apache-2.0, data MIT), each labelled with its Unicode ``category`` and the
    words of its own ``name`` in the package's ``emoji.json`` that at least MIN_TAG_COUNT base
    emoji share (FACE, HEART, HAND, ...; MAN, WOMAN, MEN, WOMEN and PERSON read as "person";
    joining words such as WITH and OF left out). Base emoji only, flattened onto white, 64x64;
    split 70/30 seeded over groups of names equal once the person words are removed, so a man
    and a woman technologist are never on both sides.
``collages``
    2x2 collages of the reference photos (hymenoptera_data): each 112-px tile is an ant photo, a
    bee photo or a plain background, labelled by what the tiles hold (ants, bees, both, or
    none). Train collages use train photos only, val collages val photos only.

Usage::

    .venv/bin/python scripts/build_multilabel_sets.py emoji-tags --out ../datasets/emoji-tags
    .venv/bin/python scripts/build_multilabel_sets.py collages --out ../datasets/collages \\
        --photos ../shared/data/hymenoptera_data
"""

from __future__ import annotations

import argparse
import io
import json
import random
import re
import shutil
import tarfile
from collections import Counter
from pathlib import Path

from build_unseen_sets import (  # the sibling builder's pinned package
    EMOJI_CLASSES,
    EMOJI_GENDER_WORDS,
    EMOJI_IMAGES,
    EMOJI_PACKAGE,
    EMOJI_SHA256,
    download_npm,
    flattened,
)
from build_validation_sets import checked_package
from PIL import Image

SEED = 0
VAL_SHARE = 0.3
MIN_TAG_COUNT = 25
JOINING_WORDS = {"WITH", "AND", "OF", "THE", "A", "IN", "ON", "FOR", "TO", "OR", "BUTTON"}
TILE = 112
COLLAGES = {"train": 400, "val": 200}
TILE_CHOICES = ("ants", "bees", None, None)  # half the tiles background


def prepare(out: Path) -> None:
    """Remove what a previous build wrote (images/, the tables, SOURCE.md) and nothing else."""
    out.mkdir(parents=True, exist_ok=True)
    if (out / "images").exists():
        shutil.rmtree(out / "images")
    for name in ("train.csv", "val.csv", "SOURCE.md"):
        (out / name).unlink(missing_ok=True)
    (out / "images").mkdir()


def write_tables(
    out: Path, rows: dict[str, list[tuple[str, list[str]]]]
) -> dict[str, Counter[str]]:
    counts = {}
    for phase, phase_rows in rows.items():
        lines = ["file,labels"] + [f"{name},{';'.join(sorted(tags))}" for name, tags in phase_rows]
        (out / f"{phase}.csv").write_text("\n".join(lines) + "\n")
        counts[phase] = Counter(tag for _, tags in phase_rows for tag in tags)
    return counts


def name_tags(name: str) -> set[str]:
    words = re.sub(r"[^A-Z0-9 ]", " ", name.upper()).split()
    tags = {"person" if EMOJI_GENDER_WORDS.fullmatch(w) else w.lower() for w in words}
    return {tag for tag in tags if tag.upper() not in JOINING_WORDS and not tag.isdigit()}


def build_emoji_tags(out: Path, package: Path | None) -> str:
    content = checked_package(package, download_npm, EMOJI_SHA256)
    with tarfile.open(fileobj=io.BytesIO(content), mode="r:gz") as archive:
        files = {m.name: f.read() for m in archive if (f := archive.extractfile(m)) is not None}
    entries = [
        entry
        for entry in sorted(json.loads(files["package/emoji.json"]), key=lambda e: e["sort_order"])
        if entry["category"] in EMOJI_CLASSES and entry["has_img_google"]
    ]
    word_counts = Counter(tag for entry in entries for tag in name_tags(entry["name"]))
    kept_words = {word for word, count in word_counts.items() if count >= MIN_TAG_COUNT}
    groups = sorted({EMOJI_GENDER_WORDS.sub("", e["name"].upper()).strip() for e in entries})
    random.Random(SEED).shuffle(groups)
    val_groups = set(groups[: round(len(groups) * VAL_SHARE)])
    prepare(out)
    rows: dict[str, list[tuple[str, list[str]]]] = {"train": [], "val": []}
    for entry in entries:
        stem = f"{entry['sort_order']:04d}_{entry['image'].removesuffix('.png')}"
        flattened(files[EMOJI_IMAGES + entry["image"]]).save(out / "images" / f"{stem}.png")
        tags = [EMOJI_CLASSES[entry["category"]], *(name_tags(entry["name"]) & kept_words)]
        group = EMOJI_GENDER_WORDS.sub("", entry["name"].upper()).strip()
        rows["val" if group in val_groups else "train"].append((f"images/{stem}.png", tags))
    counts = write_tables(out, rows)
    return (
        "# emoji-tags: Noto emoji with several tags each (multi-label, RGB 64x64)\n\n"
        f"Source: npm package `{EMOJI_PACKAGE[0]}` version `{EMOJI_PACKAGE[1]}` (the registry's "
        f"tarball, SHA-256 `{EMOJI_SHA256}`), PNGs under `{EMOJI_IMAGES}`, labels from "
        "`package/emoji.json`: the `category` (as a folder-style name) and every word of the "
        f"emoji's `name` that at least {MIN_TAG_COUNT} base emoji share (person words as "
        f"`person`; {', '.join(sorted(JOINING_WORDS))} left out). Licence: images Apache-2.0, "
        "data MIT (the package's README). Split: 70/30, seeded, over groups of names equal once "
        "MAN, WOMAN, PERSON, MEN, WOMEN are removed.\n\n"
        "Built by `scripts/build_multilabel_sets.py emoji-tags` of the tlvision repository.\n\n"
        + _counts_text(rows, counts)
    )


def _counts_text(
    rows: dict[str, list[tuple[str, list[str]]]], counts: dict[str, Counter[str]]
) -> str:
    lines = ["Positive images per label as built:", "", "```"]
    for phase, phase_counts in counts.items():
        listed = ", ".join(f"{tag} {count}" for tag, count in sorted(phase_counts.items()))
        mean = sum(len(tags) for _, tags in rows[phase]) / max(1, len(rows[phase]))
        lines.append(f"{phase}: {len(rows[phase])} images ({mean:.2f} labels each): {listed}")
    return "\n".join([*lines, "```", ""])


def _background(rng: random.Random) -> Image.Image:
    shade = tuple(rng.randrange(90, 200) for _ in range(3))
    return Image.new("RGB", (TILE, TILE), shade)  # type: ignore[arg-type]


def _tile(path: Path) -> Image.Image:
    with Image.open(path) as source:
        image = source.convert("RGB")
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.crop((left, top, left + side, top + side)).resize((TILE, TILE))


def build_collages(out: Path, photos: Path) -> str:
    rng = random.Random(SEED)
    prepare(out)
    rows: dict[str, list[tuple[str, list[str]]]] = {"train": [], "val": []}
    for phase, count in COLLAGES.items():
        pools = {kind: sorted((photos / phase / kind).glob("*.jpg")) for kind in ("ants", "bees")}
        for index in range(count):
            collage = Image.new("RGB", (2 * TILE, 2 * TILE))
            held = set()
            for position in range(4):
                kind = rng.choice(TILE_CHOICES)
                tile = _background(rng) if kind is None else _tile(rng.choice(pools[kind]))
                held |= {kind} if kind else set()
                collage.paste(tile, ((position % 2) * TILE, (position // 2) * TILE))
            name = f"images/{phase}_{index:04d}.png"
            collage.save(out / name)
            rows[phase].append((name, sorted(held)))
    counts = write_tables(out, rows)
    return (
        "# collages: 2x2 collages of the reference photos (multi-label, RGB 224x224)\n\n"
        f"Source: the reference set {photos.name} (ants and bees photos); each {TILE}-px tile is "
        "a centre-cropped ant photo, bee photo or a plain random-grey background (half the "
        "tiles), drawn seeded (seed 0); the labels are the kinds the tiles hold. Train collages "
        "use train photos only, val collages val photos only.\n\n"
        "Built by `scripts/build_multilabel_sets.py collages` of the tlvision repository.\n\n"
        + _counts_text(rows, counts)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=("emoji-tags", "collages"))
    parser.add_argument("--out", type=Path, required=True, help="dataset root to (re)write")
    parser.add_argument("--package", type=Path, help="emoji-tags: an already downloaded .tgz")
    parser.add_argument("--photos", type=Path, help="collages: the reference set's root")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    if args.name == "collages":
        if args.photos is None:
            parser.error("collages needs --photos (the reference set)")
        source = build_collages(out, args.photos.resolve())
    else:
        source = build_emoji_tags(out, args.package)
    (out / "SOURCE.md").write_text(source)
    print(source)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
