"""Rebuild the embedded demo dataset in ``src/tlvision/demo_data/`` from a Debian package.

The demo dataset is 78 real photographs in three classes (``fish``, ``monument``, ``tool``),
17 for training and 9 for validation in each class. They come from the ``categorization``
activity of the GCompris educational suite, as shipped in Debian 12's ``gcompris-qt-data``
package, version 3.1-2 (all architectures). Every photograph used is either in the public
domain or under CC0-1.0, as recorded per file in the README files that the package ships next
to the images; this script copies those credits into ``demo_data/ATTRIBUTION.md``.

How to run, from the repository root (any machine with Debian's package archive configured):

    apt-get update
    apt-get download gcompris-qt-data=3.1-2
    python scripts/build_demo_data.py --deb gcompris-qt-data_3.1-2_all.deb

If the package is already unpacked (``dpkg -x gcompris-qt-data_3.1-2_all.deb ROOT``) or
installed, point the script at the resource file instead:

    python scripts/build_demo_data.py --rcc ROOT/usr/share/gcompris-qt/rcc/categorization.rcc

The images live inside a Qt binary resource file (``categorization.rcc``), which this script
reads directly, so no Qt installation is needed: only Pillow (with WebP support, as in the
Pillow wheels). The script checks the resource file's SHA-256 before using it, replaces every
JPEG under ``train/`` and ``val/`` of the output folder, and rewrites ``ATTRIBUTION.md``. The
selection, the train/val assignment and the encoding are fixed, so rerunning it with the same
Pillow version reproduces the committed files byte for byte.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import struct
import sys
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

PACKAGE_NAME = "gcompris-qt-data"
PACKAGE_VERSION = "3.1-2"
PACKAGE_URL = "https://packages.debian.org/bookworm/gcompris-qt-data"
RCC_PATH_IN_PACKAGE = "usr/share/gcompris-qt/rcc/categorization.rcc"
RCC_SHA256 = "984852ac8377a224c94e26a5bc8a13d0a589612030902c6d76c14509fef3c984"
IMAGES_PREFIX_IN_RCC = "/gcompris/src/activities/categorization/resource/images"

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT_DIRECTORY = REPOSITORY_ROOT / "src" / "tlvision" / "demo_data"
MAXIMUM_SIDE_PIXELS = 320
JPEG_QUALITY = 85


@dataclass(frozen=True)
class DemoClass:
    """One class of the demo dataset: where its photographs are and how they are split."""

    name: str
    source_directory: str
    train_stems: tuple[str, ...]
    val_stems: tuple[str, ...]


# Each class has 26 photographs: in natural order of file name, every third one starting with
# the second goes to validation. Left out on purpose: fish14 and fish26 (second photographs of
# species already present, by the same photographer), mountRushmore (carved human faces),
# screwDriver (no credit in its folder's README), and the tools that are not hand tools or would
# unbalance the classes (measuring tapes 2, 3, 5 and 6, the multimeters, the nail cutter, the
# sickle, the spray bottle and the tweezers).
# fmt: off
DEMO_CLASSES: tuple[DemoClass, ...] = (
    DemoClass(
        name="fish",
        source_directory="fishes",
        train_stems=(
            "fish1", "fish3", "fish4", "fish6", "fish7", "fish9", "fish10", "fish12", "fish13",
            "fish16", "fish17", "fish19", "fish20", "fish22", "fish23", "fish25", "fish27",
        ),
        val_stems=(
            "fish2", "fish5", "fish8", "fish11", "fish15", "fish18", "fish21", "fish24", "fish28",
        ),
    ),
    DemoClass(
        name="monument",
        source_directory="monuments",
        train_stems=(
            "arcDeTriomphe", "brandenburgGate", "burj", "christTheRedeemer", "colosseum",
            "empireState", "greatPyramid", "IndiaGate", "jucheTower", "leaningTowerOfPisa",
            "leMusee", "monument2", "monument3", "parthenon", "statueOfLiberty", "usCapitol",
            "victoriaMemorial",
        ),
        val_stems=(
            "bayterek", "cathedral", "eiffelTower", "greatWall", "kutubMinar", "monument1",
            "operaHouse", "tajMahal", "zimniPalace",
        ),
    ),
    DemoClass(
        name="tool",
        source_directory="tools",
        train_stems=(
            "cuttingTool", "hammer2", "hammer3", "hammer5", "hammer6", "hammer8", "hammer9",
            "measuringTape4", "plier1", "plier3", "plier4", "scissors2", "scissors3",
            "screwDriver1", "screwDriver2", "sideCutter1", "wrench",
        ),
        val_stems=(
            "hammer1", "hammer4", "hammer7", "measuringTape1", "plier2", "scissors1",
            "scissors4", "screwDriver3", "wrench1",
        ),
    ),
)
# fmt: on

LICENSE_LINKS = {
    "CC0-1.0": "CC0 1.0 Universal, https://creativecommons.org/publicdomain/zero/1.0/",
    "Public Domain": (
        "in the public domain, on the grounds given on the page it was published at "
        "(see https://creativecommons.org/publicdomain/mark/1.0/)"
    ),
}


@dataclass(frozen=True)
class Credit:
    """Who made one source photograph, where it was published, and under which licence."""

    author: str
    source_url: str
    license_name: str


def data_tar_of_deb(content: bytes, source: str) -> bytes:
    """Return the data.tar.* member of a Debian package (an ar archive), read in memory."""
    if not content.startswith(b"!<arch>\n"):
        raise SystemExit(f"{source} is not a Debian package (no ar archive header)")
    offset = 8
    while offset + 60 <= len(content):
        header = content[offset : offset + 60]
        entry_name = header[:16].decode("ascii").strip().rstrip("/")
        entry_size = int(header[48:58].decode("ascii").strip())
        entry_start = offset + 60
        if entry_name.startswith("data.tar"):
            return content[entry_start : entry_start + entry_size]
        offset = entry_start + entry_size + (entry_size % 2)
    raise SystemExit(f"{source} has no data.tar member")


def read_member_of_deb(deb_path: Path, member_path: str) -> bytes:
    """Return one file of a Debian package's data archive, read with the standard library."""
    archive_bytes = data_tar_of_deb(deb_path.read_bytes(), str(deb_path))
    with tarfile.open(fileobj=io.BytesIO(archive_bytes), mode="r:*") as archive:
        for member in archive.getmembers():
            if member.name.removeprefix("./") == member_path:
                extracted = archive.extractfile(member)
                if extracted is not None:
                    return extracted.read()
                break
    raise SystemExit(f"{member_path} not found in {deb_path}")


