"""What a run's model does on its val set: predictions, losses, confusions, calibration.

Measuring (`val_results`: one pass of the model, or of its head over the cached CNN codes) is
kept apart from the pure readings of the result (`top_losses`, `confused_pairs`,
`calibration`), which the report draws and tests can recompute independently.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tlvision.codes.cache import VAL_VIEW, CodesSpec, FeatureCache, default_cache_dir
from tlvision.config import CODES_STRATEGIES
from tlvision.data.layouts import DatasetSplits, find_splits
from tlvision.errors import UserError
from tlvision.inference.evaluation import (
    ClassificationReport,
    SamplePredictions,
    predict_samples,
    report_of,
)
from tlvision.runs.checkpoint import LoadedModel


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


def labelled_val_samples(loaded: LoadedModel, splits: DatasetSplits) -> list[tuple[Path, int]]:
    """The val samples labelled with the model's class indices (matched by name)."""
    unknown = [name for name in splits.class_names if name not in loaded.class_names]
    if unknown:
        raise UserError(
            f"{splits.root}: classes {unknown} are not classes of this run's model "
            f"({list(loaded.class_names)}); pass the run's own dataset with --data"
        )
    return [
        (path, loaded.class_names.index(splits.class_names[label]))
        for path, label in splits.samples["val"]
    ]


def run_splits(loaded: LoadedModel, data_dir: Path) -> DatasetSplits:
    """The run's train/val split of `data_dir`: the same --val-split and seed as training."""
    config = loaded.metadata.get("config", {})
    return find_splits(data_dir, val_split=config.get("val_split"), seed=config.get("seed", 0))


def _run_cache(loaded: LoadedModel) -> FeatureCache | None:
    config = loaded.metadata.get("config", {})
    if config.get("no_cache"):
        return None
    root = config.get("cache_dir")
    return FeatureCache(Path(root) if root else default_cache_dir(), log=lambda _message: None)


@torch.inference_mode()
def codes_predictions(
    loaded: LoadedModel, samples: list[tuple[Path, int]], device: torch.device
) -> SamplePredictions | None:
    """The head over the val codes the frozen routes cached while training: no forward pass
    of the body when they are still there. None when this run has no such codes."""
    from tlvision.codes.extraction import UnreadableImagesError, extract_codes
    from tlvision.models.backbones import head_of
    from tlvision.models.stages import StageCodes

    metadata = loaded.metadata
    cache = _run_cache(loaded)
    if cache is None or metadata.get("strategy") not in CODES_STRATEGIES or metadata.get("stage"):
        return None
    spec = CodesSpec(
        loaded.backbone.name, metadata["weights"], loaded.preprocessing, None, VAL_VIEW
    )
    model = loaded.model.to(device).eval()
    try:
        codes = extract_codes(
            StageCodes(model, loaded.backbone, [None]), samples, specs=[spec], cache=cache,
            device=device, description="val codes", log=lambda _message: None,
        )[None]  # fmt: skip
    except UnreadableImagesError:
        return None  # the image route below lists them
    head = head_of(model, loaded.backbone)
    logits = head(torch.from_numpy(np.array(codes, dtype=np.float32)).to(device))
    probabilities = torch.softmax(logits.float(), dim=1).cpu().numpy()
    return SamplePredictions(samples=tuple(samples), probabilities=probabilities, unreadable=())


def val_results(loaded: LoadedModel, splits: DatasetSplits, *, device: torch.device) -> ValResults:
    """Probabilities on the val split: from cached codes when the run has them, else images."""
    samples = labelled_val_samples(loaded, splits)
    predictions = codes_predictions(loaded, samples, device)
    source = "cached codes"
    if predictions is None:
        predictions = predict_samples(loaded, samples, device=device)
        source = "images"
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
