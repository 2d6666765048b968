"""Build three more validation datasets for the advisor, written after its rules were frozen.

Same layout, split and checks as ``build_validation_sets.py`` (whose helpers this reuses):
``DIR/{train,val}/<class>/*.png`` (stratified, seeded, 30 % of each class to val) and a
``SOURCE.md`` naming the package, its SHA-256 and licence. A rerun with the same package and
library versions writes the same files.

``glyphs``
    Typeface recognition: letters and digits (A-Z, a-z, 0-9) rendered from the URW base 35
    fonts (Debian 12 ``fonts-urw-base35`` 20200910-7, AGPL-3 with a font exception), 8 classes by
    family (C059, NimbusMonoPS, NimbusRoman, NimbusSans, NimbusSansNarrow, P052, URWBookman,
    URWGothic), each in its 4 styles: black on white, 8-bit grayscale, 32x32.
``textures``
    Surface textures of the game OpenArena by texture set (Debian 12 ``openarena-081-textures``
    0.8.5split-14, GPL-2+), 8 sets, RGB, centre-cropped square and scaled to 96x96.
``stamps``
    Tux Paint's stamps by category (Debian 12 ``tuxpaint-stamps-default`` 2022.06.04-1,
    GPL-2 per its copyright file), 8 categories, flattened onto white,
    fitted into 128x128.

    .venv/bin/python scripts/build_fresh_sets.py glyphs --out ../datasets/glyphs
"""

from __future__ import annotations

import io
import string
import sys
import tempfile
import zipfile
from collections import defaultdict
from pathlib import Path

from build_validation_sets import (
    checked_package,
    deb_members,
    download_deb,
    prepare_output,
    run_builder,
    unique_capped,
    write_items,
)
from PIL import Image, ImageDraw, ImageFont

GLYPHS_PACKAGE = ("fonts-urw-base35", "20200910-7")
GLYPHS_SHA256 = "93e4997c99c4c31ea88c5d37e2259af0a0c826b9358931d5a69f794f7f0c73ac"
GLYPHS_ROOT = "usr/share/fonts/opentype/urw-base35/"
GLYPHS_FAMILIES = (
    "C059", "NimbusMonoPS", "NimbusRoman", "NimbusSans", "NimbusSansNarrow", "P052",
    "URWBookman", "URWGothic",
)  # fmt: skip
GLYPHS_CHARACTERS = string.ascii_letters + string.digits
GLYPH_PIXELS = 32
GLYPH_POINTS = 24
TEXTURES_PACKAGE = ("openarena-081-textures", "0.8.5split-14")
TEXTURES_SHA256 = "72bf05abd5286a1523b56ca04e25bceb775813d747f92ecd20749d512361a81f"
TEXTURES_PK3 = "usr/share/games/openarena/baseoa/pak4-textures.pk3"
TEXTURES_CLASSES = (
    "acc_dm3", "base_floor", "base_light", "base_wall", "clown", "gothic_block", "gothic_trim",
    "oquartz",
)  # fmt: skip
TEXTURE_PIXELS = 96
STAMPS_PACKAGE = ("tuxpaint-stamps-default", "2022.06.04-1")
STAMPS_SHA256 = "6db6c1bfc870a47f1499d6203b083522eacb57c5f9c87d468f2e92eb6d9d5f34"
STAMPS_ROOT = "usr/share/tuxpaint/stamps/"
STAMPS_CLASSES = (
    "animals", "food", "household", "plants", "seasonal", "symbols", "town", "vehicles",
)  # fmt: skip
STAMP_CANVAS, STAMP_CONTENT = 128, 112


def package(name_version: tuple[str, str], given: Path | None, sha256: str) -> bytes:
    name, version = name_version
    return checked_package(given, lambda d: download_deb(d, name, version), sha256)