def read_qt_resource_file(content: bytes) -> dict[str, bytes]:
    """Return every file of a Qt binary resource (.rcc) file, keyed by its resource path."""
    if content[:4] != b"qres":
        raise SystemExit("not a Qt binary resource file (no 'qres' header)")
    version, tree_offset, data_offset, names_offset = struct.unpack(">IIII", content[4:20])
    node_size = 14 if version == 1 else 22

    def name_at(name_offset: int) -> str:
        start = names_offset + name_offset
        (character_count,) = struct.unpack(">H", content[start : start + 2])
        return content[start + 6 : start + 6 + 2 * character_count].decode("utf-16-be")

    files: dict[str, bytes] = {}
    pending: list[tuple[int, str]] = [(0, "")]
    while pending:
        node_index, parent_path = pending.pop()
        node_start = tree_offset + node_index * node_size
        name_offset, flags = struct.unpack(">IH", content[node_start : node_start + 6])
        node_path = f"{parent_path}/{name_at(name_offset)}" if node_index else ""
        if flags & 0x2:  # directory
            child_count, first_child = struct.unpack(
                ">II", content[node_start + 6 : node_start + 14]
            )
            pending.extend(
                (child, node_path) for child in range(first_child, first_child + child_count)
            )
            continue
        (blob_offset,) = struct.unpack(">I", content[node_start + 10 : node_start + 14])
        blob_start = data_offset + blob_offset
        (blob_size,) = struct.unpack(">I", content[blob_start : blob_start + 4])
        blob = content[blob_start + 4 : blob_start + 4 + blob_size]
        if flags & 0x1:  # zlib, after a four-byte uncompressed length
            blob = zlib.decompress(blob[4:])
        elif flags & 0x4:
            raise SystemExit(f"{node_path} is zstd-compressed, which this script does not read")
        files[node_path] = blob
    return files


def parse_credits(readme_text: str) -> dict[str, Credit]:
    """Parse a GCompris image README (blocks of Copyright/Source/License/Files) by file name."""
    credits: dict[str, Credit] = {}
    for block in readme_text.strip().split("\n\n"):
        fields: dict[str, str] = {}
        file_names: list[str] = []
        in_file_list = False
        for line in block.splitlines():
            stripped = line.strip()
            if not stripped:
                continue
            if in_file_list:
                file_names.append(stripped)
            elif stripped == "Files:":
                in_file_list = True
            else:
                key, _, value = stripped.partition(":")
                fields[key.strip()] = value.strip()
        credit = Credit(
            author=fields["Copyright"],
            source_url=fields["Source"],
            license_name=fields["License"],
        )
        for file_name in file_names:
            credits[file_name] = credit
    return credits


