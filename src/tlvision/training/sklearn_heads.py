"""Logistic regression and linear SVM heads on CNN codes (scikit-learn), C chosen by
cross-validation on the training codes only, each returned as an equivalent nn.Linear on raw
codes with the standardisation folded in."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import nn

from tlvision.errors import UserError
from tlvision.training.heads import (
    TrainCodes,
    code_views,
    feature_statistics,
    fold_standardization,
    label_array,
)

SKLEARN_HEADS = ("logreg", "svm")
DEFAULT_C_GRID = (0.0001, 0.001, 0.01, 0.1, 1.0, 10.0)


def _pipeline(
    kind: str, C: float, seed: int, max_iter: int, standardize: bool, float32: bool = False
) -> Any:
    """The head, alone or after a StandardScaler fitted on the head's rows (its output in
    float32 with `float32`: the head's products at half the cost, for the audit)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    # feature_statistics' mean and deviation, StandardScaler's but for the last bits, on which a
    # LinearSVC that max_iter stops (a large C) can turn: the Cs picked before stay picked.
    class Scaler(StandardScaler):
        def fit(self, X: np.ndarray, y: Any = None, sample_weight: Any = None) -> Any:
            super().fit(X)
            self.mean_, self.scale_ = feature_statistics(X)
            return self

        def transform(self, X: np.ndarray, copy: bool | None = None) -> Any:
            scaled = super().transform(X, copy=copy)
            return scaled.astype(np.float32) if float32 else scaled

    if kind not in SKLEARN_HEADS:
        raise UserError(f"unknown head {kind!r}; choose one of {', '.join(SKLEARN_HEADS)}")
    svm = LinearSVC(C=C, max_iter=max_iter, random_state=seed)
    head = svm if kind == "svm" else LogisticRegression(C=C, max_iter=max_iter)
    return Pipeline([("scale", Scaler() if standardize else "passthrough"), ("head", head)])


def one_blas_thread() -> Any:
    """A context in which BLAS runs on one thread. On a busy 2-core machine OpenBLAS's threads
    spin against each other: lbfgs on 800 x 1280 codes took 7.4 s instead of 0.14 s (measured,
    load average 5); these fits are small enough for one core."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def fits_in_threads(jobs: int) -> Any:
    """A context in which scikit-learn's `n_jobs` fits run in `jobs` threads of this process
    (each with one BLAS thread, see one_blas_thread): the fits are independent and each is
    computed as it would be alone, so the results are the same as one after another."""
    from joblib import parallel_config

    return parallel_config(backend="threading", n_jobs=max(1, jobs))


def cross_validated_scores(
    kind: str,
    train_codes: TrainCodes,
    train_labels: Any,
    *,
    grid: Sequence[float] = DEFAULT_C_GRID,
    folds: int = 3,
    seed: int = 0,
    standardize: bool = True,
    max_iter: int = 5000,
    jobs: int = 1,
    float32: bool = False,
) -> np.ndarray:
    """Mean accuracy of each C of `grid` in stratified k-fold CV on the training codes only
    (NaN when a class has one image: no CV possible), by GridSearchCV on folds of the images:
    an image's views stay in its fold, so no image is scored by a model that saw one of them;
    it is scored on its first view (the centre crop). `jobs`: fits run at once, in threads;
    `float32`: the standardised codes in float32."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    views, labels = code_views(train_codes), label_array(train_labels)
    splits = min(folds, int(np.unique(labels, return_counts=True)[1].min()))
    if splits < 2 or len(grid) == 0:
        return np.full(len(grid), np.nan)
    folder = StratifiedKFold(n_splits=splits, shuffle=True, random_state=seed)
    cv = [  # rows of the views stacked view after view: image i of view v is row v * N + i
        ((np.sort(train) + len(labels) * np.arange(len(views))[:, None]).ravel(), np.sort(test))
        for train, test in folder.split(np.zeros(len(labels)), labels)
    ]
    # Standardised codes are scaled in float64, as fit_sklearn_head's; raw ones fit as they are.
    codes = np.concatenate([np.asarray(v, np.float64 if standardize else None) for v in views])
    search = GridSearchCV(
        _pipeline(kind, 1.0, seed, max_iter, standardize, float32), {"head__C": list(grid)},
        scoring="accuracy", cv=cv, refit=False, error_score="raise",
    )  # fmt: skip
    # no ConvergenceWarning: a fit that max_iter stops is used as it is
    with (
        one_blas_thread(),
        fits_in_threads(jobs),
        warnings.catch_warnings(action="ignore", category=ConvergenceWarning),
    ):
        search.fit(codes, np.tile(labels, len(views)))
    return np.asarray(search.cv_results_["mean_test_score"], dtype=np.float64)


