"""Scoring a run on a label table (DATA/val.csv, DATA/test.csv: columns file,labels) or on a
split folder: `evaluate_data` decides which from what it is given.

A multi-label run gets a MultiLabelReport: mAP, micro and macro F1 at the run's recorded
thresholds, and per class its AP, precision, recall and F1 (scikit-learn's). A single-label run
given a table whose rows have one label each gets the ClassificationReport a split folder
gives. Every mismatch is a UserError naming the table or folder and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tlvision.data.label_table import (
    DEFAULT_SCORED_SPLIT,
    SCORED_SPLITS,
    LabelRow,
    read_table,
)
from tlvision.errors import UserError
from tlvision.inference.evaluation import (
    ClassificationReport,
    evaluate_run,
    predict_labelled,
    report_of,
)
from tlvision.inference.multilabel import is_multi_label, multilabel_metrics, thresholds_of
from tlvision.runs.reader import LoadedModel, load_run_model
from tlvision.tables import html_table


@dataclass(frozen=True, repr=False)
class MultiLabelReport:
    """A multi-label run scored on a label table; `print(report)` shows what `tlvision
    evaluate` prints, `to_json()` what `--json` prints."""

    class_names: tuple[str, ...]
    thresholds: tuple[float, ...]
    targets: np.ndarray  # (images, classes) 0/1
    probabilities: np.ndarray  # (images, classes): each class's sigmoid
    skipped_files: tuple[str, ...] = ()  # files that could not be decoded, left out

    @property
    def total(self) -> int:
        return int(self.targets.shape[0])

    def metrics(self) -> dict[str, Any]:
        """mAP, per-class AP, micro/macro F1 at the thresholds, exact match (as training's)."""
        return multilabel_metrics(
            self.targets, self.probabilities, list(self.thresholds), list(self.class_names)
        )

    @property
    def map(self) -> float:
        return float(self.metrics()["map"])

    @property
    def accuracy(self) -> float:
        """The share of images with every label right (scikit-learn's accuracy_score on
        multi-label targets), so that `run.evaluate(...).accuracy` means the same for both."""
        return float(self.metrics()["exact_match"])

    def per_class(self) -> list[dict[str, Any]]:
        """Per class: AP (None without both a positive and a negative image), the threshold,
        precision, recall and F1 at it (0 where undefined) and the positive images."""
        from sklearn.metrics import precision_recall_fscore_support

        predicted = (self.probabilities >= np.asarray(self.thresholds)[None, :]).astype(np.int64)
        truth = self.targets.astype(np.int64)
        precision, recall, f1, support = precision_recall_fscore_support(
            truth, predicted, average=None, zero_division=0
        )
        ap = self.metrics()["per_class_ap"]
        return [
            {
                "class": name, "ap": ap[name], "threshold": self.thresholds[index],
                "precision": float(precision[index]), "recall": float(recall[index]),
                "f1": float(f1[index]), "support": int(support[index]),
            }
            for index, name in enumerate(self.class_names)
        ]  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        metrics = self.metrics()
        return {
            "task": "multi-label",
            "map": metrics["map"],
            "micro_f1": metrics["micro_f1"],
            "macro_f1": metrics["macro_f1"],
            "exact_match": metrics["exact_match"],
            "images": self.total,
            "classes": list(self.class_names),
            "per_class": self.per_class(),
            "skipped_files": list(self.skipped_files),
        }

    def _headline(self) -> str:
        metrics = self.metrics()
        return (
            f"mAP {metrics['map']:.4f} on {self.total} images; at the run's thresholds: micro F1 "
            f"{metrics['micro_f1']:.4f}, macro F1 {metrics['macro_f1']:.4f}, every label right "
            f"on {metrics['exact_match']:.1%}"
        )

    def to_text(self) -> str:
        width = max(8, *(len(name) for name in self.class_names))
        lines = [self._headline(), ""]
        lines.append(f"{'class':<{width}}      AP  threshold  precision  recall      f1  support")
        for row in self.per_class():
            ap = "      -" if row["ap"] is None else f"{row['ap']:>7.4f}"
            lines.append(
                f"{row['class']:<{width}}  {ap}  {row['threshold']:>9.3f}  "
                f"{row['precision']:>9.4f}  {row['recall']:>6.4f}  {row['f1']:>6.4f}  "
                f"{row['support']:>7d}"
            )
        if self.skipped_files:
            lines += ["", f"skipped {len(self.skipped_files)} unreadable files:"]
            lines += [f"  {path}" for path in self.skipped_files]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()

    def __repr__(self) -> str:
        return (
            f"MultiLabelReport(map={self.map:.4f}, images={self.total}, "
            f"classes={list(self.class_names)}, skipped_files={len(self.skipped_files)})"
        )

    def _repr_html_(self) -> str:
        headers = ["class", "AP", "threshold", "precision", "recall", "f1", "support"]
        rows = [[row[key.lower()] for key in headers] for row in self.per_class()]
        return html_table(headers, rows, caption=self._headline())


Report = ClassificationReport | MultiLabelReport


def evaluate_data(
    run_dir: Path,
    data: Path,
    *,
    split: str = DEFAULT_SCORED_SPLIT,
    device: torch.device,
    batch_size: int = 32,
    tta: bool = False,
    runtime: str = "auto",
) -> Report:
    """Score a run on `data`: a label table (.csv), a DATA folder holding `split`.csv, or a split
    folder of class folders (DATA/val, or a DATA folder holding one named `split`)."""
    if split not in SCORED_SPLITS:
        raise UserError(f"split {split!r}: give one of {', '.join(SCORED_SPLITS)}")
    loaded = load_run_model(run_dir)
    table = label_table_of(data, split)
    if table is None:
        if is_multi_label(loaded.metadata):
            raise UserError(
                f"{data}: no label table, and {run_dir} is a multi-label run; pass a table such "
                f"as DATA/{split}.csv (columns file,labels), or the DATA folder holding it"
            )
        folder = data / split if _is_dataset_folder(data, split, loaded) else data
        return evaluate_run(
            run_dir, folder, device=device, batch_size=batch_size, tta=tta, runtime=runtime
        )
    rows = known_rows(loaded, table)
    multi = is_multi_label(loaded.metadata)
    # a multi-label sample's integer is its row; a single-label one's its class index
    samples = [
        (row.path, index if multi else loaded.class_names.index(row.labels[0]))
        for index, row in enumerate(rows)
    ]
    predictions, _source = predict_labelled(
        loaded, samples, device=device, runtime=runtime, tta=tta, batch_size=batch_size
    )
    if not multi:
        return report_of(loaded.class_names, predictions)
    targets = np.zeros((len(predictions.samples), len(loaded.class_names)), np.float32)
    for position, (_path, index) in enumerate(predictions.samples):
        targets[position, [loaded.class_names.index(name) for name in rows[index].labels]] = 1
    return MultiLabelReport(
        tuple(loaded.class_names), tuple(float(t) for t in thresholds_of(loaded.metadata)),
        targets, predictions.probabilities,
        skipped_files=tuple(str(path) for path in sorted(predictions.unreadable)),
    )  # fmt: skip


def label_table_of(data: Path, split: str) -> Path | None:
    """The label table `data` names: itself (a .csv), or DATA/`split`.csv in a DATA folder
    with label tables; None for a folder without them."""
    if data.suffix.lower() == ".csv":
        if not data.is_file():
            raise UserError(f"{data}: no such file; pass a label table such as DATA/{split}.csv")
        return data
    if not data.is_dir():
        raise UserError(f"{data}: no such file or directory; pass DATA/{split}.csv or DATA/{split}")
    table = data / f"{split}.csv"
    if table.is_file():
        return table
    if (data / "train.csv").is_file():
        raise UserError(
            f"{table}: no such file in this CSV dataset; pass --split with a table it has, or "
            "the table itself"
        )
    return None


def _is_dataset_folder(data: Path, split: str, loaded: LoadedModel) -> bool:
    """A DATA folder (train/ and `split`/ beside it) rather than a split folder: its class
    folders would be train and val, which are not the model's classes."""
    names = set(loaded.class_names)
    return (data / "train").is_dir() and (data / split).is_dir() and not {"train", split} & names


def known_rows(loaded: LoadedModel, table: Path) -> list[LabelRow]:
    """The table's rows, each checked (read_table), whose labels this model knows; a
    single-label model needs exactly one label a row."""
    rows = read_table(table, table.parent)
    multi = is_multi_label(loaded.metadata)
    for row in rows:
        unknown = [label for label in row.labels if label not in loaded.class_names]
        if unknown:
            raise UserError(
                f"{table}: line {row.line}: label {unknown[0]!r} is not a class of this model "
                f"({list(loaded.class_names)}); drop it or evaluate another table"
            )
        if not multi and len(row.labels) != 1:
            raise UserError(
                f"{table}: line {row.line}: {len(row.labels)} labels, but this run is "
                "single-label (one class an image); give each row one label, or train on the "
                "table's dataset for a multi-label run with mAP and per-class F1"
            )
    return rows
