"""Multi-label heads on CNN codes: one sigmoid output per class, trained one-vs-rest.

logreg and svm: scikit-learn's OneVsRestClassifier on standardised codes, one C for all classes
chosen by cross-validated mean average precision on the training codes (folds of images, so an
image's views stay together); linear: an nn.Linear trained with binary cross-entropy (class
weights as positive weights), the classic loop's optimizer and schedule. Each ends as a plain
nn.Linear on raw codes whose logits' sigmoid are the class probabilities.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from tlvision.inference.multilabel import sigmoid
from tlvision.training.heads import (
    HeadTraining,
    code_views,
    feature_statistics,
    fold_standardization,
)
from tlvision.training.schedules import make_scheduler
from tlvision.training.sklearn_heads import DEFAULT_C_GRID, one_blas_thread

CONSTANT_LOGIT = 30.0  # a class positive (or negative) on every training image


def _estimator(kind: str, C: float, seed: int, max_iter: int) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.svm import LinearSVC

    head = (
        LinearSVC(C=C, max_iter=max_iter, random_state=seed)
        if kind == "svm"
        else LogisticRegression(C=C, max_iter=max_iter)
    )
    return OneVsRestClassifier(head)


def _image_folds(count: int, views: int, folds: int, seed: int) -> list[tuple[Any, Any]]:
    """K folds of the images; train rows are every view of the train images (view-major)."""
    from sklearn.model_selection import KFold

    folder = KFold(n_splits=folds, shuffle=True, random_state=seed)
    return [
        ((np.sort(train) + count * np.arange(views)[:, None]).ravel(), np.sort(test))
        for train, test in folder.split(np.zeros(count))
    ]


def fit_one_vs_rest(
    kind: str,
    train_codes: Any,
    targets: np.ndarray,
    *,
    seed: int = 0,
    grid: Sequence[float] = DEFAULT_C_GRID,
    folds: int = 3,
    max_iter: int = 5000,
) -> nn.Linear:
    """logreg or svm one-vs-rest on every view's codes; C by 3-fold CV of mAP on train."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import GridSearchCV

    views = code_views(train_codes)
    mean, std = feature_statistics(views)
    codes = np.concatenate([(np.asarray(v, np.float64) - mean) / std for v in views])
    tiled = np.tile(targets.astype(np.int64), (len(views), 1))
    with one_blas_thread(), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", UserWarning)  # a label absent from a fold
        C = float(grid[0])
        if len(grid) > 1 and len(targets) >= 2 * folds:
            search = GridSearchCV(
                _estimator(kind, 1.0, seed, max_iter), {"estimator__C": list(grid)},
                scoring="average_precision", cv=_image_folds(len(targets), len(views), folds, seed),
                refit=False, error_score=np.nan,
            )  # fmt: skip
            search.fit(codes, tiled)
            scores = np.nan_to_num(search.cv_results_["mean_test_score"], nan=-1.0)
            C = float(min(c for c, s in zip(grid, scores, strict=True) if s == scores.max()))
        estimator = _estimator(kind, C, seed, max_iter).fit(codes, tiled)
    weight = np.zeros((targets.shape[1], codes.shape[1]))
    bias = np.zeros(targets.shape[1])
    for column, fitted in enumerate(estimator.estimators_):
        if hasattr(fitted, "coef_"):
            weight[column] = np.asarray(fitted.coef_).reshape(-1)
            bias[column] = float(np.asarray(fitted.intercept_).reshape(-1)[0])
        else:  # scikit-learn's constant predictor: the class never (or always) present
            bias[column] = CONSTANT_LOGIT if targets[0, column] else -CONSTANT_LOGIT
    return fold_standardization(weight, bias, mean, std)


def positive_weights(targets: np.ndarray) -> list[float]:
    """BCE's pos_weight per class: negatives / positives, so each class's positives count as
    much as its negatives ("class weights" on multi-label data)."""
    positives = targets.sum(axis=0)
    return [float((len(targets) - p) / max(p, 1.0)) for p in positives]


