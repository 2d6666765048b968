"""Class predictions for image files with a trained run directory, and nothing else."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tlvision.checkpoint import LoadedModel
from tlvision.data import build_transforms, image_files, is_broken_link
from tlvision.errors import UserError
from tlvision.images import BadImageError, load_rgb_image


@dataclass(frozen=True)
class Prediction:
    path: Path
    top: tuple[tuple[str, float], ...]  # (class name, probability), most likely first
    error: str | None = None  # why the file could not be read; `top` is empty then

    def to_json(self) -> dict[str, Any]:
        if self.error is not None:
            return {"path": str(self.path), "error": self.error}
        return {
            "path": str(self.path),
            "class": self.top[0][0],
            "probability": self.top[0][1],
            "top": [{"class": name, "probability": probability} for name, probability in self.top],
        }


def expand_image_paths(arguments: Sequence[Path]) -> list[Path]:
    """Files as given; directories searched recursively for images, in a stable order.

    Broken links are kept, so that each gets an error entry naming it rather than vanishing.
    """
    paths: list[Path] = []
    for argument in arguments:
        if argument.is_dir():
            files, broken = image_files(argument)
            if not files:
                raise UserError(
                    f"{argument}: directory holds no images; pass image files or folders"
                )
            paths.extend(sorted(files + broken))
        elif argument.is_file() or is_broken_link(argument):
            paths.append(argument)
        else:
            raise UserError(f"{argument}: no such file or directory; pass image files or folders")
    return paths


@torch.inference_mode()
def predict_images(
    loaded: LoadedModel,
    paths: Sequence[Path],
    *,
    top_k: int = 1,
    batch_size: int = 32,
    device: torch.device | None = None,
    tta: bool = False,
) -> list[Prediction]:
    """Top-k classes per image. Unreadable files get an `error` entry instead of stopping.

    tta: average the probabilities of the flip and crop views of tlvision.tta.
    """
    from tlvision.tta import AveragedViews, tta_transform

    if top_k < 1:
        raise UserError("--top-k must be at least 1")
    top_k = min(top_k, len(loaded.class_names))
    device = device or torch.device("cpu")
    model: torch.nn.Module = loaded.model.to(device).eval()
    transform = build_transforms(loaded.preprocessing)["val"]
    if tta:
        model, transform = AveragedViews(model), tta_transform(loaded.preprocessing)
    results: dict[int, Prediction] = {}
    readable: list[tuple[int, torch.Tensor]] = []
    for index, path in enumerate(paths):
        try:
            readable.append((index, transform(load_rgb_image(path))))
        except BadImageError as error:
            results[index] = Prediction(path=path, top=(), error=error.reason)
    for start in range(0, len(readable), batch_size):
        batch = readable[start : start + batch_size]
        images = torch.stack([tensor for _, tensor in batch]).to(device)
        probabilities = torch.softmax(model(images).float(), dim=1).cpu()
        values, indices = probabilities.topk(top_k, dim=1)
        for (index, _), row_values, row_indices in zip(batch, values, indices, strict=True):
            top = tuple(
                (loaded.class_names[int(i)], float(v))
                for v, i in zip(row_values, row_indices, strict=True)
            )
            results[index] = Prediction(path=paths[index], top=top)
    return [results[index] for index in range(len(paths))]
