"""Heads on CNN codes: a softmax linear layer (torch), logistic regression and a linear SVM
(scikit-learn), all returned as a plain `nn.Linear` on raw codes.

Every head ends up as an `nn.Linear` whose logits' argmax is the head's prediction, so it can go
back into the network: `backbones.install_head` puts a head trained on top codes into the full
model; `stages.StageClassifier` is the body cut at a stage with a head on that stage's codes.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from tlvision.codes.shards import rows_per_block
from tlvision.errors import UserError
from tlvision.training.schedules import make_scheduler

SKLEARN_HEADS = ("logreg", "svm")
OPTIMIZERS = ("sgd", "adamw")
DEFAULT_C_GRID = (0.0001, 0.001, 0.01, 0.1, 1.0, 10.0)

Codes = np.ndarray  # (N, C) float32, in memory or a np.memmap
TrainCodes = np.ndarray | Sequence[np.ndarray]  # one array, or one (N, C) array per view


def code_views(train_codes: TrainCodes) -> list[np.ndarray]:
    views = [train_codes] if isinstance(train_codes, np.ndarray) else list(train_codes)
    if not views:
        raise ValueError("no training codes")
    shape = views[0].shape
    if len(shape) != 2 or any(view.shape != shape for view in views):
        raise ValueError(
            f"every view must be (N, C) with one shape; got {[v.shape for v in views]}"
        )
    return views


def label_array(labels: Any) -> np.ndarray:
    return np.asarray(labels, dtype=np.int64).reshape(-1)


def _gather(views: Sequence[np.ndarray], view_of: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Rows `rows` of `views[view_of[i]]`, as one float32 array (reads only those rows)."""
    out = np.empty((len(rows), views[0].shape[1]), dtype=np.float32)
    for view in np.unique(view_of).tolist():
        mask = view_of == view
        out[mask] = views[view][rows[mask]]
    return out


