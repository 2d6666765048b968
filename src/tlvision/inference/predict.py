"""Class predictions from a trained run directory, for image files or images in memory."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from itertools import chain
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tlvision.api.results import ImageLike, Prediction
from tlvision.data.images import BadImageError, load_rgb_image, rgb_from_array, rgb_from_pil
from tlvision.data.layouts import build_transforms, is_broken_link, is_image_file
from tlvision.errors import UserError
from tlvision.runs.checkpoint import LoadedModel

__all__ = [
    "ImageInput", "ImagePaths", "Prediction", "expand_image_paths", "image_inputs",
    "iter_image_paths", "predict_images",
]  # fmt: skip

ImageInput = Path | Image.Image | np.ndarray
"""A file (decoded by images.load_rgb_image), a PIL image or an array of pixels."""


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


def predict_images(
    loaded: LoadedModel,
    images: Sequence[ImageInput],
    *,
    top_k: int = 1,
    batch_size: int = 32,
    device: torch.device | None = None,
    tta: bool = False,
) -> list[Prediction]:
    """Top-k classes per image. Unreadable files get an `error` entry instead of stopping;
    images in memory get `path` None. tta: average the probabilities of the mirror and crop
    views of tlvision.inference.tta."""
    if top_k < 1:
        raise UserError("--top-k must be at least 1")
    errors: dict[int, str] = {}

    def readable_images() -> Iterator[Image.Image]:
        for index, source in enumerate(images):
            try:
                yield rgb_image(source, index)
            except BadImageError as error:
                errors[index] = error.reason

    ranked = iter(
        rank_classes(
            loaded, readable_images(), top_k=top_k, batch_size=batch_size, device=device, tta=tta
        )
    )
    predictions = []
    for index, source in enumerate(images):
        path = source if isinstance(source, Path) else None
        if index in errors:
            predictions.append(Prediction(path=path, top=(), error=errors[index]))
        else:
            predictions.append(Prediction(path=path, top=next(ranked)))
    return predictions


@torch.inference_mode()
def rank_classes(
    loaded: LoadedModel,
    images: Iterable[Image.Image],
    *,
    top_k: int,
    batch_size: int,
    device: torch.device | None,
    tta: bool = False,
) -> list[tuple[tuple[str, float], ...]]:
    """(class name, probability) pairs, most likely first, per RGB image; images are transformed
    one batch at a time, so a long list never sits in memory as tensors."""
    top_k = min(top_k, len(loaded.class_names))
    device = device or torch.device("cpu")
    model: torch.nn.Module = loaded.model.to(device).eval()
    transform = build_transforms(loaded.preprocessing)["val"]
    if tta:
        from tlvision.inference.tta import AveragedViews, tta_transform

        model, transform = AveragedViews(model), tta_transform(loaded.preprocessing)
    ranked: list[tuple[tuple[str, float], ...]] = []
    batch: list[torch.Tensor] = []
    for image in chain(images, [None]):  # None: the end, flush the last batch
        if image is not None:
            batch.append(transform(image))
        if batch and (len(batch) == batch_size or image is None):
            probabilities = torch.softmax(model(torch.stack(batch).to(device)).float(), dim=1)
            values, indices = probabilities.cpu().topk(top_k, dim=1)
            for row_values, row_indices in zip(values, indices, strict=True):
                ranked.append(
                    tuple(
                        (loaded.class_names[int(i)], float(v))
                        for v, i in zip(row_values, row_indices, strict=True)
                    )
                )
            batch = []
    return ranked
