"""The choice of C by cross-validation (scikit-learn's GridSearchCV over a StandardScaler
pipeline) gives the scores the hand-written loop it replaced gave, and the class weights are
scikit-learn's "balanced" ones."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.svm import LinearSVC

from tlvision.data.loading import inverse_frequency_weights
from tlvision.training.heads import TrainCodes, code_views, feature_statistics, label_array
from tlvision.training.sklearn_heads import (
    DEFAULT_C_GRID,
    best_C,
    cross_validated_scores,
    fit_sklearn_head,
    one_blas_thread,
    select_C,
)


def old_cross_validated_scores(
    kind: str,
    train_codes: TrainCodes,
    train_labels: Any,
    *,
    grid: Sequence[float] = DEFAULT_C_GRID,
    folds: int = 3,
    seed: int = 0,
    standardize: bool = True,
    max_iter: int = 5000,
) -> np.ndarray:
    """The hand-written loop cross_validated_scores was before GridSearchCV (verbatim but for
    the estimator, built here rather than by heads' private helpers): the reference."""

    def estimator(C: float) -> Any:
        if kind == "logreg":
            return LogisticRegression(C=C, max_iter=max_iter)
        return LinearSVC(C=C, max_iter=max_iter, random_state=seed)

    views = code_views(train_codes)
    labels = label_array(train_labels)
    _, per_class = np.unique(labels, return_counts=True)
    splits = min(folds, int(per_class.min()))
    if splits < 2:
        return np.full(len(grid), np.nan)
    folder = StratifiedKFold(n_splits=splits, shuffle=True, random_state=seed)
    scores = np.zeros(len(grid))
    with one_blas_thread():
        for train_rows, test_rows in folder.split(np.zeros(len(labels)), labels):
            fit_codes = np.concatenate([np.asarray(view[np.sort(train_rows)]) for view in views])
            fit_labels = np.tile(labels[np.sort(train_rows)], len(views))
            test_codes = np.asarray(views[0][np.sort(test_rows)], dtype=np.float64)
            if standardize:
                mean, std = feature_statistics(fit_codes)
                fit_codes = (fit_codes - mean) / std
                test_codes = (test_codes - mean) / std
            for position, C in enumerate(grid):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    fitted = estimator(C).fit(fit_codes, fit_labels)
                scores[position] += float(
                    (fitted.predict(test_codes) == labels[np.sort(test_rows)]).mean()
                )
    return scores / splits


def noisy_codes(
    count: int, classes: int, views: int, *, seed: int, dim: int = 12
) -> tuple[list[np.ndarray], np.ndarray]:
    """Overlapping clusters (so C matters and folds disagree), as float32 like real codes, with
    a dead feature (0 everywhere, as ReLU codes have) and an imbalanced class; the extra views
    are the first one jittered, as augmented crops of the same images."""
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.arange(classes), rng.integers(classes, size=count - classes)])
    labels[rng.random(count) < 0.3] = 0  # class 0 is the largest
    centres = rng.normal(0, 1.0, size=(classes, dim))
    first = centres[labels] + rng.normal(0, 1.5, size=(count, dim))
    first[:, 3] = 0.0
    codes = [first] + [first + rng.normal(0, 0.5, size=first.shape) for _ in range(views - 1)]
    for view in codes[1:]:
        view[:, 3] = 0.0
    return [view.astype(np.float32) for view in codes], labels


@pytest.mark.parametrize("kind", ["logreg", "svm"])
@pytest.mark.parametrize("views", [1, 3])
@pytest.mark.parametrize("classes", [2, 3])
def test_cv_scores_equal_the_hand_written_loop(kind: str, views: int, classes: int) -> None:
    for seed in (0, 1):
        codes, labels = noisy_codes(90, classes, views, seed=seed)
        train: TrainCodes = codes[0] if views == 1 else codes
        for standardize in (True, False):
            options: dict[str, Any] = {"seed": seed, "standardize": standardize}
            new = cross_validated_scores(kind, train, labels, **options)
            old = old_cross_validated_scores(kind, train, labels, **options)
            np.testing.assert_allclose(new, old, rtol=0, atol=1e-12)
            assert best_C(DEFAULT_C_GRID, new) == best_C(DEFAULT_C_GRID, old)
            assert len(set(new.tolist())) > 1  # the Cs score differently: a real comparison
    # A LinearSVC stopped by max_iter (C=10) turns on the scaler's last bits: StandardScaler's
    # own deviation (E[(x - mean)^2], not E[x^2] - mean^2) moved one of these folds' scores.
    if kind == "svm" and views == 1 and classes == 3:
        codes, labels = noisy_codes(150, 3, 1, seed=4, dim=32)
        new = cross_validated_scores(kind, codes, labels, seed=4, folds=4)
        old = old_cross_validated_scores(kind, codes, labels, seed=4, folds=4)
        np.testing.assert_allclose(new, old, rtol=0, atol=1e-12)
    # 5 folds asked, but the smallest class has 3 images: 3 folds, as before
    codes, labels = noisy_codes(40, classes, views, seed=2)
    labels[np.flatnonzero(labels == 1)[3:]] = 0
    new = cross_validated_scores(kind, codes, labels, folds=5, grid=(0.01, 1.0))
    old = old_cross_validated_scores(kind, codes, labels, folds=5, grid=(0.01, 1.0))
    np.testing.assert_allclose(new, old, rtol=0, atol=1e-12)


def test_no_cv_when_a_class_has_one_image() -> None:
    codes, labels = noisy_codes(30, 2, 3, seed=0)
    labels[np.flatnonzero(labels == 1)[1:]] = 0
    scores = cross_validated_scores("logreg", codes, labels)
    assert scores.shape == (len(DEFAULT_C_GRID),) and np.isnan(scores).all()
    assert select_C("logreg", codes, labels) == 1.0
    assert cross_validated_scores("logreg", codes, labels, grid=()).shape == (0,)


def test_ties_go_to_the_smallest_c_and_warnings_stay_quiet() -> None:
    codes, labels = noisy_codes(60, 2, 1, seed=0)
    codes[0][:, 0] = labels * 10.0  # one feature separates the classes: every C is right
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a ConvergenceWarning (max_iter=1) would fail here
        scores = cross_validated_scores("logreg", codes, labels, grid=(1.0, 0.1, 10.0))
        assert scores.tolist() == [1.0, 1.0, 1.0]
        assert select_C("logreg", codes, labels, grid=(1.0, 0.1, 10.0)) == 0.1
        fit_sklearn_head("svm", codes, labels, C=1.0, max_iter=1)
        cross_validated_scores("svm", codes, labels, grid=(1.0, 2.0), max_iter=1)


def test_an_unknown_head_is_refused() -> None:
    from tlvision.errors import UserError

    codes, labels = noisy_codes(30, 2, 1, seed=0)
    with pytest.raises(UserError, match="unknown head"):
        cross_validated_scores("tree", codes, labels)
    with pytest.raises(UserError, match="unknown head"):
        fit_sklearn_head("tree", codes, labels, C=1.0)


@pytest.mark.parametrize("counts", [[19, 32], [7, 6, 12], [5, 5], [1, 40, 3]])
def test_inverse_frequency_weights_are_balanced_weights(counts: list[int]) -> None:
    total = sum(counts)
    expected = [total / (len(counts) * count) for count in counts]
    weights = inverse_frequency_weights(counts)
    assert all(type(weight) is float for weight in weights)
    assert weights == expected  # compute_class_weight's formula, to the last bit