def convert_to_jpeg(webp_bytes: bytes) -> bytes:
    """Decode a source image, shrink it to MAXIMUM_SIDE_PIXELS if larger, and encode as JPEG."""
    with Image.open(io.BytesIO(webp_bytes)) as source:
        image = source.convert("RGB")
    longest_side = max(image.size)
    if longest_side > MAXIMUM_SIDE_PIXELS:
        scale = MAXIMUM_SIDE_PIXELS / longest_side
        new_size = (round(image.width * scale), round(image.height * scale))
        image = image.resize(new_size, Image.Resampling.LANCZOS)
    output = io.BytesIO()
    image.save(output, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    return output.getvalue()


def markdown_escape(text: str) -> str:
    """Escape the characters that would break a Markdown table cell."""
    return text.replace("|", "\\|")


def build_attribution(rows: list[tuple[str, str, Credit]]) -> str:
    """Return the text of ATTRIBUTION.md for (dataset file, original file, credit) rows."""
    license_lines = "\n".join(f"- {name}: {link}" for name, link in sorted(LICENSE_LINKS.items()))
    table_lines = "\n".join(
        f"| `{dataset_file}` | `{original_file}` | {markdown_escape(credit.author)} "
        f"| {credit.license_name} | {credit.source_url} |"
        for dataset_file, original_file, credit in rows
    )
    return f"""# Attribution for the demo dataset

Every image in this folder is a photograph taken from the Debian package
[`{PACKAGE_NAME}`]({PACKAGE_URL}) version {PACKAGE_VERSION}
(GCompris, the educational software suite by KDE), file
`/{RCC_PATH_IN_PACKAGE}`, a Qt resource file.
The original path of each image below is its path inside that resource file, relative to
`{IMAGES_PREFIX_IN_RCC}/`.
Author, licence and original publication come from the README file that GCompris ships
in the same folder as each image (the package as a whole is under GPL-3+; these photographs
carry the licences given here).

All {len(rows)} images are in the public domain or dedicated to it under CC0 1.0:

{license_lines}

The images were converted from WebP to JPEG (quality {JPEG_QUALITY}, longest side at most
{MAXIMUM_SIDE_PIXELS} pixels) by `scripts/build_demo_data.py`, which rebuilds this folder and
this file; see that script's docstring for how to run it.

| File | Original path | Author | Licence | Published at |
| --- | --- | --- | --- | --- |
{table_lines}
"""


def build(rcc_content: bytes, output_directory: Path) -> None:
    """Write the demo images and ATTRIBUTION.md into output_directory."""
    digest = hashlib.sha256(rcc_content).hexdigest()
    if digest != RCC_SHA256:
        raise SystemExit(
            f"categorization.rcc has SHA-256 {digest}, expected {RCC_SHA256}: "
            f"use {PACKAGE_NAME} version {PACKAGE_VERSION}"
        )
    resources = read_qt_resource_file(rcc_content)

    for split in ("train", "val"):
        for stale_file in sorted((output_directory / split).glob("*/*.jpg")):
            stale_file.unlink()

    rows: list[tuple[str, str, Credit]] = []
    for demo_class in DEMO_CLASSES:
        readme_path = f"{IMAGES_PREFIX_IN_RCC}/{demo_class.source_directory}/README"
        credits = parse_credits(resources[readme_path].decode("utf-8"))
        for split, stems in (("train", demo_class.train_stems), ("val", demo_class.val_stems)):
            class_directory = output_directory / split / demo_class.name
            class_directory.mkdir(parents=True, exist_ok=True)
            for stem in stems:
                source_name = f"{stem}.webp"
                if source_name not in credits:
                    raise SystemExit(f"{readme_path} has no credit for {source_name}")
                source_path = f"{IMAGES_PREFIX_IN_RCC}/{demo_class.source_directory}/{source_name}"
                target_path = class_directory / f"{stem}.jpg"
                target_path.write_bytes(convert_to_jpeg(resources[source_path]))
                rows.append(
                    (
                        f"{split}/{demo_class.name}/{stem}.jpg",
                        f"{demo_class.source_directory}/{source_name}",
                        credits[source_name],
                    )
                )
    unknown_licenses = {credit.license_name for _, _, credit in rows} - set(LICENSE_LINKS)
    if unknown_licenses:
        raise SystemExit(f"images under unexpected licences: {sorted(unknown_licenses)}")
    (output_directory / "ATTRIBUTION.md").write_text(build_attribution(rows), encoding="utf-8")

    total_bytes = sum(path.stat().st_size for path in output_directory.rglob("*") if path.is_file())
    print(f"wrote {len(rows)} images to {output_directory} ({total_bytes / 1024:.0f} KiB in all)")


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and build the dataset."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--deb",
        type=Path,
        help=f"the downloaded {PACKAGE_NAME}_{PACKAGE_VERSION}_all.deb",
    )
    source.add_argument(
        "--rcc",
        type=Path,
        help=f"categorization.rcc from an unpacked or installed {PACKAGE_NAME}",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT_DIRECTORY,
        help="folder to write train/, val/ and ATTRIBUTION.md into (default: %(default)s)",
    )
    arguments = parser.parse_args(argv)
    if arguments.deb is not None:
        rcc_content = read_member_of_deb(arguments.deb, RCC_PATH_IN_PACKAGE)
    else:
        rcc_content = arguments.rcc.read_bytes()
    build(rcc_content, arguments.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