def glyph(font: ImageFont.FreeTypeFont, character: str) -> Image.Image:
    """The character centred on a white square, by its ink's bounding box."""
    image = Image.new("L", (GLYPH_PIXELS, GLYPH_PIXELS), 255)
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = draw.textbbox((0, 0), character, font=font)
    position = (
        (GLYPH_PIXELS - (right - left)) / 2 - left,
        (GLYPH_PIXELS - (bottom - top)) / 2 - top,
    )
    draw.text(position, character, font=font, fill=0)
    return image


def build_glyphs(out: Path, given: Path | None) -> str:
    content = package(GLYPHS_PACKAGE, given, GLYPHS_SHA256)
    fonts = deb_members(content, GLYPHS_PACKAGE[0], GLYPHS_ROOT)
    items = []
    with tempfile.TemporaryDirectory(prefix="tlvision-fonts-") as temporary:
        for family in GLYPHS_FAMILIES:
            styles = sorted(name for name in fonts if name.startswith(f"{family}-"))
            for style in styles:
                path = Path(temporary) / style
                path.write_bytes(fonts[style])  # FreeType reads fonts from files
                font = ImageFont.truetype(str(path), GLYPH_POINTS)
                stem = style.removesuffix(".otf")
                for character in GLYPHS_CHARACTERS:
                    code = f"{'U' if character.isupper() else 'l' if character.islower() else 'd'}"
                    items.append((family, f"{stem}_{code}{character}", glyph(font, character)))
    prepare_output(out)
    write_items(out, items)
    return (
        "# glyphs: typefaces (grayscale, 32x32)\n\n"
        f"Source: Debian 12 package `{GLYPHS_PACKAGE[0]}` version `{GLYPHS_PACKAGE[1]}` "
        f"(SHA-256 `{GLYPHS_SHA256}`), OpenType fonts under `/{GLYPHS_ROOT}`. Licence: AGPL-3 "
        "with a font exception (the package's copyright file).\n\n"
        f"Classes: the font family ({', '.join(GLYPHS_FAMILIES)}), each in all its styles. "
        f"Processing: every character of A-Z, a-z, 0-9 rendered at {GLYPH_POINTS} pt with "
        f"Pillow's FreeType, black on white, centred by its ink's box on a {GLYPH_PIXELS}x"
        f"{GLYPH_PIXELS} 8-bit grayscale canvas (file `STYLE_Kc`: style, U/l/d, character). "
        "Split: stratified, seeded (seed 0), 30 % of each class to val.\n\n"
        "Built by `scripts/build_fresh_sets.py glyphs` of the tlvision repository.\n"
    )


def square(image: Image.Image, side: int) -> Image.Image:
    """The centred square crop of `image`, scaled to side x side."""
    short = min(image.size)
    left, top = (image.width - short) // 2, (image.height - short) // 2
    return image.crop((left, top, left + short, top + short)).resize((side, side), Image.LANCZOS)


