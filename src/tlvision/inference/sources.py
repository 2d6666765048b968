"""What can be classified: image files, folders of them (walked lazily, in a stable order), PIL
images and arrays of pixels; and what a classification says about one of them (Prediction)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from tlvision.data.images import load_rgb_image, rgb_from_array, rgb_from_pil
from tlvision.data.layouts import is_broken_link, is_image_file
from tlvision.errors import UserError
from tlvision.inference.prediction import ImageLike, Prediction

ImageInput = Path | Image.Image | np.ndarray
"""A file (decoded by images.load_rgb_image), a PIL image or an array of pixels."""

__all__ = ["ImageInput", "ImageLike", "ImagePaths", "Prediction", "image_inputs", "rgb_image"]


def _walk_sorted(folder: Path) -> Iterator[Path]:
    """Image files and broken image links under `folder`, in sorted path order, lazily."""
    with os.scandir(folder) as scan:
        entries = sorted(scan, key=lambda entry: entry.name)
    for entry in entries:
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            yield from _walk_sorted(path)
        elif is_image_file(path) and (path.is_file() or is_broken_link(path)):
            yield path


def check_image_arguments(arguments: Sequence[Path]) -> None:
    """Every argument exists (a file, a folder or a broken link), before any work starts."""
    for argument in arguments:
        if not (argument.is_dir() or argument.is_file() or is_broken_link(argument)):
            raise UserError(f"{argument}: no such file or directory; pass image files or folders")


def iter_image_paths(arguments: Sequence[Path]) -> Iterator[Path]:
    """Files as given; directories searched recursively for images, in a stable order.

    Lazy: a folder of a million files is never held as a list. Broken links are kept, so
    that each gets an error entry naming it rather than vanishing.
    """
    check_image_arguments(arguments)
    for argument in arguments:
        if not argument.is_dir():
            yield argument
            continue
        found = False
        for path in _walk_sorted(argument):
            found = True
            yield path
        if not found:
            raise UserError(f"{argument}: directory holds no images; pass image files or folders")


class ImagePaths:
    """`iter_image_paths` as an iterable that each DataLoader worker can walk afresh."""

    def __init__(self, arguments: Sequence[Path]) -> None:
        check_image_arguments(arguments)
        self.arguments = list(arguments)

    def __iter__(self) -> Iterator[Path]:
        return iter_image_paths(self.arguments)


def expand_image_paths(arguments: Sequence[Path]) -> list[Path]:
    """`iter_image_paths` as a list (for a handful of files)."""
    return list(iter_image_paths(arguments))


def image_inputs(images: ImageLike | Sequence[ImageLike]) -> list[ImageInput]:
    """One input or a list of them, as predict_images takes them: paths made Path, folders
    expanded (see expand_image_paths); anything that is not an image is a UserError."""
    single = isinstance(images, str | os.PathLike | Image.Image | np.ndarray)
    inputs: list[ImageInput] = []
    for item in [images] if single else list(images):  # type: ignore[arg-type]
        if isinstance(item, str | os.PathLike):
            inputs.extend(expand_image_paths([Path(item)]))
        elif isinstance(item, Image.Image | np.ndarray):
            inputs.append(item)
        else:
            raise UserError(
                f"cannot predict on a {type(item).__name__}; pass image files or folders, PIL "
                "images or numpy arrays of pixels"
            )
    return inputs


def rgb_image(source: ImageInput, index: int) -> Image.Image:
    """The RGB image of one input; BadImageError when a file cannot be decoded."""
    if isinstance(source, Path):
        return load_rgb_image(source)
    if isinstance(source, Image.Image):
        return rgb_from_pil(source)
    return rgb_from_array(source, name=f"image {index}")
