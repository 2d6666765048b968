"""Label issues: out-of-fold probabilities from K-fold logistic regression on the codes, ranked
by confident learning (Northcutt et al., 2021, the method of cleanlab's find_label_issues).

Every image is scored by a model that never saw it: the images are cut into K stratified folds
and each fold's probabilities come from a head fit on the others. C is chosen as the `logreg`
head chooses it for a run (cross-validation on the train codes, tlvision.training.sklearn_heads).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tlvision.errors import UserError
from tlvision.jsonio import keep, read_kept
from tlvision.training.sklearn_heads import (
    DEFAULT_C_GRID,
    fits_in_threads,
    one_blas_thread,
    select_C,
)

DEFAULT_FOLDS = 5
FLOAT32 = True
"""The logistic regressions fit standardised codes in float32: their products cost half as much
(fashion, 3,000 images: 5 out-of-fold fits 2.7 s -> 1.5 s) and the audit finds the same images
(the same C, the same flagged label issues on fashion and the reference set; the
probabilities move by less than 0.01). A run's `logreg` head stays in float64."""


def _in_float32(codes: np.ndarray) -> np.ndarray:
    return np.asarray(codes, dtype=np.float32)


def require_folds(labels: np.ndarray, class_names: tuple[str, ...], folds: int, root: Path) -> None:
    """A clear error when K-fold cross-validation cannot run on these labels."""
    if folds < 2:
        raise UserError(
            f"--folds {folds}: the audit needs at least 2 folds (default {DEFAULT_FOLDS})"
        )
    counts = np.bincount(labels, minlength=len(class_names))
    present = [name for name, count in zip(class_names, counts, strict=True) if count > 0]
    if len(present) < 2:
        raise UserError(
            f"{root}: only one class has images ({', '.join(present) or 'none'}); an audit "
            "compares classes, so it needs at least two class folders with images"
        )
    few = [(name, int(count)) for name, count in zip(class_names, counts, strict=True)
           if count < folds]  # fmt: skip
    if few:
        listed = ", ".join(f"{name} ({count})" for name, count in few)
        raise UserError(
            f"{root}: class(es) with fewer images than the {folds} folds of the audit: {listed}; "
            f"add images to them, or pass --folds {max(2, min(c for _n, c in few))} "
            "(at least 2)"
        )


def out_of_fold_probabilities(
    codes: np.ndarray, labels: np.ndarray, *, C: float, folds: int, seed: int, jobs: int = 1
) -> np.ndarray:
    """(N, classes) probabilities, each row from a head that did not see that image. `jobs`:
    folds fit at once, in threads (the same probabilities as one after another). The heads fit
    on standardised codes in float32 (FLOAT32)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    head = make_pipeline(
        StandardScaler(), FunctionTransformer(_in_float32), LogisticRegression(C=C, max_iter=2000)
    )
    folder = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    with (
        one_blas_thread(),
        fits_in_threads(jobs),
        warnings.catch_warnings(action="ignore", category=ConvergenceWarning),
    ):
        probabilities = cross_val_predict(
            head, np.asarray(codes, dtype=np.float64), labels, cv=folder, method="predict_proba"
        )
    return np.asarray(probabilities, dtype=np.float64)


def choose_C(
    codes: np.ndarray,
    labels: np.ndarray,
    train_rows: np.ndarray,
    seed: int,
    jobs: int = 1,
    remember_in: Path | None = None,
) -> float:
    """The C a `logreg` run would choose on these train codes (its fits in `jobs` threads).

    `remember_in`: a folder where the choice is kept under what decides it (the train codes and
    labels, the seed, the grid, scikit-learn's version), so auditing the same images again reads
    it back instead of fitting 18 heads (3.8 s of a 10 s warm audit of 3,000 images)."""
    train_codes, train_labels = np.ascontiguousarray(codes[train_rows]), labels[train_rows]
    path = None
    if remember_in is not None:
        path = remember_in / f"C-{_choice_key(train_codes, train_labels, seed)}.json"
        kept = read_kept(path, lambda document: float(document["C"]))
        if kept is not None:
            return kept
    C = select_C("logreg", train_codes, train_labels, seed=seed, jobs=jobs, float32=FLOAT32)
    if path is not None:
        keep(path, {"C": C})
    return C


def _choice_key(train_codes: np.ndarray, train_labels: np.ndarray, seed: int) -> str:
    import sklearn

    digest = hashlib.sha256()
    digest.update(np.asarray(train_codes, dtype=np.float32).tobytes())
    digest.update(np.asarray(train_labels, dtype=np.int64).tobytes())
    context = {"seed": seed, "grid": DEFAULT_C_GRID, "float32": FLOAT32}
    digest.update(json.dumps({**context, "sklearn": sklearn.__version__}).encode())
    return digest.hexdigest()[:32]


@dataclass(frozen=True)
class LabelIssues:
    """Confident learning on out-of-fold probabilities, for every image.

    `flagged[i]`: cleanlab's `find_label_issues` (its default filter, prune by noise rate)
    finds the image's label doubtful. `suggested[i]` is the likeliest other class, `score[i]`
    one minus the given class's probability (self-confidence, cleanlab's default ranking;
    higher is more suspect). `ranking` is every image, the flagged ones first in cleanlab's
    order, then the rest by score. Measured side by side (benchmarks/audit_planted.py), a
    ranking of our own by the normalised margin after a confident-joint filter found fewer
    planted flips than cleanlab's on Fashion-MNIST and on font glyphs (RESULTS.md), so the
    audit uses cleanlab's.
    """

    flagged: np.ndarray
    suggested: np.ndarray
    score: np.ndarray
    ranking: np.ndarray


def confident_learning(probabilities: np.ndarray, labels: np.ndarray) -> LabelIssues:
    from cleanlab.filter import find_label_issues

    rows = np.arange(len(labels))
    found = np.asarray(
        find_label_issues(
            labels, probabilities, return_indices_ranked_by="self_confidence", n_jobs=1
        ),
        dtype=np.int64,
    )
    flagged = np.zeros(len(labels), dtype=bool)
    flagged[found] = True
    others = probabilities.copy()
    others[rows, labels] = -1.0
    score = 1.0 - probabilities[rows, labels]
    rest = rows[~flagged][np.argsort(-score[~flagged], kind="stable")]
    return LabelIssues(
        flagged=flagged,
        suggested=others.argmax(axis=1),
        score=score,
        ranking=np.concatenate([found, rest]),
    )


def confused_pairs(
    probabilities: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...], limit: int = 10
) -> list[dict[str, object]]:
    """The class pairs the out-of-fold model confuses most: (a as b + b as a) / (n_a + n_b)."""
    predicted = probabilities.argmax(axis=1)
    classes = len(class_names)
    confusion = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    counts = confusion.sum(axis=1)
    pairs = []
    for a in range(classes):
        for b in range(a + 1, classes):
            mixed = int(confusion[a, b] + confusion[b, a])
            if mixed:
                rate = mixed / max(1, int(counts[a] + counts[b]))
                pairs.append({"classes": [class_names[a], class_names[b]], "confused": mixed,
                              "a_as_b": int(confusion[a, b]), "b_as_a": int(confusion[b, a]),
                              "rate": rate})  # fmt: skip
    pairs.sort(key=lambda pair: -float(pair["rate"]))  # type: ignore[arg-type]
    return pairs[:limit]
