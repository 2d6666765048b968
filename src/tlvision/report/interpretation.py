"""What a run's model does on its val set: predictions, losses, confusions, calibration.

Measuring (`val_results`: the path `tlvision evaluate` takes, tlvision.inference.evaluation) is
kept apart from the pure readings of the result (`top_losses`, `confused_pairs`,
`calibration`), which the report draws and tests can recompute independently.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tlvision.data.layouts import DatasetSplits
from tlvision.inference.evaluation import (
    ClassificationReport,
    SamplePredictions,
    predict_labelled,
    report_of,
)
from tlvision.runs.reader import LoadedModel


@dataclass(frozen=True)
class ValResults:
    """The model's class probabilities on every readable val image."""

    class_names: tuple[str, ...]
    predictions: SamplePredictions
    broken_links: tuple[Path, ...]
    source: str  # how the probabilities were computed: "cached codes" or "images"

    @property
    def losses(self) -> np.ndarray:
        """Cross-entropy of each image: -log p(true class)."""
        rows = np.arange(len(self.predictions.samples))
        true = self.predictions.probabilities[rows, self.predictions.labels]
        return -np.log(np.clip(true.astype(np.float64), 1e-12, 1.0))

    def classification_report(self) -> ClassificationReport:
        return report_of(self.class_names, self.predictions, self.broken_links)


def val_results(loaded: LoadedModel, splits: DatasetSplits, *, device: torch.device) -> ValResults:
    """Probabilities on the val split, as `tlvision evaluate` computes them (the head over the
    cached codes for a frozen body's run, else the images through the classifier)."""
    names = list(loaded.class_names)
    samples = [
        (path, names.index(splits.class_names[label])) for path, label in splits.samples["val"]
    ]
    predictions, source = predict_labelled(loaded, samples, device=device)
    val_links = tuple(path for path in splits.broken_links if "val" in path.parts)
    return ValResults(loaded.class_names, predictions, val_links, source)


def top_losses(losses: np.ndarray, count: int) -> list[int]:
    """Indices of the `count` highest losses, highest first (ties: the earlier image)."""
    order = np.argsort(-losses, kind="stable")
    return [int(index) for index in order[:count]]


def confused_pairs(confusion: np.ndarray, count: int) -> list[tuple[int, int, int]]:
    """(true class, predicted class, images) of the most frequent mistakes, most first."""
    pairs = [
        (int(true), int(predicted), int(confusion[true, predicted]))
        for true, predicted in zip(*np.nonzero(confusion), strict=True)
        if true != predicted
    ]
    pairs.sort(key=lambda pair: (-pair[2], pair[0], pair[1]))
    return pairs[:count]


@dataclass(frozen=True)
class Calibration:
    """Confidence (top-1 probability) against accuracy, in equal-width confidence bins."""

    edges: np.ndarray  # (bins + 1,)
    confidence: np.ndarray  # (bins,) mean confidence per bin; nan where empty
    accuracy: np.ndarray  # (bins,) accuracy per bin; nan where empty
    counts: np.ndarray  # (bins,)
    expected_calibration_error: float  # sum over bins of share x |accuracy - confidence|

    def to_json(self) -> dict[str, Any]:
        return {
            "ece": self.expected_calibration_error,
            "bins": [
                {"from": float(low), "to": float(high), "images": int(count)}
                for low, high, count in zip(
                    self.edges[:-1], self.edges[1:], self.counts, strict=True
                )
            ],
        }


def calibration(probabilities: np.ndarray, labels: np.ndarray, bins: int = 10) -> Calibration:
    edges = np.linspace(0.0, 1.0, bins + 1)
    confidence = probabilities.max(axis=1) if len(labels) else np.zeros(0)
    correct = (probabilities.argmax(axis=1) == labels) if len(labels) else np.zeros(0, bool)
    # bin i holds (edges[i], edges[i+1]]; a confidence of exactly 0 goes to the first bin
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    mean_confidence = np.full(bins, np.nan)
    mean_accuracy = np.full(bins, np.nan)
    error = 0.0
    for index in np.nonzero(counts)[0]:
        members = which == index
        mean_confidence[index] = confidence[members].mean()
        mean_accuracy[index] = correct[members].mean()
        error += members.sum() / len(labels) * abs(mean_accuracy[index] - mean_confidence[index])
    return Calibration(edges, mean_confidence, mean_accuracy, counts, float(error))
