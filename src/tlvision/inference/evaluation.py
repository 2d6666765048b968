"""Scoring a run on labelled images: class probabilities (`predict_labelled`, the path evaluate
and the report share), then accuracy, per-class precision / recall / F1 and the confusion
matrix (scikit-learn's)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tlvision.data.layouts import list_class_folders, scan_split
from tlvision.errors import UserError
from tlvision.inference.multilabel import is_multi_label
from tlvision.inference.runtime import AUTO, Classifier, classifier_of
from tlvision.inference.stream import classify
from tlvision.runs.reader import LoadedModel, load_run_model
from tlvision.tables import html_table


@dataclass(frozen=True, repr=False)
class ClassificationReport:
    """`print(report)` shows what `tlvision evaluate` prints; a notebook shows tables."""

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
        """Precision, recall and F1 per class from the confusion counts (0 where a class has
        no prediction or no image: scikit-learn's zero_division=0, which the tests check it
        against; numpy here because importing scikit-learn costs a warm run a second)."""
        hits = np.diag(self.confusion).astype(np.float64)
        predicted, actual = self.confusion.sum(axis=0), self.confusion.sum(axis=1)
        precision = np.divide(hits, predicted, out=np.zeros_like(hits), where=predicted > 0)
        recall = np.divide(hits, actual, out=np.zeros_like(hits), where=actual > 0)
        both = precision + recall
        f1 = np.divide(2 * precision * recall, both, out=np.zeros_like(hits), where=both > 0)
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

    def __str__(self) -> str:
        return self.to_text()

    def __repr__(self) -> str:
        return (
            f"ClassificationReport(accuracy={self.accuracy:.4f}, images={self.total}, "
            f"classes={list(self.class_names)}, skipped_files={len(self.skipped_files)})"
        )

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


@dataclass(frozen=True)
class SamplePredictions:
    """Class probabilities for the readable samples of a list, in the list's order."""

    samples: tuple[tuple[Path, int], ...]  # the readable (path, model class index) pairs
    probabilities: np.ndarray  # (len(samples), classes) float32
    unreadable: tuple[Path, ...]  # files that could not be decoded, left out

    @property
    def labels(self) -> np.ndarray:
        return np.asarray([label for _path, label in self.samples], dtype=np.int64)


def classify_samples(
    classifier: Classifier,
    samples: list[tuple[Path, int]],
    *,
    tta: bool = False,
    batch_size: int = 32,
    decoders: int | None = None,
) -> SamplePredictions:
    """Every (path, class index) sample through the classifier: one view each, or the TTA
    views averaged."""
    kept, rows, unreadable = [], [], []
    paths = [path for path, _label in samples]
    for sample, item in zip(
        samples, classify(classifier, paths, batch_size=batch_size, decoders=decoders, tta=tta),
        strict=True,
    ):  # fmt: skip
        if item.probabilities is None:
            unreadable.append(sample[0])
        else:
            kept.append(sample)
            rows.append(item.probabilities)
    classes = len(classifier.class_names)
    probabilities = np.stack(rows) if rows else np.zeros((0, classes), np.float32)
    return SamplePredictions(tuple(kept), probabilities.astype(np.float32), tuple(unreadable))


@torch.inference_mode()
def cached_codes_logits(
    loaded: LoadedModel, samples: list[tuple[Path, int]], device: torch.device
) -> np.ndarray | None:
    """The head over the top codes a frozen body's run cached while training: no forward pass
    of the body when they are still there. None when the run has no such codes."""
    from tlvision.codes.cache import VAL_VIEW, CodesSpec, FeatureCache, default_cache_dir
    from tlvision.codes.extraction import UnreadableImagesError, extract_codes
    from tlvision.models.network import head_of
    from tlvision.models.stages import StageCodes

    metadata, config = loaded.metadata, loaded.metadata.get("config", {})
    if metadata.get("body") != "frozen" or metadata.get("stage") or config.get("no_cache"):
        return None
    root = Path(config["cache_dir"]) if config.get("cache_dir") else default_cache_dir()
    cache = FeatureCache(root, log=lambda _message: None)
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
        return None  # the classifier's route lists them
    inputs = torch.from_numpy(np.array(codes, dtype=np.float32)).to(device)
    return head_of(model, loaded.backbone)(inputs).float().cpu().numpy()


def cached_codes_predictions(
    loaded: LoadedModel, samples: list[tuple[Path, int]], device: torch.device
) -> SamplePredictions | None:
    """`cached_codes_logits` as class probabilities; None when the run has no such codes."""
    logits = cached_codes_logits(loaded, samples, device)
    if logits is None:
        return None
    # a multi-label head's classes are independent: a sigmoid each (inference.multilabel)
    scores = torch.sigmoid if is_multi_label(loaded.metadata) else partial(torch.softmax, dim=1)
    probabilities = scores(torch.from_numpy(logits)).numpy()
    return SamplePredictions(samples=tuple(samples), probabilities=probabilities, unreadable=())


def predict_labelled(
    loaded: LoadedModel,
    samples: list[tuple[Path, int]],
    *,
    device: torch.device,
    runtime: str = "auto",
    tta: bool = False,
    batch_size: int = 32,
) -> tuple[SamplePredictions, str]:
    """Class probabilities of labelled samples, and how they were computed: the one path that
    `evaluate` and the report take. A frozen body's run reads its cached codes back (the head
    alone runs; not with TTA or a runtime asked for); otherwise the images go through the run's
    classifier."""
    if not tta and runtime == AUTO:
        cached = cached_codes_predictions(loaded, samples, device)
        if cached is not None:
            return cached, "cached codes"
    classifier = classifier_of(loaded, runtime, device=device, image_count=len(samples))
    return classify_samples(classifier, samples, tta=tta, batch_size=batch_size), "images"


def report_of(
    class_names: tuple[str, ...], predictions: SamplePredictions, skipped: tuple[Path, ...] = ()
) -> ClassificationReport:
    """The confusion counts of a set of predictions (rows: true class; numpy's bincount, as
    scikit-learn's confusion_matrix counts, without importing scikit-learn)."""
    predicted = (
        predictions.probabilities.argmax(axis=1) if len(predictions.samples) else predictions.labels
    )
    classes = len(class_names)
    cells = np.asarray(predictions.labels, dtype=np.int64) * classes + predicted.astype(np.int64)
    matrix = np.bincount(cells, minlength=classes * classes).reshape(classes, classes)
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
    tta: bool = False,
    runtime: str = "auto",
) -> ClassificationReport:
    """Score a trained run on a folder of class subfolders whose names the model knows."""
    loaded = load_run_model(run_dir)
    samples, broken_links = labelled_split(loaded, split_dir)
    predictions, _source = predict_labelled(
        loaded, samples, device=device, runtime=runtime, tta=tta, batch_size=batch_size
    )
    return report_of(loaded.class_names, predictions, tuple(broken_links))
