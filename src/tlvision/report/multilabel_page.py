"""The report's sections for a multi-label run: the per-class scores at the recorded
thresholds, per-class precision-recall curves, and the images with the largest errors per
class (the negatives scored highest and the positives scored lowest)."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tlvision.data.layouts import DatasetSplits
from tlvision.inference.evaluation import classify_samples
from tlvision.inference.multilabel import multilabel_metrics, thresholds_of
from tlvision.inference.runtime import TorchClassifier
from tlvision.runs.reader import LoadedModel
from tlvision.tables import escape, html_table

ERRORS_PER_CLASS = 3
THUMBNAIL_SIDE = 128


def multilabel_sections(
    loaded: LoadedModel, splits: DatasetSplits, root: Path, device: torch.device
) -> list[str]:
    """Scores, PR curves and largest errors per class on the val split (sigmoid outputs)."""
    predictions = classify_samples(TorchClassifier(loaded, device), splits.samples["val"])
    targets = splits.target_matrix([label for _, label in predictions.samples])
    probabilities = predictions.probabilities
    names = list(loaded.class_names)
    thresholds = thresholds_of(loaded.metadata)
    metrics = multilabel_metrics(targets, probabilities, list(thresholds), names)
    paths = [path for path, _ in predictions.samples]
    return [
        _scores_section(metrics, thresholds, targets, names),
        _curves_section(targets, probabilities, names),
        _errors_section(targets, probabilities, names, paths, root),
    ]


def _scores_section(
    metrics: dict[str, Any], thresholds: np.ndarray, targets: np.ndarray, names: list[str]
) -> str:
    ap = metrics["per_class_ap"]
    rows = [
        (
            name, int(targets[:, column].sum()),
            "-" if ap[name] is None else f"{ap[name]:.4f}", f"{thresholds[column]:.3f}",
        )
        for column, name in enumerate(names)
    ]  # fmt: skip
    return (
        f"<h2>Multi-label scores</h2><p>Val mAP <b>{metrics['map']:.4f}</b>; at the per-class "
        f"thresholds tuned on val: micro F1 {metrics['micro_f1']:.4f}, macro F1 "
        f"{metrics['macro_f1']:.4f}, every label right on {metrics['exact_match']:.1%} of the "
        "images.</p>"
        + html_table(["class", "val positives", "average precision", "threshold"], rows)
    )


def _curves_section(targets: np.ndarray, probabilities: np.ndarray, names: list[str]) -> str:
    from matplotlib.figure import Figure
    from sklearn.metrics import precision_recall_curve

    from tlvision.report.plots import png_bytes

    figure = Figure(figsize=(6, 4.5), layout="constrained")
    panel = figure.subplots()
    for column, name in enumerate(names):
        if 0 < targets[:, column].sum() < len(targets):
            precision, recall, _ = precision_recall_curve(
                targets[:, column], probabilities[:, column]
            )
            panel.plot(recall, precision, label=name)
    panel.set_xlabel("recall")
    panel.set_ylabel("precision")
    panel.grid(alpha=0.3)
    if panel.get_legend_handles_labels()[0]:
        panel.legend(fontsize="small")
    encoded = base64.b64encode(png_bytes(figure)).decode()
    return (
        "<h2>Precision-recall curves</h2><p>One curve per class on val (a class with no "
        "positive val image has none).</p>"
        f'<img class="plot" id="pr-curves" alt="precision-recall curves" '
        f'src="data:image/png;base64,{encoded}">'
    )


def _errors_section(
    targets: np.ndarray, probabilities: np.ndarray, names: list[str], paths: list[Path], root: Path
) -> str:
    blocks = []
    for column, name in enumerate(names):
        truth, scores = targets[:, column] > 0, probabilities[:, column]
        negatives = [i for i in np.argsort(-scores, kind="stable") if not truth[i]]
        positives = [i for i in np.argsort(scores, kind="stable") if truth[i]]
        figures = [
            _figure(paths[i], root, f"not {name}, p={scores[i]:.3f}")
            for i in negatives[:ERRORS_PER_CLASS]
        ] + [
            _figure(paths[i], root, f"{name}, p={scores[i]:.3f}")
            for i in positives[:ERRORS_PER_CLASS]
        ]
        blocks.append(
            f'<h3>{escape(name)}</h3><div class="losses" data-class="{escape(name)}">'
            + "".join(figures)
            + "</div>"
        )
    return (
        "<h2>Largest errors per class</h2><p>For each class, the val images without it that "
        "scored highest, then the images with it that scored lowest.</p>" + "".join(blocks)
    )


def _figure(path: Path, root: Path, caption: str) -> str:
    from tlvision.data.images import BadImageError, load_rgb_image

    try:
        image = load_rgb_image(path)
    except BadImageError:
        return ""
    image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    encoded = base64.b64encode(buffer.getvalue()).decode()
    try:
        shown = str(path.relative_to(root))
    except ValueError:
        shown = str(path)
    return (
        f'<figure data-path="{escape(path)}"><img alt="{escape(path.name)}" '
        f'src="data:image/png;base64,{encoded}"><figcaption><b>{escape(shown)}</b><br>'
        f"{escape(caption)}</figcaption></figure>"
    )
