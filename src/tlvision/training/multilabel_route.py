"""What a run on multi-label data does differently, in one place: the head on codes trained
one-vs-rest with sigmoid outputs, the per-class thresholds tuned on val, and the metrics that
summary.json and model.json record (`task`, `thresholds`, `final_val_map`, per-class AP, micro
and macro F1 at the thresholds)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from tlvision.codes.split_codes import SplitCodes
from tlvision.inference.multilabel import (
    MULTI_LABEL,
    multilabel_metrics,
    tune_thresholds,
)
from tlvision.runs.reader import read_metrics
from tlvision.training.frozen_prefix import PrefixActivations, SkipPrefix, top_codes
from tlvision.training.heads import HeadTraining
from tlvision.training.multilabel_heads import (
    fit_one_vs_rest,
    logits_of,
    positive_weights,
    train_bce_head,
    val_scores,
)
from tlvision.training.run_setup import RunSetup
from tlvision.training.strategy import epochs_of


def code_targets(setup: RunSetup, codes: SplitCodes) -> tuple[np.ndarray, np.ndarray]:
    """The (N, classes) 0/1 targets of the train and val codes' images."""
    splits = setup.splits
    return (
        splits.target_matrix(codes.train_labels.tolist()),
        splits.target_matrix(codes.val_labels.tolist()),
    )


def train_multilabel_head(
    setup: RunSetup,
    codes: SplitCodes,
    head_name: str,
    init: nn.Linear | None,
    on_epoch: Callable[[dict[str, Any]], None],
) -> nn.Linear:
    """A one-vs-rest head on the codes: logreg/svm by scikit-learn, linear by BCE."""
    config = setup.config
    targets, val_targets = code_targets(setup, codes)
    if head_name == "linear":
        training = HeadTraining(
            epochs=epochs_of(config), learning_rate=config.learning_rate,
            batch_size=config.batch_size, weight_decay=config.weight_decay,
            momentum=config.momentum, schedule=config.schedule, step_epochs=config.step_epochs,
            step_gamma=config.step_gamma, seed=config.seed, standardize=True,
        )  # fmt: skip
        pos_weight = positive_weights(targets) if config.class_weights == "auto" else None
        return train_bce_head(
            codes.train_views, targets, codes.val, val_targets, training=training, init=init,
            pos_weight=pos_weight, on_epoch=on_epoch,
        )  # fmt: skip
    started = time.perf_counter()
    layer = fit_one_vs_rest(head_name, codes.train_views, targets, seed=config.seed)
    record = val_scores(logits_of(layer, codes.val), val_targets)
    on_epoch({"epoch": 1, **record, "seconds": time.perf_counter() - started})
    return layer


def start_multilabel_head_from_codes(
    setup: RunSetup,
    network: SkipPrefix,
    head: nn.Linear,
    activations: PrefixActivations,
    *,
    epochs: int,
    log: Callable[[str], None],
) -> None:
    """Train a multi-label fine-tune's new head (in place) on the top codes of the kept views
    with BCE before the body trains, as the single-label route starts its softmax head: a
    random head at the body's gentle rate learned next to nothing in 2 epochs (emoji-tags val
    mAP 0.17 against 0.68 for the frozen linear layer). The last epoch's head, so that val does
    not steer what it then scores."""
    started, config, splits = time.perf_counter(), setup.config, setup.splits
    train_codes = [top_codes(network, head, view) for view in activations.train_views]
    val_codes = top_codes(network, head, activations.val)
    targets = splits.target_matrix(activations.train_labels.tolist())
    val_targets = splits.target_matrix(activations.val_labels.tolist())
    training = HeadTraining(
        epochs=epochs, learning_rate=config.learning_rate, batch_size=config.batch_size,
        seed=config.seed, keep_best=False,
    )  # fmt: skip
    layer = train_bce_head(
        train_codes, targets, val_codes, val_targets,
        training=training, init=head,
        pos_weight=positive_weights(targets) if config.class_weights == "auto" else None,
    )  # fmt: skip
    with torch.no_grad():
        head.weight.copy_(layer.weight)
        head.bias.copy_(layer.bias)
    score = val_scores(logits_of(layer, val_codes), val_targets)
    log(
        f"head started on the top codes of the kept views: val mAP {score['val_map']:.4f} "
        f"({time.perf_counter() - started:.1f}s)"
    )


def multilabel_results(
    setup: RunSetup, probabilities: np.ndarray, val_targets: np.ndarray
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(summary fields, model.json fields) of a multi-label run from its saved model's val
    probabilities: thresholds tuned on val (F1-optimal, or --threshold-precision) and the metrics at
    them. `final_val_map` is the last epoch's (metrics.jsonl), `saved_val_map` the saved
    weights' (the best val epoch's, chosen on val)."""
    thresholds = tune_thresholds(
        val_targets, probabilities, precision=setup.config.threshold_precision
    )
    names = list(setup.splits.class_names)
    metrics = multilabel_metrics(val_targets, probabilities, thresholds, names)
    summary = {
        "task": MULTI_LABEL,
        "thresholds": thresholds,
        "threshold_rule": _rule(setup.config.threshold_precision),
        "final_val_map": read_metrics(setup.config.out_dir)[-1].get("val_map", metrics["map"]),
        "saved_val_map": metrics["map"],
        "val_per_class_ap": metrics["per_class_ap"],
        "val_micro_f1": metrics["micro_f1"],
        "val_macro_f1": metrics["macro_f1"],
        "val_exact_match": metrics["exact_match"],
    }
    return summary, {"task": MULTI_LABEL, "thresholds": thresholds}


def _rule(precision: float | None) -> str:
    return "F1-optimal on val" if precision is None else f"precision >= {precision} on val"


def log_multilabel(summary: dict[str, Any], log: Callable[[str], None]) -> None:
    log(
        f"final val mAP {summary['final_val_map']:.4f} (saved weights "
        f"{summary['saved_val_map']:.4f}), micro F1 {summary['val_micro_f1']:.4f}, "
        f"macro F1 {summary['val_macro_f1']:.4f} at per-class thresholds "
        f"({summary['threshold_rule']})"
    )


def finetuned_multilabel_fields(
    setup: RunSetup, model: nn.Module, log: Callable[[str], None]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Multi-label data: the saved fine-tuned model's val probabilities, its thresholds and
    metrics (summary, model.json fields); single-label: nothing."""
    if not setup.splits.multi_label:
        return {}, {}
    from tlvision.inference.evaluation import classify_samples
    from tlvision.inference.runtime import TorchClassifier
    from tlvision.runs.reader import LoadedModel

    names = tuple(setup.splits.class_names)
    metadata = {"task": MULTI_LABEL, "classes": list(names)}
    loaded = LoadedModel(model.eval(), setup.backbone, names, setup.preprocessing, metadata)
    predictions = classify_samples(
        TorchClassifier(loaded, setup.device), setup.splits.samples["val"]
    )
    targets = setup.splits.target_matrix([label for _, label in predictions.samples])
    summary, model_info = multilabel_results(setup, predictions.probabilities, targets)
    log_multilabel(summary, log)
    return summary, model_info