def build_textures(out: Path, given: Path | None) -> str:
    content = package(TEXTURES_PACKAGE, given, TEXTURES_SHA256)
    pk3 = deb_members(content, TEXTURES_PACKAGE[0], TEXTURES_PK3)[""]
    candidates: dict[str, list[tuple[str, Image.Image]]] = defaultdict(list)
    with zipfile.ZipFile(io.BytesIO(pk3)) as archive:
        for name in sorted(archive.namelist()):
            parts = name.split("/")
            if len(parts) != 3 or parts[0] != "textures" or parts[1] not in TEXTURES_CLASSES:
                continue
            if not parts[2].lower().endswith((".jpg", ".tga")):
                continue
            with Image.open(io.BytesIO(archive.read(name))) as source:
                flat = Image.new("RGBA", source.size, (0, 0, 0, 255))
                flat.alpha_composite(source.convert("RGBA"))
            stem = parts[2].rsplit(".", 1)[0] + "_" + parts[2].rsplit(".", 1)[1].lower()
            candidates[parts[1]].append((stem, square(flat.convert("RGB"), TEXTURE_PIXELS)))
    prepare_output(out)
    write_items(out, unique_capped(candidates))
    return (
        "# textures: OpenArena surface textures by texture set (RGB, 96x96)\n\n"
        f"Source: Debian 12 package `{TEXTURES_PACKAGE[0]}` version `{TEXTURES_PACKAGE[1]}` "
        f"(SHA-256 `{TEXTURES_SHA256}`), JPEG and TGA files under `textures/<set>/` in "
        f"`/{TEXTURES_PK3}`. Licence: GPL-2+ (the package's copyright file).\n\n"
        f"Classes: the texture set ({', '.join(TEXTURES_CLASSES)}: the eight largest sets of "
        "surfaces; skies and effects left out). Processing: composited onto black, the centred "
        f"square cut and scaled to {TEXTURE_PIXELS}x{TEXTURE_PIXELS} (Lanczos); pixel-identical "
        "images left out; at most 400 per class (seeded sample). Split: stratified, seeded "
        "(seed 0), 30 % of each class to val.\n\n"
        "Built by `scripts/build_fresh_sets.py textures` of the tlvision repository.\n"
    )


def fitted(data: bytes) -> Image.Image:
    """A stamp flattened onto white, scaled to fit STAMP_CONTENT and centred on the canvas."""
    with Image.open(io.BytesIO(data)) as source:
        flat = Image.new("RGBA", source.size, (255, 255, 255, 255))
        flat.alpha_composite(source.convert("RGBA"))
    image = flat.convert("RGB")
    image.thumbnail((STAMP_CONTENT, STAMP_CONTENT), Image.LANCZOS)
    canvas = Image.new("RGB", (STAMP_CANVAS, STAMP_CANVAS), (255, 255, 255))
    canvas.paste(image, ((STAMP_CANVAS - image.width) // 2, (STAMP_CANVAS - image.height) // 2))
    return canvas


def build_stamps(out: Path, given: Path | None) -> str:
    content = package(STAMPS_PACKAGE, given, STAMPS_SHA256)
    candidates: dict[str, list[tuple[str, Image.Image]]] = defaultdict(list)
    for relative, data in sorted(deb_members(content, STAMPS_PACKAGE[0], STAMPS_ROOT).items()):
        label = relative.split("/")[0]
        if label in STAMPS_CLASSES and relative.endswith(".png"):
            stem = relative.removesuffix(".png").replace("/", "_")
            candidates[label].append((stem, fitted(data)))
    prepare_output(out)
    write_items(out, unique_capped(candidates))
    return (
        "# stamps: Tux Paint stamps by category (RGB, 128x128)\n\n"
        f"Source: Debian 12 package `{STAMPS_PACKAGE[0]}` version `{STAMPS_PACKAGE[1]}` "
        f"(SHA-256 `{STAMPS_SHA256}`), PNGs under `/{STAMPS_ROOT}<category>/`. Licence: GPL-2 "
        "(the package's copyright file).\n\n"
        f"Classes: the top-level category ({', '.join(STAMPS_CLASSES)}: the eight with the most "
        "PNG stamps). Processing: flattened onto white, scaled to fit "
        f"{STAMP_CONTENT}x{STAMP_CONTENT} and centred on a {STAMP_CANVAS}x{STAMP_CANVAS} white "
        "canvas; pixel-identical images left out; at most 400 per class (seeded sample). Split: "
        "stratified, seeded (seed 0), 30 % of each class to val.\n\n"
        "Built by `scripts/build_fresh_sets.py stamps` of the tlvision repository.\n"
    )


def main(argv: list[str] | None = None) -> int:
    builders = {"glyphs": build_glyphs, "textures": build_textures, "stamps": build_stamps}
    return run_builder(__doc__, builders, argv)


if __name__ == "__main__":
    sys.exit(main())
