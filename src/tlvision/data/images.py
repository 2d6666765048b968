"""Robust image loading: one RGB image per file, or a BadImageError that says what is wrong.

Used by training (to decode samples) and by ``tlvision check`` (to diagnose a dataset). Every
file is read into memory once and decoded fully, so a truncated file fails here rather than
half-way through an epoch, and the file handle is closed before the image is returned.

Odd-but-valid files are converted rather than rejected, and each conversion is reported as a
note: CMYK, palette, grayscale and 16-bit images become 8-bit RGB, transparent images are
composited on white (dropping alpha would turn transparent regions into arbitrary colours), and
EXIF orientation is applied so that a photo taken sideways is seen the way its owner sees it.

Nothing here mutates PIL's global settings: truncated files stay errors (PIL's
``ImageFile.LOAD_TRUNCATED_IMAGES`` is never set), and decompression bombs are refused on the size
declared in the header, before any pixel is decoded. The only process-wide state touched is the
warnings filter, inside ``warnings.catch_warnings`` (which is how PIL reports a moderately large
image); that is safe in DataLoader worker processes and in a single thread.
"""

from __future__ import annotations

import io
import os
import re
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tlvision.errors import UserError

MAX_ASPECT_RATIO = 64  # long side / short side; see _refuse_bomb
MAX_IMAGE_PIXELS = 89_478_485
"""Largest image (width * height) that is decoded: PIL's default decompression-bomb limit."""

EXIF_ORIENTATION_TAG = 0x0112

_PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error)
_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_WHITE = (255, 255, 255)


BAD_IMAGE_KINDS = (
    "zero-byte",
    "truncated",
    "not-an-image",
    "decompression-bomb",
    "too-elongated",
    "corrupt",
    "unreadable",
    "broken-link",
)


class BadImageError(Exception):
    """A file that cannot be used as an image.

    ``reason`` is short and human-readable ("zero-byte file", "truncated image data");
    ``kind`` is one of BAD_IMAGE_KINDS, for code that groups or counts failures.
    """

    def __init__(self, path: Path | str, reason: str, kind: str = "corrupt") -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason
        self.kind = kind

    def __reduce__(self) -> tuple[type[BadImageError], tuple[Path, str, str]]:
        # Picklable with its attributes, so it survives the trip out of a DataLoader worker.
        return (type(self), (self.path, self.reason, self.kind))


def open_image_rgb(path: Path) -> tuple[Image.Image, list[str]]:
    """Decode ``path`` fully into an 8-bit RGB image; also return notes on conversions done.

    Raises BadImageError for zero-byte, truncated, corrupt or unidentifiable files and for
    decompression bombs (more than MAX_IMAGE_PIXELS pixels, refused before decoding).
    """
    path = Path(path)
    return decode_image_rgb(read_image_bytes(path), path)


def read_image_bytes(path: Path) -> bytes:
    """The file's bytes, or a BadImageError: "broken-link" for a symbolic link whose target is
    gone (named, so the user knows which file to restore), "unreadable" for other OS errors."""
    try:
        return path.read_bytes()
    except OSError as error:
        if path.is_symlink() and not path.exists():
            reason = f"broken symbolic link: its target {os.readlink(path)} does not exist"
            raise BadImageError(path, reason, "broken-link") from error
        reason = f"cannot read file ({error.strerror or error})"
        raise BadImageError(path, reason, "unreadable") from error


def load_rgb_image(path: Path) -> Image.Image:
    """Like open_image_rgb, without the notes."""
    return open_image_rgb(path)[0]


def decode_image_rgb(data: bytes, path: Path | str = "<bytes>") -> tuple[Image.Image, list[str]]:
    """open_image_rgb for bytes already in memory; ``path`` only names the file in errors."""
    path = Path(path)
    if not data:
        raise BadImageError(path, "zero-byte file", "zero-byte")
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        # Other warnings (e.g. "Corrupt EXIF data") are recorded and become notes; a
        # moderately large image, which PIL only warns about, is refused like a bigger one.
        warnings.simplefilter("always")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            opened = Image.open(io.BytesIO(data))
            _refuse_bomb(path, opened.size)
            opened.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise BadImageError(path, _bomb_reason(str(error)), "decompression-bomb") from error
        except UnidentifiedImageError as error:
            raise BadImageError(
                path, "not an image (cannot identify image file)", "not-an-image"
            ) from error
        except _PIL_ERRORS as error:
            raise BadImageError(path, *_decode_reason(error)) from error
        image = _apply_exif_orientation(opened, notes)
        try:
            rgb = _to_rgb(image, notes)
        except _PIL_ERRORS as error:
            reason = f"cannot convert mode {image.mode} to RGB ({error})"
            raise BadImageError(path, reason, "corrupt") from error
    for warning in caught:
        if issubclass(warning.category, UserWarning):  # PIL's "Corrupt EXIF data" and kin
            notes.append(f"decoder warning: {warning.message}")
        else:  # deprecations and the like are for developers: pass them on unchanged
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )
    return rgb, notes


def rgb_from_pil(image: Image.Image) -> Image.Image:
    """An image already in memory, made 8-bit RGB as a decoded file would be (EXIF orientation,
    the same mode conversions), so a PIL image and its file get the same prediction."""
    return _to_rgb(_apply_exif_orientation(image, []), [])


