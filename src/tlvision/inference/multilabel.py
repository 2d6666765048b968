"""Multi-label outputs: a sigmoid per class, thresholds per class, and the metrics (mAP, per-class
AP, micro and macro F1 at the thresholds), all computed by scikit-learn.

A multi-label model's logits are independent per class: probability = sigmoid(logit). A class
is predicted when its probability reaches its threshold, tuned on val (`tune_thresholds`) and
recorded in summary.json and model.json (`thresholds`) and in an export's sidecar.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

MULTI_LABEL = "multi-label"
SINGLE_LABEL = "single-label"
DEFAULT_THRESHOLD = 0.5


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(logits, -60.0, 60.0)))


def is_multi_label(metadata: dict[str, Any]) -> bool:
    """Whether a run's model.json (or a sidecar) describes a multi-label model."""
    return metadata.get("task") == MULTI_LABEL


def thresholds_of(metadata: dict[str, Any]) -> np.ndarray:
    classes = len(metadata["classes"])
    return np.asarray(metadata.get("thresholds") or [DEFAULT_THRESHOLD] * classes, np.float64)


def labels_over(
    probabilities: np.ndarray, class_names: Sequence[str], thresholds: np.ndarray
) -> list[str]:
    """The classes whose probability reaches their threshold, in class order."""
    return [
        name for name, p, t in zip(class_names, probabilities, thresholds, strict=True) if p >= t
    ]


def tune_thresholds(
    targets: np.ndarray, probabilities: np.ndarray, *, precision: float | None = None
) -> list[float]:
    """A threshold per class on val: the one with the best F1, or with `precision` the lowest
    that reaches that precision (the highest recall at it). A class with no positive val image
    keeps 0.5."""
    from sklearn.metrics import precision_recall_curve

    thresholds = []
    for column in range(targets.shape[1]):
        truth, scores = targets[:, column], probabilities[:, column]
        if truth.sum() == 0 or truth.sum() == len(truth):
            thresholds.append(DEFAULT_THRESHOLD)
            continue
        precisions, recalls, cuts = precision_recall_curve(truth, scores)
        precisions, recalls = precisions[:-1], recalls[:-1]  # the last point has no threshold
        if precision is None:
            f1 = 2 * precisions * recalls / np.maximum(precisions + recalls, 1e-12)
            thresholds.append(float(cuts[int(np.argmax(f1))]))
        else:
            reaching = np.flatnonzero(precisions >= precision)
            thresholds.append(float(cuts[reaching[0]]) if len(reaching) else float(cuts[-1]))
    return thresholds


def multilabel_metrics(
    targets: np.ndarray,
    probabilities: np.ndarray,
    thresholds: Sequence[float],
    names: Sequence[str],
) -> dict[str, Any]:
    """mAP (over classes with a positive image), per-class AP, micro/macro F1 at `thresholds`,
    and the exact-match share (every label right) as `accuracy`."""
    from sklearn.metrics import average_precision_score, f1_score

    per_class: dict[str, float | None] = {}
    for column, name in enumerate(names):
        truth = targets[:, column]
        has_both = 0 < truth.sum() < len(truth)
        score = average_precision_score(truth, probabilities[:, column]) if has_both else None
        per_class[name] = None if score is None else float(score)
    measured = [score for score in per_class.values() if score is not None]
    predicted = (probabilities >= np.asarray(thresholds)[None, :]).astype(np.int64)
    truth = targets.astype(np.int64)
    return {
        "map": float(np.mean(measured)) if measured else float("nan"),
        "per_class_ap": per_class,
        "micro_f1": float(f1_score(truth, predicted, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(truth, predicted, average="macro", zero_division=0)),
        "exact_match": float(np.mean((predicted == truth).all(axis=1))),
    }


def output_probabilities(classifier: Any, logits: np.ndarray) -> np.ndarray:
    """A classifier's probabilities: sigmoid per class for a multi-label model, else softmax."""
    from scipy.special import softmax

    if is_multi_label(getattr(classifier, "metadata", {})):
        return sigmoid(logits)
    return np.asarray(softmax(logits, axis=1))


def label_fields(classifier: Any, probabilities: np.ndarray) -> dict[str, Any]:
    """A Prediction's `labels` and `probabilities` for a multi-label model ({} otherwise)."""
    metadata = getattr(classifier, "metadata", {})
    if not is_multi_label(metadata):
        return {}
    names = classifier.class_names
    labels = labels_over(probabilities, names, thresholds_of(metadata))
    every = {name: float(p) for name, p in zip(names, probabilities, strict=True)}
    return {"labels": tuple(labels), "probabilities": every}
