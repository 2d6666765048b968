"""Classes of very different sizes: when the largest train class has IMBALANCE_RATIO times the
images of the smallest or more, plain accuracy hides a class the model never gets right, so the
summary leads with balanced accuracy (the mean of per-class recalls) and macro F1 beside it,
both scikit-learn's, of the saved model on val."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from tlvision.training.run_setup import Log, RunSetup

IMBALANCE_RATIO = 3.0  # as `tlvision check` reports it (data.doctor_classes)


def size_ratio(counts: list[int]) -> float:
    """Largest / smallest class size (inf with an empty class)."""
    return max(counts) / min(counts) if min(counts) > 0 else float("inf")


def is_imbalanced(setup: RunSetup) -> bool:
    if setup.splits.multi_label:
        return False  # per-class AP and macro F1 already weigh every class alike
    return size_ratio(setup.splits.class_counts("train")) >= IMBALANCE_RATIO


def imbalance_fields(
    setup: RunSetup,
    model: nn.Module,
    log: Log,
    val_codes: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Balanced accuracy and macro F1 of the saved model on val, on imbalanced data; else {}.

    `val_codes`: (codes, labels) of the readable val images as the frozen routes' head was
    scored on them; its predictions then come from the head alone, not a pass of the body.
    """
    if not is_imbalanced(setup):
        return {}
    from sklearn.metrics import balanced_accuracy_score, f1_score

    if val_codes is not None:
        truth, predicted = val_codes[1], _head_predictions(setup, model, val_codes[0])
        source = "the head's val codes"
    else:
        truth, predicted = _image_predictions(setup, model)
        source = "the val images"
    ratio = size_ratio(setup.splits.class_counts("train"))
    fields = {
        "final_val_balanced_acc": float(balanced_accuracy_score(truth, predicted)),
        "val_macro_f1": float(f1_score(truth, predicted, average="macro", zero_division=0)),
        "class_size_ratio": ratio,
    }
    log(
        f"imbalanced classes ({ratio:.1f}x): val balanced accuracy "
        f"{fields['final_val_balanced_acc']:.4f}, macro F1 {fields['val_macro_f1']:.4f} "
        f"(the saved weights, on {source})"
    )
    return fields


def _head_predictions(setup: RunSetup, model: nn.Module, codes: np.ndarray) -> np.ndarray:
    """The saved model's classes from its head's input codes (a stage probe's or the top's)."""
    from tlvision.models.network import head_of
    from tlvision.models.stages import StageClassifier

    head = model.head if isinstance(model, StageClassifier) else head_of(model, setup.backbone)
    with torch.inference_mode():
        inputs = torch.from_numpy(np.array(codes, dtype=np.float32))  # a writable copy
        logits = head(inputs.to(next(head.parameters()).device))
    return np.asarray(logits.argmax(dim=1).cpu().numpy())


def _image_predictions(setup: RunSetup, model: nn.Module) -> tuple[np.ndarray, np.ndarray]:
    """(true, predicted) classes of the val images through the saved model, as predict sees it."""
    from tlvision.inference.evaluation import classify_samples
    from tlvision.inference.runtime import TorchClassifier
    from tlvision.runs.reader import LoadedModel

    names = tuple(setup.splits.class_names)
    loaded = LoadedModel(model.eval(), setup.backbone, names, setup.preprocessing, {})
    predictions = classify_samples(
        TorchClassifier(loaded, setup.device), setup.splits.samples["val"]
    )
    return predictions.labels, predictions.probabilities.argmax(axis=1)