def best_C(grid: Sequence[float], scores: np.ndarray) -> float:
    """The C with the best CV score (ties: the smallest C, the most regularised); 1.0 when no
    CV was possible (NaN scores), the common default."""
    if np.isnan(scores).any():
        return 1.0
    return float(min(C for C, score in zip(grid, scores, strict=True) if score == scores.max()))


def select_C(
    kind: str,
    train_codes: TrainCodes,
    train_labels: Any,
    *,
    grid: Sequence[float] = DEFAULT_C_GRID,
    folds: int = 3,
    seed: int = 0,
    standardize: bool = True,
    max_iter: int = 5000,
    jobs: int = 1,
    float32: bool = False,
) -> float:
    """The C of `grid` with the best mean accuracy in stratified k-fold CV on the training codes
    only (`cross_validated_scores`; ties: the smallest C, the most regularised)."""
    if len(grid) == 1:
        return float(grid[0])
    scores = cross_validated_scores(
        kind, train_codes, train_labels, grid=grid, folds=folds, seed=seed,
        standardize=standardize, max_iter=max_iter, jobs=jobs, float32=float32,
    )  # fmt: skip
    return best_C(grid, scores)


def sklearn_to_linear(
    estimator: Any,
    *,
    num_classes: int,
    mean: np.ndarray | None = None,
    std: np.ndarray | None = None,
) -> nn.Linear:
    """An nn.Linear on raw codes whose logits' argmax is `estimator.predict`.

    Binary estimators have one row w, b (class 1 when w.x + b > 0): the logits are
    [-(w.x+b)/2, (w.x+b)/2], whose softmax is logistic regression's predict_proba. Classes
    absent from training get zero weights and a bias of -1e4: never predicted.
    """
    coef = np.asarray(estimator.coef_, dtype=np.float64)
    intercept = np.asarray(estimator.intercept_, dtype=np.float64).reshape(-1)
    classes = np.asarray(estimator.classes_, dtype=np.int64)
    dim = coef.shape[1]
    weight = np.zeros((num_classes, dim))
    bias = np.full(num_classes, -1e4)
    if len(classes) == 2:
        weight[classes[0]], bias[classes[0]] = -coef[0] / 2, -intercept[0] / 2
        weight[classes[1]], bias[classes[1]] = coef[0] / 2, intercept[0] / 2
    else:
        weight[classes], bias[classes] = coef, intercept
    if mean is None or std is None:
        mean, std = np.zeros(dim), np.ones(dim)
    return fold_standardization(weight, bias, mean, std)


def fit_sklearn_head(
    kind: str,
    train_codes: TrainCodes,
    train_labels: Any,
    *,
    num_classes: int | None = None,
    C: float | None = None,
    seed: int = 0,
    standardize: bool = True,
    max_iter: int = 5000,
    grid: Sequence[float] = DEFAULT_C_GRID,
    folds: int = 3,
) -> nn.Linear:
    """Fit logistic regression ("logreg") or a linear SVM ("svm") on the codes (every view
    stacked, in memory); return it as an equivalent nn.Linear on raw codes.

    With `standardize` the codes are standardised for the fit and the scaler is folded into the
    layer. `C=None` picks C from `grid` by cross-validation on the training codes
    (`select_C`); the validation set is never used.
    """
    from sklearn.exceptions import ConvergenceWarning

    views, labels = code_views(train_codes), label_array(train_labels)
    if len(np.unique(labels)) < 2:
        raise UserError("the training codes hold one class; a classifier needs at least two")
    classes = int(labels.max()) + 1 if num_classes is None else num_classes
    if C is None:
        C = select_C(
            kind, views, labels, grid=grid, folds=folds, seed=seed, standardize=standardize,
            max_iter=max_iter,
        )  # fmt: skip
    codes = np.concatenate([np.asarray(view, dtype=np.float64) for view in views])
    pipeline = _pipeline(kind, C, seed, max_iter, standardize)  # it refuses an unknown kind
    with one_blas_thread(), warnings.catch_warnings(action="ignore", category=ConvergenceWarning):
        pipeline.fit(codes, np.tile(labels, len(views)))
    mean, std = (pipeline[0].mean_, pipeline[0].scale_) if standardize else (None, None)
    return sklearn_to_linear(pipeline[1], num_classes=classes, mean=mean, std=std)
