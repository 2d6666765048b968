"""What a prediction says about one image, and what can be predicted on. Imports no numpy, PIL
or torch: `tlvision.Prediction` is importable at no cost."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

ImageLike: TypeAlias = "str | os.PathLike[str] | Image.Image | np.ndarray"
"""What the API's predict takes, one or a sequence of: an image file or folder, a PIL image, or
pixels (height x width [x 3 or 4], channels last; uint8, or floats in 0..1)."""


@dataclass(frozen=True)
class Prediction:
    """The top classes of one image, or why its file could not be read."""

    path: Path | None  # the file; None for an image given in memory (PIL image or array)
    top: tuple[tuple[str, float], ...]  # (class name, probability), most likely first
    error: str | None = None  # why the file could not be read; `top` is empty then

    def to_json(self) -> dict[str, Any]:
        path = None if self.path is None else str(self.path)
        if self.error is not None:
            return {"path": path, "error": self.error}
        return {
            "path": path,
            "class": self.top[0][0],
            "probability": self.top[0][1],
            "top": [{"class": name, "probability": probability} for name, probability in self.top],
        }
