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

from tlvision.checkpoint import load_run_model
from tlvision.data import (
    ImageDataset,
    build_transforms,
    collate_readable,
    list_class_folders,
    scan_split,
)
from tlvision.errors import UserError
from tlvision.results import html_table


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
    for images, batch_labels, batch_unreadable in loader:
        unreadable.extend(batch_unreadable)
        if len(batch_labels) == 0:
            continue
        logits = model(images.to(device))
        probabilities.append(torch.softmax(logits.float(), dim=1).cpu())
        labels.append(batch_labels)
    if not labels:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.long), unreadable
    return torch.cat(probabilities), torch.cat(labels), unreadable


def evaluate_run(
    run_dir: Path,
    split_dir: Path,
    *,
    device: torch.device,
    batch_size: int = 32,
    num_workers: int = 0,
) -> ClassificationReport:
    """Score a trained run on a folder of class subfolders whose names the model knows."""
    loaded = load_run_model(run_dir)
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
    transform = build_transforms(loaded.preprocessing)["val"]
    dataset = ImageDataset(samples, loaded.class_names, transform)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_readable,
    )
    model = loaded.model.to(device)
    probabilities, labels, unreadable = predict_probabilities(model, loader, device)
    predictions = probabilities.argmax(dim=1) if len(labels) else labels
    matrix = confusion_matrix(
        labels.numpy(), predictions.numpy(), labels=np.arange(len(loaded.class_names))
    )
    unreadable_paths = [samples[index][0] for index in unreadable]
    skipped = tuple(str(path) for path in sorted([*broken_links, *unreadable_paths]))
    return ClassificationReport(loaded.class_names, matrix, skipped_files=skipped)