def train_bce_head(
    train_codes: Any,
    targets: np.ndarray,
    val_codes: np.ndarray,
    val_targets: np.ndarray,
    *,
    training: HeadTraining,
    init: nn.Linear | None = None,
    pos_weight: Sequence[float] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> nn.Linear:
    """A linear layer trained with BCE on the codes (standardised with `training.standardize`,
    the scaler folded in), one random view per image per epoch; the best val epoch's weights
    (by `val_acc`, ties: the earliest, as every route keeps them; without
    `training.keep_best`, the last epoch's)."""
    import time

    t, views = training, code_views(train_codes)
    count, dim = views[0].shape
    # standardised codes (the scaler folded in at the end) unless asked otherwise: a head that
    # goes on training inside the network must not carry a folded 1/std, which turns a
    # near-constant feature's dropout noise into huge logits
    mean, std = feature_statistics(views) if t.standardize else (np.zeros(dim), np.ones(dim))
    layer = nn.Linear(dim, targets.shape[1])
    if init is None:
        torch.manual_seed(t.seed)
        layer.reset_parameters()
    else:  # the model's new head, which reads raw codes: zero it to start on standardised ones
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)
    optimizer = torch.optim.SGD(
        layer.parameters(), lr=t.learning_rate, momentum=t.momentum, weight_decay=t.weight_decay
    )
    scheduler = make_scheduler(
        optimizer, t.schedule, epochs=t.epochs, steps_per_epoch=math.ceil(count / t.batch_size),
        step_epochs=t.step_epochs, step_gamma=t.step_gamma,
    )  # fmt: skip
    weight = None if pos_weight is None else torch.tensor(list(pos_weight), dtype=torch.float32)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=weight)
    rng, scaled_val = np.random.default_rng(t.seed), (np.asarray(val_codes) - mean) / std
    best, best_state = -1.0, copy.deepcopy(layer.state_dict())
    for epoch in range(1, t.epochs + 1):
        started, lr = time.perf_counter(), float(optimizer.param_groups[0]["lr"])
        step = _Step(layer, loss_fn, optimizer, scheduler)
        total = _bce_epoch(step, views, targets, (mean, std), rng, t.batch_size)
        record = _val_record(layer, scaled_val, val_targets)
        record.update(epoch=epoch, train_loss=total / count, lr=lr)
        record["seconds"] = time.perf_counter() - started
        if on_epoch is not None:
            on_epoch(record)
        if record["val_acc"] > best or not t.keep_best:
            best, best_state = record["val_acc"], copy.deepcopy(layer.state_dict())
    layer.load_state_dict(best_state)
    return fold_standardization(
        layer.weight.detach().numpy(), layer.bias.detach().numpy(), mean, std
    )


@dataclass(frozen=True)
class _Step:
    layer: nn.Linear
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any


def _bce_epoch(
    step: _Step,
    views: list[np.ndarray],
    targets: np.ndarray,
    scaling: tuple[np.ndarray, np.ndarray],
    rng: np.random.Generator,
    batch_size: int,
) -> float:
    """Every image once, in a new order, under a random view; the summed loss."""
    count, (mean, std), total = len(targets), scaling, 0.0
    view_of, order = rng.integers(len(views), size=count), rng.permutation(count)
    for start in range(0, count, batch_size):
        rows = order[start : start + batch_size]
        batch = np.stack([views[view_of[row]][row] for row in rows])
        inputs = torch.from_numpy(((batch - mean) / std).astype(np.float32))
        step.optimizer.zero_grad(set_to_none=True)
        loss = step.loss_fn(step.layer(inputs), torch.from_numpy(targets[rows].astype(np.float32)))
        loss.backward()
        step.optimizer.step()
        step.scheduler.step()
        total += float(loss.detach()) * len(rows)
    return total


@torch.no_grad()
def _val_record(
    layer: nn.Linear, scaled_val: np.ndarray, val_targets: np.ndarray
) -> dict[str, Any]:
    logits = layer(torch.from_numpy(scaled_val.astype(np.float32))).numpy()
    return val_scores(logits, val_targets)


def val_scores(logits: np.ndarray, val_targets: np.ndarray) -> dict[str, Any]:
    """An epoch's val record on multi-label data: mAP, and as `val_acc` the exact-match share
    at 0.5 (every label right), so the records read like single-label ones."""
    from tlvision.inference.multilabel import multilabel_metrics

    probabilities = sigmoid(logits)
    names = [str(column) for column in range(val_targets.shape[1])]
    metrics = multilabel_metrics(val_targets, probabilities, [0.5] * len(names), names)
    return {"val_map": metrics["map"], "val_acc": metrics["exact_match"]}


@torch.no_grad()
def logits_of(layer: nn.Linear, codes: np.ndarray) -> np.ndarray:
    return layer(torch.from_numpy(np.array(codes, dtype=np.float32))).numpy()