def feature_statistics(train_codes: TrainCodes) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and standard deviation over every view, read in blocks (memmap-safe).

    A feature that never varies gets a deviation of 1, so standardising leaves it at 0.
    """
    views = code_views(train_codes)
    dim = views[0].shape[1]
    block = rows_per_block(dim, itemsize=8)
    total, sums, squares = 0, np.zeros(dim), np.zeros(dim)
    for view in views:
        for start in range(0, view.shape[0], block):
            chunk = np.asarray(view[start : start + block], dtype=np.float64)
            total += chunk.shape[0]
            sums += chunk.sum(axis=0)
            squares += np.square(chunk).sum(axis=0)
    mean = sums / max(1, total)
    variance = np.maximum(squares / max(1, total) - np.square(mean), 0.0)
    std = np.sqrt(variance)
    std[std < 1e-12] = 1.0
    return mean, std


def fold_standardization(
    weight: np.ndarray, bias: np.ndarray, mean: np.ndarray, std: np.ndarray
) -> nn.Linear:
    """The nn.Linear on raw codes x equal to (weight, bias) applied to (x - mean) / std."""
    weight = np.asarray(weight, dtype=np.float64)
    folded_weight = weight / std[None, :]
    folded_bias = np.asarray(bias, dtype=np.float64) - folded_weight @ mean
    layer = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(folded_weight.astype(np.float32)))
        layer.bias.copy_(torch.from_numpy(folded_bias.astype(np.float32)))
    return layer


@torch.no_grad()
def _score(
    layer: nn.Linear,
    codes: np.ndarray,
    labels: np.ndarray,
    device: torch.device,
    transform: Callable[[torch.Tensor], torch.Tensor],
    weight: torch.Tensor | None = None,
) -> tuple[float, float]:
    """(cross-entropy, accuracy) of `layer` on `codes`, read in blocks; with class weights the
    loss is their weighted mean, as nn.CrossEntropyLoss(weight) computes it."""
    block = rows_per_block(codes.shape[1])
    loss_sum, weight_sum, correct = 0.0, 0.0, 0
    for start in range(0, codes.shape[0], block):
        inputs = torch.from_numpy(np.array(codes[start : start + block], dtype=np.float32))
        targets = torch.from_numpy(labels[start : start + block])
        logits = layer(transform(inputs.to(device)))
        on_device = targets.to(device)
        loss_sum += float(
            nn.functional.cross_entropy(logits, on_device, weight=weight, reduction="sum")
        )
        weight_sum += float(weight[on_device].sum()) if weight is not None else len(targets)
        correct += int((logits.argmax(dim=1).cpu() == targets).sum())
    return loss_sum / max(weight_sum, 1e-12), correct / max(1, codes.shape[0])


def train_linear_head(
    train_codes: TrainCodes,
    train_labels: Any,
    val_codes: Codes,
    val_labels: Any,
    *,
    num_classes: int,
    epochs: int = 25,
    learning_rate: float = 0.01,
    batch_size: int = 32,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    optimizer: str = "sgd",
    schedule: str = "step",
    step_epochs: int = 7,
    step_gamma: float = 0.1,
    seed: int = 0,
    init: nn.Linear | None = None,
    standardize: bool = False,
    keep_best: bool = True,
    class_weights: Sequence[float] | None = None,
    device: torch.device | str = "cpu",
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[nn.Linear, list[dict[str, Any]]]:
    """Train a softmax linear layer on codes; return it (on the CPU) and per-epoch metrics.

    `train_codes`: one (N, C) array, or one per view of the same N images (each epoch sees every
    image once, under a random view, so epochs and schedules mean what the classic loop's do).
    `init`: start from that layer (the model's new head). `keep_best`: return the best val
    epoch's weights (ties: the earliest), else the last's. `standardize`: train on standardised
    codes, the scaler folded into the returned layer. `class_weights` weight the cross-entropy.
    History records: epoch, train_loss, train_acc, val_loss, val_acc, lr, seconds (`on_epoch`).
    """
    views = code_views(train_codes)
    labels = label_array(train_labels)
    val_targets = label_array(val_labels)
    count, dim = views[0].shape
    _check_head_inputs(
        labels, val_targets, count, len(val_codes), epochs, batch_size, learning_rate
    )
    device = torch.device(device)
    weight = _class_weight_tensor(class_weights, num_classes, device)

    layer = _initial_layer(dim, num_classes, init, seed).to(device)
    mean, std = feature_statistics(views) if standardize else (np.zeros(dim), np.ones(dim))
    transform = _standardizer(mean, std, device)
    opt = _optimizer(optimizer, layer, learning_rate, momentum, weight_decay)
    scheduler = make_scheduler(
        opt, schedule, epochs=epochs, steps_per_epoch=math.ceil(count / batch_size),
        step_epochs=step_epochs, step_gamma=step_gamma,
    )  # fmt: skip
    rng = np.random.default_rng(seed)
    best_acc, best_state, history = -1.0, copy.deepcopy(layer.state_dict()), []
    for epoch in range(1, epochs + 1):
        started, lr = time.perf_counter(), float(opt.param_groups[0]["lr"])
        # Each epoch: every image once, in a new order, under a view drawn at random.
        view_of: np.ndarray = np.asarray(rng.integers(len(views), size=count))
        train_loss, train_acc = _epoch(
            layer, views, labels, rng.permutation(count), view_of, batch_size, transform,
            weight, opt, scheduler,
        )  # fmt: skip
        val_loss, val_acc = _score(layer, val_codes, val_targets, device, transform, weight)
        if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
            raise UserError(f"epoch {epoch}: the loss became non-finite; lower the learning rate")
        record = {
            "epoch": epoch, "train_loss": train_loss, "train_acc": train_acc,
            "val_loss": val_loss, "val_acc": val_acc, "lr": lr,
            "seconds": time.perf_counter() - started,
        }  # fmt: skip
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
        if keep_best and val_acc > best_acc:
            best_acc, best_state = val_acc, copy.deepcopy(layer.state_dict())
    if keep_best:
        layer.load_state_dict(best_state)
    layer = layer.cpu().eval()
    # the scaler folded in: the returned layer reads raw codes (an identity fold without it)
    weights = layer.weight.detach().numpy(), layer.bias.detach().numpy()
    return fold_standardization(*weights, mean, std), history


def _check_head_inputs(
    labels: np.ndarray,
    val_labels: np.ndarray,
    count: int,
    val_count: int,
    epochs: int,
    batch_size: int,
    learning_rate: float,
) -> None:
    if labels.shape[0] != count or val_labels.shape[0] != val_count:
        raise ValueError("codes and labels differ in length")
    if count == 0:
        raise UserError("no training codes to train a head on")
    if epochs < 1 or batch_size < 1 or not learning_rate > 0:
        raise UserError("epochs and batch size must be at least 1 and the learning rate positive")


def _epoch(
    layer: nn.Linear,
    views: Sequence[np.ndarray],
    labels: np.ndarray,
    order: np.ndarray,
    view_of: np.ndarray,
    batch_size: int,
    transform: Callable[[torch.Tensor], torch.Tensor],
    weight: torch.Tensor | None,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> tuple[float, float]:
    """One pass over the images in `order`, image i under view `view_of[i]`; (loss, accuracy)."""
    device = next(layer.parameters()).device
    layer.train()
    loss_sum, correct = 0.0, 0
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        inputs = transform(torch.from_numpy(_gather(views, view_of[rows], rows)).to(device))
        loss, batch_correct = _step(layer, inputs, labels[rows], weight, optimizer, scheduler)
        loss_sum, correct = loss_sum + loss * len(rows), correct + batch_correct
    layer.eval()
    return loss_sum / len(order), correct / len(order)


def _initial_layer(dim: int, num_classes: int, init: nn.Linear | None, seed: int) -> nn.Linear:
    """A copy of `init`, or a new layer initialised from `seed` (global RNG untouched)."""
    layer = nn.Linear(dim, num_classes)
    if init is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            layer.reset_parameters()
        return layer
    if (init.in_features, init.out_features) != (dim, num_classes):
        raise ValueError(
            f"init is Linear({init.in_features}, {init.out_features}); the codes need "
            f"Linear({dim}, {num_classes})"
        )
    layer.load_state_dict({k: v.detach().cpu() for k, v in init.state_dict().items()})
    return layer


def _class_weight_tensor(
    class_weights: Sequence[float] | None, num_classes: int, device: torch.device
) -> torch.Tensor | None:
    if class_weights is None:
        return None
    if len(class_weights) != num_classes:
        raise ValueError(f"{len(class_weights)} class weights for {num_classes} classes")
    return torch.tensor(list(class_weights), dtype=torch.float32, device=device)


def _optimizer(
    kind: str, layer: nn.Linear, learning_rate: float, momentum: float, weight_decay: float
) -> torch.optim.Optimizer:
    if kind == "sgd":
        return torch.optim.SGD(
            layer.parameters(), lr=learning_rate, momentum=momentum, weight_decay=weight_decay
        )
    if kind == "adamw":
        return torch.optim.AdamW(layer.parameters(), lr=learning_rate, weight_decay=weight_decay)
    raise UserError(f"unknown optimizer {kind!r}; choose one of {', '.join(OPTIMIZERS)}")


def _standardizer(
    mean: np.ndarray, std: np.ndarray, device: torch.device
) -> Callable[[torch.Tensor], torch.Tensor]:
    mean_t = torch.from_numpy(mean.astype(np.float32)).to(device)
    std_t = torch.from_numpy(std.astype(np.float32)).to(device)

    def transform(inputs: torch.Tensor) -> torch.Tensor:
        return (inputs - mean_t) / std_t

    return transform


def _step(
    layer: nn.Linear,
    inputs: torch.Tensor,
    labels: np.ndarray,
    weight: torch.Tensor | None,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> tuple[float, int]:
    """One optimizer and schedule step on a batch; (its loss, how many it got right)."""
    targets = torch.from_numpy(labels).to(inputs.device)
    optimizer.zero_grad(set_to_none=True)
    logits = layer(inputs)
    loss = nn.functional.cross_entropy(logits, targets, weight=weight)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return float(loss.detach()), int((logits.argmax(dim=1) == targets).sum())


# --------------------------------------------------------------------------------------------
# scikit-learn heads
# --------------------------------------------------------------------------------------------


def _pipeline(kind: str, C: float, seed: int, max_iter: int, standardize: bool) -> Any:
    """The head, alone or after a StandardScaler fitted on the head's rows."""
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
) -> np.ndarray:
    """Mean accuracy of each C of `grid` in stratified k-fold CV on the training codes only
    (NaN when a class has one image: no CV possible), by GridSearchCV on folds of the images:
    an image's views stay in its fold, so no image is scored by a model that saw one of them;
    it is scored on its first view (the centre crop)."""
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
        _pipeline(kind, 1.0, seed, max_iter, standardize), {"head__C": list(grid)},
        scoring="accuracy", cv=cv, refit=False, error_score="raise",
    )  # fmt: skip
    # no ConvergenceWarning: a fit that max_iter stops is used as it is
    with one_blas_thread(), warnings.catch_warnings(action="ignore", category=ConvergenceWarning):
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
) -> float:
    """The C of `grid` with the best mean accuracy in stratified k-fold CV on the training codes
    only (`cross_validated_scores`; ties: the smallest C, the most regularised)."""
    if len(grid) == 1:
        return float(grid[0])
    scores = cross_validated_scores(
        kind, train_codes, train_labels, grid=grid, folds=folds, seed=seed,
        standardize=standardize, max_iter=max_iter,
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


@torch.no_grad()
def accuracy(layer: nn.Linear, codes: Codes, labels: Any) -> float:
    """Accuracy of `layer` on codes read in blocks."""
    block = rows_per_block(codes.shape[1])
    targets = label_array(labels)
    correct = 0
    for start in range(0, codes.shape[0], block):
        inputs = torch.from_numpy(np.array(codes[start : start + block], dtype=np.float32))
        correct += int(
            (layer(inputs).argmax(dim=1).numpy() == targets[start : start + block]).sum()
        )
    return correct / max(1, codes.shape[0])
