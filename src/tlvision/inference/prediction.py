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
    # With rejection asked for (predict --reject): the out-of-distribution score (higher: less
    # like the training classes) and whether it is over the threshold. An unknown image has no
    # class; `top` still says which classes it is closest to.
    ood_score: float | None = None
    unknown: bool | None = None
    # multi-label models: the classes over their thresholds, and every class's probability
    labels: tuple[str, ...] | None = None
    probabilities: dict[str, float] | None = None

    @property
    def class_name(self) -> str | None:
        """The predicted class; None for an unknown image or an unreadable file."""
        return None if self.unknown or not self.top else self.top[0][0]

    @property
    def label(self) -> str | None:
        """The most likely class (None when the file could not be read)."""
        return self.top[0][0] if self.top else None

    @property
    def probability(self) -> float | None:
        """The most likely class's probability (None when the file could not be read)."""
        return self.top[0][1] if self.top else None

    def to_json(self) -> dict[str, Any]:
        path = None if self.path is None else str(self.path)
        if self.error is not None:
            return {"path": path, "error": self.error}
        document: dict[str, Any] = {
            "path": path,
            "class": self.class_name,
            "probability": None if self.unknown else self.top[0][1],
            "top": [{"class": name, "probability": probability} for name, probability in self.top],
            **self._multi_label_json(),
        }
        if self.unknown is not None:
            document["unknown"] = self.unknown
            document["ood_score"] = self.ood_score
        return document

    def to_text(self) -> str:
        """One line: the ranked classes, `unknown (closest: bees 0.610)`, or for a multi-label
        model its labels: `labels: red 0.930, blue 0.710`."""
        if self.error is not None:
            return f"{self.path}: error: {self.error}"
        if self.unknown:
            name, probability = self.top[0]
            return f"{self.path}: unknown (closest: {name} {probability:.3f})"
        if self.labels is not None and self.probabilities is not None:  # multi-label
            chosen = ", ".join(f"{name} {self.probabilities[name]:.3f}" for name in self.labels)
            return f"{self.path}: labels: {chosen or 'none over their thresholds'}"
        ranked = ", ".join(f"{name} {probability:.3f}" for name, probability in self.top)
        return f"{self.path}: {ranked}"

    def _multi_label_json(self) -> dict[str, Any]:
        if self.labels is None:
            return {}
        return {"labels": list(self.labels), "probabilities": self.probabilities}
