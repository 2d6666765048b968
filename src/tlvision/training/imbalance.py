"""Classes of very different sizes: when the largest train class has IMBALANCE_RATIO times the
images of the smallest or more, plain accuracy hides a class the model never gets right, so the
summary leads with balanced accuracy (the mean of per-class recalls) and macro F1 beside it,
both scikit-learn's, of the saved model on val."""

from __future__ import annotations

from typing import Any

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


def imbalance_fields(setup: RunSetup, model: nn.Module, log: Log) -> dict[str, Any]:
    """Balanced accuracy and macro F1 of the saved model on val, on imbalanced data; else {}."""
    if not is_imbalanced(setup):
        return {}
    from sklearn.metrics import balanced_accuracy_score, f1_score

    from tlvision.inference.evaluation import classify_samples
    from tlvision.inference.runtime import TorchClassifier
    from tlvision.runs.reader import LoadedModel

    names = tuple(setup.splits.class_names)
    loaded = LoadedModel(model.eval(), setup.backbone, names, setup.preprocessing, {})
    predictions = classify_samples(
        TorchClassifier(loaded, setup.device), setup.splits.samples["val"]
    )
    truth, predicted = predictions.labels, predictions.probabilities.argmax(axis=1)
    ratio = size_ratio(setup.splits.class_counts("train"))
    fields = {
        "final_val_balanced_acc": float(balanced_accuracy_score(truth, predicted)),
        "val_macro_f1": float(f1_score(truth, predicted, average="macro", zero_division=0)),
        "class_size_ratio": ratio,
    }
    log(
        f"imbalanced classes ({ratio:.1f}x): val balanced accuracy "
        f"{fields['final_val_balanced_acc']:.4f}, macro F1 {fields['val_macro_f1']:.4f} "
        "(the saved weights)"
    )
    return fields