def rgb_from_array(pixels: np.ndarray, name: str = "array") -> Image.Image:
    """Pixels as height x width (grayscale) or height x width x 1, 3 or 4 (RGB, RGBA), made an
    8-bit RGB image: uint8 as they are, other types by their range (floats in 0..1, 16-bit).

    Any other shape is the caller's mistake, not a bad file: a UserError naming ``name``.
    """
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] not in (3, 4)):
        raise UserError(
            f"{name}: pixels of shape {tuple(pixels.shape)}; pass height x width or height x "
            "width x 3 (RGB) or 4 (RGBA), channels last"
        )
    if pixels.dtype != np.uint8:
        pixels = _scale_to_uint8(pixels)
    return _to_rgb(Image.fromarray(np.ascontiguousarray(pixels)), [])


def _refuse_bomb(path: Path, size: tuple[int, int]) -> None:
    """Our own header checks, so a bomb is refused even if PIL's limit was raised or disabled,
    and so is an image that every resize to a short side (as training and prediction do) would
    blow up: a 1 x 50,000 pixel PNG is a few hundred bytes, and about 10 GB at a 256 short side."""
    width, height = size
    pixels = width * height
    if pixels > MAX_IMAGE_PIXELS:
        raise BadImageError(
            path,
            f"decompression bomb: {pixels:,} pixels ({width}x{height}) exceeds the limit "
            f"of {MAX_IMAGE_PIXELS:,}",
            "decompression-bomb",
        )
    if max(width, height) > MAX_ASPECT_RATIO * max(1, min(width, height)):
        raise BadImageError(
            path,
            f"too elongated ({width}x{height}, more than {MAX_ASPECT_RATIO}:1): scaling its "
            "short side for the network would make it enormous",
            "too-elongated",
        )


def _bomb_reason(message: str) -> str:
    match = _BOMB_PIXELS.search(message)
    if match is None:
        return f"decompression bomb ({message})"
    limit = MAX_IMAGE_PIXELS
    if Image.MAX_IMAGE_PIXELS is not None:
        limit = min(limit, int(Image.MAX_IMAGE_PIXELS))
    return f"decompression bomb: {int(match.group(1)):,} pixels exceeds the limit of {limit:,}"


def _decode_reason(error: BaseException) -> tuple[str, str]:
    """(reason, kind) for an exception PIL raised while reading or decoding."""
    message = str(error)
    lowered = message.lower()
    if isinstance(error, EOFError) or "truncated" in lowered:
        return "truncated image data", "truncated"
    if "broken data stream" in lowered:
        return "truncated or corrupt image data (broken data stream)", "truncated"
    return f"corrupt image data ({type(error).__name__}: {message})", "corrupt"


def _apply_exif_orientation(image: Image.Image, notes: list[str]) -> Image.Image:
    """Rotate/flip as EXIF orientation 2-8 says; unreadable EXIF is noted and ignored."""
    try:
        orientation = image.getexif().get(EXIF_ORIENTATION_TAG)
        if orientation not in (2, 3, 4, 5, 6, 7, 8):
            return image
        transposed = ImageOps.exif_transpose(image)
    except Exception as error:  # EXIF is metadata: a broken block must not lose the image
        notes.append(f"EXIF data unreadable, orientation ignored ({type(error).__name__})")
        return image
    notes.append(f"EXIF orientation {orientation} applied")
    return transposed


def _to_rgb(image: Image.Image, notes: list[str]) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _SIXTEEN_BIT_MODES:
        # PIL's convert clips 16-bit values at 255; scale the full range down instead.
        pixels = np.asarray(image).astype(np.uint16)
        notes.append(f"16-bit grayscale ({mode}) scaled to 8-bit RGB")
        return Image.fromarray((pixels >> 8).astype(np.uint8), mode="L").convert("RGB")
    if mode in ("I", "F"):
        notes.append(
            f"{'32-bit integer' if mode == 'I' else 'floating-point'} ({mode}) scaled to 8-bit RGB"
        )
        return Image.fromarray(_scale_to_uint8(np.asarray(image)), mode="L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        described = {
            "RGBA": "RGBA",
            "LA": "grayscale+alpha (LA)",
            "P": "palette (P) with transparency",
            "PA": "palette+alpha (PA)",
        }.get(mode, mode)
        notes.append(f"{described} composited on white")
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_WHITE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    described = {
        "CMYK": "CMYK",
        "P": "palette (P)",
        "L": "grayscale (L)",
        "1": "1-bit (1)",
        "YCbCr": "YCbCr",
        "LAB": "LAB",
        "HSV": "HSV",
    }.get(mode, f"mode {mode}")
    notes.append(f"{described} converted to RGB")
    return image.convert("RGB")


def _scale_to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Map 32-bit integer or float pixels onto 0..255 by their plausible range."""
    values = pixels.astype(np.float64)
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if pixels.dtype.kind == "f" and low >= 0.0 and high <= 1.0:
        scaled = values * 255.0  # float images in 0..1
    elif low >= 0.0 and high <= 255.0:
        scaled = values
    elif low >= 0.0 and high <= 65535.0:
        scaled = values / 256.0  # 16-bit data stored as mode I (e.g. some TIFFs)
    elif high > low:
        scaled = (values - low) * (255.0 / (high - low))
    else:
        scaled = np.zeros_like(values)
    return np.clip(np.nan_to_num(scaled), 0, 255).astype(np.uint8)
