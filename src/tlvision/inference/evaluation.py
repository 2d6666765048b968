"""Accuracy, per-class precision / recall / F1 and the confusion matrix."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import confusion_matrix
from torch import nn
from torch.utils.data import DataLoader

from tlvision.api.results import html_table
from tlvision.data.layouts import (
    ImageDataset,
    build_transforms,
    collate_readable,
    list_class_folders,
    scan_split,
)
from tlvision.errors import UserError
from tlvision.progress import progress_bar
from tlvision.runs.checkpoint import LoadedModel, load_run_model


@dataclass(frozen=True)
class ClassificationReport:
    class_names: tuple[str, ...]
    confusion: np.ndarray  # rows: true class, columns: predicted class
    skipped_files: tuple[str, ...] = ()  # files that could not be decoded, left out of the counts

    @property
    def total(self) -> int:
        return int(self.confusion.sum())

    @property
    def accuracy(self) -> float:
        return float(np.trace(self.confusion) / max(1, self.total))

    def per_class(self) -> list[dict[str, Any]]:
        """Precision, recall and F1 per class, by scikit-learn from the confusion counts."""
        from sklearn.metrics import precision_recall_fscore_support

        classes = np.arange(len(self.class_names))
        true, predicted = np.nonzero(self.confusion)  # one (true, predicted) pair per cell...
        weights = self.confusion[true, predicted]  # ...weighted by its count
        precision, recall, f1, _ = precision_recall_fscore_support(
            true, predicted, labels=classes, sample_weight=weights, zero_division=0
        )
        support = self.confusion.sum(axis=1)
        return [
            {
                "class": name,
                "precision": float(precision[index]),
                "recall": float(recall[index]),
                "f1": float(f1[index]),
                "support": int(support[index]),
            }
            for index, name in enumerate(self.class_names)
        ]

    def to_json(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "images": self.total,
            "classes": list(self.class_names),
            "per_class": self.per_class(),
            "confusion_matrix": self.confusion.astype(int).tolist(),
            "skipped_files": list(self.skipped_files),
        }

    def _repr_html_(self) -> str:
        """In a notebook: per-class precision, recall and F1, then the confusion matrix."""
        per_class = html_table(
            ["class", "precision", "recall", "f1", "support"],
            [
                [r["class"], r["precision"], r["recall"], r["f1"], r["support"]]
                for r in self.per_class()
            ],
            caption=f"accuracy {self.accuracy:.4f} on {self.total} images",
        )
        confusion = html_table(
            ["true \\ predicted", *self.class_names],
            [
                [name, *map(int, row)]
                for name, row in zip(self.class_names, self.confusion, strict=True)
            ],
        )
        return per_class + confusion

    def to_text(self) -> str:
        width = max(8, *(len(name) for name in self.class_names))
        lines = [f"accuracy {self.accuracy:.4f} on {self.total} images", ""]
        lines.append(f"{'class':<{width}}  precision  recall     f1  support")
        for row in self.per_class():
            lines.append(
                f"{row['class']:<{width}}  {row['precision']:>9.4f}  {row['recall']:>6.4f}  "
                f"{row['f1']:>5.4f}  {row['support']:>7d}"
            )
        lines += ["", "confusion matrix (rows: true class, columns: predicted)"]
        header = (
            " " * width + "  " + "  ".join(f"{name[:width]:>{width}}" for name in self.class_names)
        )
        lines.append(header)
        for index, name in enumerate(self.class_names):
            counts = "  ".join(f"{int(count):>{width}d}" for count in self.confusion[index])
            lines.append(f"{name:<{width}}  {counts}")
        if self.skipped_files:
            lines += ["", f"skipped {len(self.skipped_files)} unreadable files:"]
            lines += [f"  {path}" for path in self.skipped_files]
        return "\n".join(lines)


@torch.inference_mode()
def predict_probabilities(
    model: nn.Module, loader: DataLoader[tuple[torch.Tensor, int]], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Softmax probabilities and true labels for every readable image the loader yields, and
    the dataset indices of the unreadable ones (see data.collate_readable)."""
    model.eval()
    probabilities, labels, unreadable = [], [], []
    # a bar when someone watches (tlvision.progress): --json output and logs stay clean
    batches = progress_bar(loader, desc="predicting", unit="batch", leave=False)
    for images, batch_labels, batch_unreadable in batches:
        unreadable.extend(batch_unreadable)
        if len(batch_labels) == 0:
            continue
        logits = model(images.to(device))
        probabilities.append(torch.softmax(logits.float(), dim=1).cpu())
        labels.append(batch_labels)
    if not labels:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.long), unreadable
    return torch.cat(probabilities), torch.cat(labels), unreadable


@dataclass(frozen=True)
class SamplePredictions:
    """Class probabilities for the readable samples of a list, in the list's order."""

    samples: tuple[tuple[Path, int], ...]  # the readable (path, model class index) pairs
    probabilities: np.ndarray  # (len(samples), classes) float32
    unreadable: tuple[Path, ...]  # files that could not be decoded, left out

    @property
    def labels(self) -> np.ndarray:
        return np.asarray([label for _path, label in self.samples], dtype=np.int64)


def predict_samples(
    loaded: LoadedModel,
    samples: list[tuple[Path, int]],
    *,
    device: torch.device,
    tta: bool = False,
    batch_size: int = 32,
    num_workers: int = 0,
) -> SamplePredictions:
    """Run the model on every (path, class index) sample: one view each, or the TTA views
    averaged (tlvision.inference.tta)."""
    from tlvision.inference.tta import AveragedViews, tta_transform

    transform = (
        tta_transform(loaded.preprocessing)
        if tta
        else build_transforms(loaded.preprocessing)["val"]
    )
    dataset = ImageDataset(samples, loaded.class_names, transform)
    loader = DataLoader(
        dataset,
        batch_size=max(1, batch_size // 6) if tta else batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_readable,
    )
    model: nn.Module = loaded.model.to(device)
    if tta:
        model = AveragedViews(model)
    probabilities, _labels, unreadable = predict_probabilities(model, loader, device)
    missing = set(unreadable)
    kept = tuple(sample for index, sample in enumerate(samples) if index not in missing)
    return SamplePredictions(
        samples=kept,
        probabilities=probabilities.numpy().reshape(len(kept), len(loaded.class_names)),
        unreadable=tuple(samples[index][0] for index in unreadable),
    )


def report_of(
    class_names: tuple[str, ...], predictions: SamplePredictions, skipped: tuple[Path, ...] = ()
) -> ClassificationReport:
    """The confusion counts (scikit-learn) of a set of predictions."""
    predicted = (
        predictions.probabilities.argmax(axis=1) if len(predictions.samples) else predictions.labels
    )
    matrix = confusion_matrix(predictions.labels, predicted, labels=np.arange(len(class_names)))
    unreadable = sorted([*skipped, *predictions.unreadable])
    return ClassificationReport(
        class_names, matrix, skipped_files=tuple(str(path) for path in unreadable)
    )


def labelled_split(
    loaded: LoadedModel, split_dir: Path
) -> tuple[list[tuple[Path, int]], list[Path]]:
    """The images of a split folder labelled with the model's class indices, and broken links."""
    if not split_dir.is_dir():
        raise UserError(f"{split_dir}: no such directory; pass a split folder such as DATA/val")
    folder_names = list_class_folders(split_dir)
    if not folder_names:
        raise UserError(f"{split_dir}: no class folders; pass a split folder such as DATA/val")
    unknown = [name for name in folder_names if name not in loaded.class_names]
    if unknown:
        raise UserError(
            f"{split_dir}: class folders {unknown} are not classes of this model "
            f"({list(loaded.class_names)}); rename them or evaluate another split"
        )
    # Label each folder with the model's index for that name, so the order of folders on disk
    # cannot shift the labels.
    found, broken_links = scan_split(split_dir, folder_names)
    samples = [
        (path, loaded.class_names.index(folder_names[folder_index])) for path, folder_index in found
    ]
    return samples, list(broken_links)


def evaluate_run(
    run_dir: Path,
    split_dir: Path,
    *,
    device: torch.device,
    batch_size: int = 32,
    num_workers: int = 0,
    tta: bool = False,
) -> ClassificationReport:
    """Score a trained run on a folder of class subfolders whose names the model knows."""
    loaded = load_run_model(run_dir)
    samples, broken_links = labelled_split(loaded, split_dir)
    predictions = predict_samples(
        loaded, samples, device=device, tta=tta, batch_size=batch_size, num_workers=num_workers
    )
    return report_of(loaded.class_names, predictions, tuple(broken_links))
